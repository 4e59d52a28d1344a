/** The bounded ring of recent events: newest first, never more than its capacity. */
import { describe, expect, it } from 'vitest';
import { Ring } from '../../src/status/ring.js';

describe('Ring', () => {
  it('keeps items newest first until full', () => {
    const r = new Ring<number>(3);
    expect(r.newestFirst()).toEqual([]);
    r.push(1);
    r.push(2);
    expect(r.newestFirst()).toEqual([2, 1]);
    expect(r.size).toBe(2);
  });

  it('drops the oldest once full, however many pass through', () => {
    const r = new Ring<number>(3);
    for (let i = 1; i <= 1000; i++) r.push(i);
    expect(r.size).toBe(3);
    expect(r.newestFirst()).toEqual([1000, 999, 998]);
  });

  it('refuses a capacity below 1', () => {
    expect(() => new Ring(0)).toThrow('Ring capacity must be a whole number above 0, not 0');
  });
});
