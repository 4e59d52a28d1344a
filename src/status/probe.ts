/**
 * The readiness probe (which opens an SMTP session to each next hop) behind a short cache, so a status
 * page polling every few seconds from several browsers does not open sessions at that rate.
 */
import type { Clock } from '../clock.js';

export interface ProbeResult {
  /** Problems the probe reported; empty = ready. */
  readonly problems: readonly string[];
  /** Epoch ms the probe ran. */
  readonly at: number;
}

/** `probe` at most once per `ttlMs`; callers within the same window (or while it runs) share one run. */
export function cachedProbe(probe: () => Promise<string[]>, clock: Clock, ttlMs = 5000): () => Promise<ProbeResult> {
  let last: { result: Promise<ProbeResult>; at: number } | null = null;
  return () => {
    const now = clock.now();
    if (last && now - last.at < ttlMs) return last.result;
    const result = probe().then(
      (problems) => ({ problems, at: now }),
      (e: Error) => ({ problems: [e.message], at: now }),
    );
    last = { result, at: now };
    return result;
  };
}
