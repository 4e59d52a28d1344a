/**
 * Run-count and seed knobs for the fuzz tests, from the environment:
 *   FUZZ_RUNS   command sequences thrown at the listeners (default 2000; the full target is 100000:
 *               `FUZZ_RUNS=100000 npx vitest run test/fuzz`); the pure-parser properties scale with it
 *   FUZZ_SEED   fast-check seed (default 20260101, so `npm test` is deterministic); set it to replay or
 *               to explore new ground
 */
export const FUZZ_RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 2000) || 2000);
export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 20260101) || 20260101;

/** A test timeout for a property that takes about `baseMs` at the default run count (never under 30 s). */
export function fuzzTimeout(baseMs: number): number {
  return Math.max(30_000, Math.round((baseMs * 4 * FUZZ_RUNS) / 2000));
}

/** fast-check parameters for a property that should run `base` times at the default run count. */
export function fcParams(base: number): { seed: number; numRuns: number } {
  return { seed: FUZZ_SEED, numRuns: Math.max(base, Math.round((base * FUZZ_RUNS) / 2000)) };
}
