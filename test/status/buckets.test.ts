/** Minute buckets over a day: totals by window, series by group, bounded memory, old buckets forgotten. */
import { describe, expect, it } from 'vitest';
import { TimeBuckets } from '../../src/status/buckets.js';

const T = Date.parse('2026-01-01T12:00:00Z');
const MIN = 60_000;

describe('TimeBuckets', () => {
  it('sums per key over a window of whole buckets', () => {
    const b = new TimeBuckets();
    b.add(T, 'a', 2);
    b.add(T + 30_000, 'a'); // same minute
    b.add(T + MIN, 'b', 5);
    b.add(T + 10 * MIN, 'a', 7);
    expect(b.totals(T, T + 10 * MIN)).toEqual({ a: 10, b: 5 });
    expect(b.totals(T + MIN, T + 10 * MIN)).toEqual({ a: 7, b: 5 });
    expect(b.totals(T + 2 * MIN, T + 9 * MIN)).toEqual({});
  });

  it('forgets a bucket once its slot is reused a day later; a late add to a reused slot is dropped', () => {
    const b = new TimeBuckets({ stepMs: MIN, count: 1440 });
    b.add(T, 'a', 1);
    b.add(T + 1440 * MIN, 'a', 4); // same slot, next day
    expect(b.totals(T - 1440 * MIN, T + 1440 * MIN)).toEqual({ a: 4 });
    b.add(T, 'a', 100); // older than the window now
    expect(b.totals(T, T + 1440 * MIN)).toEqual({ a: 4 });
  });

  it('a window longer than the ring counts only what the ring holds (no double counting of reused slots)', () => {
    const b = new TimeBuckets({ stepMs: MIN, count: 10 });
    for (let i = 0; i < 25; i++) b.add(T + i * MIN, 'x', 1);
    expect(b.totals(T, T + 24 * MIN)).toEqual({ x: 10 });
  });

  it('series groups buckets into points ending with the current one and maps keys to series', () => {
    const b = new TimeBuckets();
    b.add(T, 'accepted:batv-valid', 1);
    b.add(T + 9 * MIN, 'accepted:srs-valid', 2);
    b.add(T + 10 * MIN, 'refused:batv-bad-signature', 3);
    b.add(T + 10 * MIN, 'signed:batv', 9);
    const s = b.series(T + 19 * MIN, 3, 10 * MIN, (k) => (k.startsWith('accepted:') ? 'accepted' : k.startsWith('refused:') ? 'refused' : null));
    expect(s.starts).toEqual([T - 10 * MIN, T, T + 10 * MIN]);
    expect(s.values).toEqual({ accepted: [0, 3, 0], refused: [0, 0, 3] });
  });
});
