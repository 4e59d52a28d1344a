/**
 * Tag comparison is constant-time, checked without a clock: the comparison primitives (constantTimeEqual,
 * hexEqual) are wrapped so that every call is recorded and every character they read is counted (they
 * are handed strings whose charCodeAt counts). Work done must not depend on where (or whether) the given
 * signature differs from the right one, nor on which key of the ring matches:
 *   - batvVerify makes exactly one comparison of two 6-character hex strings, reading all 12 characters;
 *   - srsReverse compares against every verifying key (no early exit) with equal lengths and reads,
 *     whether the hash matches the first key, the last, or none;
 *   - the primitives read every character of both strings, also for strings of different lengths.
 */
import { describe, expect, it, vi } from 'vitest';

const calls: Array<{ fn: string; a: string; b: string; reads: number; result: boolean }> = [];

/** A string stand-in whose character reads are counted (the primitives use only length and charCodeAt). */
function counting(s: string, count: () => void): string {
  return { length: s.length, charCodeAt: (i: number) => { count(); return s.charCodeAt(i); } } as unknown as string;
}

vi.mock('../../src/tags/hmac.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/tags/hmac.js')>();
  const wrapped = <F extends (a: string, b: string, ...rest: never[]) => boolean>(fn: string, f: F) => (a: string, b: string, ...rest: never[]): boolean => {
    let reads = 0;
    const result = f(counting(a, () => reads++), counting(b, () => reads++), ...rest);
    calls.push({ fn, a, b, reads, result });
    return result;
  };
  return {
    ...real,
    constantTimeEqual: wrapped('constantTimeEqual', real.constantTimeEqual as (a: string, b: string, ...rest: never[]) => boolean),
    ...('hexEqual' in real ? { hexEqual: wrapped('hexEqual', (real as unknown as { hexEqual: (a: string, b: string) => boolean }).hexEqual) } : {}),
  };
});

const { batvSign, batvVerify } = await import('../../src/tags/batv.js');
const { srsForward, srsReverse, SRS_DEFAULTS } = await import('../../src/tags/srs.js');
const { makeKeyring, tagKey } = await import('../../src/tags/keyring.js');
const hmac = await import('../../src/tags/hmac.js');
const { constantTimeEqual, foldAsciiCase, utf8 } = hmac;

const T = Date.parse('2026-01-01T12:00:00Z');
const ring = makeKeyring([tagKey(2, utf8('ct-key-two')), tagKey(1, utf8('ct-key-one')), tagKey(0, utf8('ct-key-zero'))]);
const SRS = { ...SRS_DEFAULTS, domain: 'srs.example.net' };

function measure<T>(fn: () => T): { value: T; calls: typeof calls } {
  calls.length = 0;
  const value = fn();
  return { value, calls: calls.splice(0) };
}

/** Replaces character `i` of the hash part of a string with one certainly different. */
function flip(s: string, i: number): string {
  const c = s[i]!;
  const d = c === '0' ? '1' : c === 'A' ? 'B' : c === 'a' ? 'b' : /[0-9]/.test(c) ? '0' : /[a-z]/.test(c) ? 'a' : 'A';
  return s.slice(0, i) + d + s.slice(i + 1);
}

describe('batvVerify does the same comparison work wherever the signature differs', () => {
  const signed = batvSign('alice@example.com', ring.signing, T);
  if (signed.kind !== 'signed') throw new Error('unsigned');
  const good = signed.address; // prvs=2DDDssssss=alice@example.com
  const sigStart = 9;

  it('right, wrong at each of the 6 positions, all wrong, upper-cased: one compare of 6 vs 6, 12 characters read', () => {
    const variants = [good, ...Array.from({ length: 6 }, (_, i) => flip(good, sigStart + i)), `prvs=2${good.slice(6, 9)}000000${good.slice(15)}`, good.slice(0, 9) + good.slice(9, 15).toUpperCase() + good.slice(15)];
    const seen = variants.map((v) => measure(() => batvVerify(v, ring, T)));
    expect(seen[0]!.value.kind).toBe('valid');
    expect(seen.at(-1)!.value.kind).toBe('valid');
    for (const s of seen.slice(1, -1)) expect(s.value).toMatchObject({ kind: 'invalid', reason: 'bad-signature' });
    for (const s of seen) {
      expect(s.calls.map((c) => [c.a.length, c.b.length, c.reads])).toEqual([[6, 6, 12]]);
    }
  });

  it('under every verifying key number the work is the same', () => {
    for (const k of ring.verifying) {
      const r = batvSign('bob@example.com', k, T);
      if (r.kind !== 'signed') throw new Error('unsigned');
      const right = measure(() => batvVerify(r.address, ring, T));
      const wrong = measure(() => batvVerify(flip(r.address, 14), ring, T));
      expect(right.value.kind).toBe('valid');
      expect(wrong.value.kind).toBe('invalid');
      expect(right.calls.map((c) => [c.fn, c.reads])).toEqual(wrong.calls.map((c) => [c.fn, c.reads]));
      expect(right.calls).toHaveLength(1);
    }
  });
});

describe('srsReverse tries every key with the same work, whichever matches', () => {
  const byKey = ring.verifying.map((k) => {
    const r = srsForward('orig@foreign.example', { signing: k }, SRS, T);
    if (r.kind !== 'rewritten') throw new Error('not rewritten');
    return r.address; // SRS0=HHHH=TT=foreign.example=orig@srs.example.net
  });

  it('hash made by the first, middle or last key, or by none, or wrong at any position: 3 compares of 4 vs 4, 8 characters read each', () => {
    const variants = [...byKey, ...Array.from({ length: 4 }, (_, i) => flip(byKey[0]!, 5 + i)), byKey[2]!.replace(/^SRS0=..../, 'SRS0=____')];
    const seen = variants.map((v) => measure(() => srsReverse(v, ring, SRS, T)));
    expect(seen.slice(0, 3).map((s) => s.value)).toEqual([0, 1, 2].map((i) => expect.objectContaining({ kind: 'valid', keyNum: ring.verifying[i]!.num })));
    for (const s of seen.slice(3)) expect(s.value).toMatchObject({ kind: 'invalid', reason: 'bad-hash' });
    for (const s of seen) expect(s.calls.map((c) => [c.a.length, c.b.length, c.reads])).toEqual([[4, 4, 8], [4, 4, 8], [4, 4, 8]]);
  });

  it('an SRS1 address and a base64url-written hash do the same work', () => {
    const s1 = srsForward(byKey[0]!, ring, { ...SRS, domain: 'fwd2.example' }, T);
    if (s1.kind !== 'rewritten') throw new Error('not rewritten');
    const url = byKey[1]!.replace(/^(SRS0=)(....)/, (_m, p: string, h: string) => p + h.replace(/\+/g, '-').replace(/\//g, '_'));
    for (const v of [s1.address, flip(s1.address, 6), url]) {
      const opts = v === url ? SRS : { ...SRS, domain: 'fwd2.example' };
      const m = measure(() => srsReverse(v, ring, opts, T));
      expect(m.calls.map((c) => [c.a.length, c.b.length, c.reads])).toEqual([[4, 4, 8], [4, 4, 8], [4, 4, 8]]);
    }
  });
});

describe('the comparison primitives read every character of both strings', () => {
  it('constantTimeEqual: whatever the position of the first difference, and for different lengths', () => {
    const base = 'cd18bcAZ09+/';
    const counts = new Set<number>();
    for (let i = 0; i <= base.length; i++) {
      const other = i === base.length ? base : base.slice(0, i) + '#' + base.slice(i + 1);
      const m = measure(() => constantTimeEqual(base, other, foldAsciiCase));
      counts.add(m.calls[0]!.reads);
      expect(m.calls[0]!.result).toBe(i === base.length);
    }
    expect([...counts]).toEqual([2 * base.length]);
    // a shorter or longer candidate is still walked to the longer length, and never equal
    for (const other of ['', 'c', base.slice(0, -1), `${base}x`, `${base}${base}`]) {
      const m = measure(() => constantTimeEqual(base, other, foldAsciiCase));
      expect(m.calls[0]!.result).toBe(false);
      expect(m.calls[0]!.reads).toBe(base.length + other.length);
    }
  });

  it('hexEqual (the BATV signature check): whatever the position of the first difference, ignoring case', () => {
    const hexEqual = hmac.hexEqual;
    expect(typeof hexEqual).toBe('function');
    const base = 'cd18bc';
    for (let i = 0; i <= base.length; i++) {
      const other = i === base.length ? base.toUpperCase() : base.slice(0, i) + (base[i] === '0' ? '1' : '0') + base.slice(i + 1);
      const m = measure(() => hexEqual(base, other));
      expect(m.calls[0]!.result).toBe(i === base.length);
      expect(m.calls[0]!.reads).toBe(12);
    }
  });
});
