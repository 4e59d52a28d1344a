/**
 * The one clock seam. Everything that needs "now" takes a Clock (or a plain epoch-ms number derived from
 * one), so tests pass a fixed clock instead of patching global time. Structurally identical to lru-cache's
 * `perf` option, so the same object can drive cache TTLs.
 */
export interface Clock {
  /** Current time in epoch milliseconds. */
  now(): number;
}

/** The real clock; the only place in src/ that reads Date.now(). */
export const systemClock: Clock = { now: () => Date.now() };

/** A clock fixed at `ms` that tests (and the CLI's --now) can move forward explicitly. */
export function fixedClock(ms: number): Clock & { set(ms: number): void; advance(ms: number): void } {
  let t = ms;
  return {
    now: () => t,
    set: (v: number) => { t = v; },
    advance: (d: number) => { t += d; },
  };
}

export const MS_PER_DAY = 86_400_000;

/** Whole UTC days since 1970-01-01 for an epoch-ms instant. */
export function utcDay(ms: number): number {
  return Math.floor(ms / MS_PER_DAY);
}
