/**
 * Counts in fixed time buckets (by default one a minute for a day): `add` puts n into the bucket of an
 * instant, `totals` and `series` read them back. A fixed number of slots is reused round-robin, so a
 * bucket older than the window is forgotten and memory stays bounded (keys per bucket are label values,
 * themselves a small fixed set).
 */
export interface BucketOptions {
  /** Width of a bucket in ms (default 60 000). */
  readonly stepMs?: number;
  /** Number of buckets kept (default 1440: a day of minutes). */
  readonly count?: number;
}

interface Slot {
  /** Bucket number (floor(ms / stepMs)) this slot holds now; -1 = empty. */
  n: number;
  readonly counts: Map<string, number>;
}

export class TimeBuckets {
  readonly stepMs: number;
  readonly count: number;
  private readonly slots: Slot[];

  constructor(opts: BucketOptions = {}) {
    this.stepMs = opts.stepMs ?? 60_000;
    this.count = opts.count ?? 1440;
    if (!(this.stepMs > 0) || !Number.isInteger(this.count) || this.count < 1) throw new RangeError('TimeBuckets: stepMs must be above 0 and count a whole number above 0');
    this.slots = Array.from({ length: this.count }, () => ({ n: -1, counts: new Map<string, number>() }));
  }

  private bucketOf(ms: number): number {
    return Math.floor(ms / this.stepMs);
  }

  /** The slot for bucket n if it still holds that bucket's counts. */
  private held(n: number): Slot | null {
    const s = this.slots[((n % this.count) + this.count) % this.count]!;
    return s.n === n ? s : null;
  }

  /** Adds n to `key` in the bucket holding `ms`. */
  add(ms: number, key: string, n = 1): void {
    if (n === 0) return;
    const b = this.bucketOf(ms);
    const s = this.slots[((b % this.count) + this.count) % this.count]!;
    if (s.n !== b) {
      if (s.n > b) return; // older than the window
      s.n = b;
      s.counts.clear();
    }
    s.counts.set(key, (s.counts.get(key) ?? 0) + n);
  }

  /** Sums per key over the buckets from the one holding `fromMs` to the one holding `toMs`, inclusive. */
  totals(fromMs: number, toMs: number): Record<string, number> {
    const out: Record<string, number> = {};
    const last = this.bucketOf(toMs);
    for (let b = Math.max(this.bucketOf(fromMs), last - this.count + 1); b <= last; b++) {
      const s = this.held(b);
      if (!s) continue;
      for (const [k, v] of s.counts) out[k] = (out[k] ?? 0) + v;
    }
    return out;
  }

  /**
   * Points of `groupMs` width (a multiple of stepMs) ending with the one holding `toMs`, `points` of them:
   * their start times and, per series, the sum of the keys `pick` assigns to it.
   */
  series(toMs: number, points: number, groupMs: number, pick: (key: string) => string | null): { starts: number[]; values: Record<string, number[]> } {
    const per = Math.max(1, Math.round(groupMs / this.stepMs));
    const lastGroup = Math.floor(this.bucketOf(toMs) / per);
    const starts: number[] = [];
    const values: Record<string, number[]> = {};
    for (let i = 0; i < points; i++) {
      const g = lastGroup - points + 1 + i;
      starts.push(g * per * this.stepMs);
      for (let b = g * per; b < (g + 1) * per; b++) {
        const s = this.held(b);
        if (!s) continue;
        for (const [k, v] of s.counts) {
          const name = pick(k);
          if (name === null) continue;
          const row = (values[name] ??= new Array<number>(points).fill(0));
          row[i] = (row[i] ?? 0) + v;
        }
      }
    }
    return { starts, values };
  }
}
