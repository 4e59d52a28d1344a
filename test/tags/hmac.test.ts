import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { B64, HmacSha1Key, MAX_KEY_BYTES, constantTimeEqual, foldAsciiCase, utf8 } from '../../src/tags/hmac.js';

const FC = { seed: 42, numRuns: 200 } as const;

function nodeMac(key: Uint8Array, msg: Uint8Array): Buffer {
  return createHmac('sha1', key).update(msg).digest();
}

function hexOf(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

/** Deterministic, non-repeating-looking bytes (so a block/offset mix-up cannot hide behind a constant fill). */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 131 + seed * 17 + (i >> 3)) & 0xff;
  return out;
}

describe('HmacSha1Key', () => {
  // RFC 2202 §3, test cases 1-5 (keys up to the 64-byte block).
  const rfc2202: { name: string; key: Uint8Array; data: Uint8Array; digest: string }[] = [
    { name: 'case 1', key: new Uint8Array(20).fill(0x0b), data: utf8('Hi There'), digest: 'b617318655057264e28bc0b6fb378c8ef146be00' },
    { name: 'case 2', key: utf8('Jefe'), data: utf8('what do ya want for nothing?'), digest: 'effcdf6ae5eb2fa2d27416d5f184df9c259a7c79' },
    { name: 'case 3', key: new Uint8Array(20).fill(0xaa), data: new Uint8Array(50).fill(0xdd), digest: '125d7342b9ac11cd91a39af48aa17b4f63f175d3' },
    {
      name: 'case 4',
      key: Uint8Array.from({ length: 25 }, (_, i) => i + 1),
      data: new Uint8Array(50).fill(0xcd),
      digest: '4c9007f4026250c6bc8414f9bf50c86c2d7235da',
    },
    { name: 'case 5', key: new Uint8Array(20).fill(0x0c), data: utf8('Test With Truncation'), digest: '4c1a03424b55e07fe7f27be1d58bb9324a9a5a04' },
  ];

  for (const v of rfc2202) {
    it(`mac() gives the RFC 2202 digest for ${v.name}`, () => {
      const k = new HmacSha1Key(v.key);
      expect(hexOf(k.mac(v.data))).toBe(v.digest);
      expect(k.hex(v.data, 20)).toBe(v.digest);
      expect(hexOf(nodeMac(v.key, v.data))).toBe(v.digest);
    });
  }

  it('refuses the 80-byte keys of RFC 2202 cases 6 and 7 with a RangeError naming the size', () => {
    const key = new Uint8Array(80).fill(0xaa);
    expect(() => new HmacSha1Key(key)).toThrow(new RangeError('Cannot use key: 80 bytes is over the 64-byte limit'));
    // node:crypto hashes such a key first (RFC 2202 case 6); exim and we refuse it instead.
    expect(hexOf(nodeMac(key, utf8('Test Using Larger Than Block-Size Key - Hash Key First')))).toBe(
      'aa4ae5e15272d00e95705637ce8a3b55ed402112',
    );
  });

  it('refuses a 65-byte key with the exact RangeError and accepts a 64-byte key', () => {
    expect(MAX_KEY_BYTES).toBe(64);
    expect(() => new HmacSha1Key(new Uint8Array(65))).toThrow(RangeError);
    expect(() => new HmacSha1Key(new Uint8Array(65))).toThrow('Cannot use key: 65 bytes is over the 64-byte limit');
    const k64 = pattern(64, 1);
    expect(hexOf(new HmacSha1Key(k64).mac(utf8('abc')))).toBe(hexOf(nodeMac(k64, utf8('abc'))));
  });

  it('mac() equals node:crypto for every key length 0..64 and every message length 0..200', () => {
    // Crosses the SHA-1 padding boundaries (55/56 bytes: one or two final blocks; 64, 119/120, 128, 183/184).
    const mismatches: string[] = [];
    for (let keyLen = 0; keyLen <= 64; keyLen++) {
      const key = pattern(keyLen, keyLen);
      const k = new HmacSha1Key(key);
      for (let msgLen = 0; msgLen <= 200; msgLen++) {
        const msg = pattern(msgLen, 7 + keyLen);
        if (hexOf(k.mac(msg)) !== hexOf(nodeMac(key, msg))) mismatches.push(`key ${keyLen} msg ${msgLen}`);
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('mac() equals node:crypto around each padding boundary with 0x00, 0x80 and 0xff filled messages', () => {
    const key = utf8('secret');
    const k = new HmacSha1Key(key);
    for (const len of [0, 1, 54, 55, 56, 57, 63, 64, 65, 118, 119, 120, 121, 127, 128, 129, 300]) {
      for (const fill of [0x00, 0x80, 0xff]) {
        const msg = new Uint8Array(len).fill(fill);
        expect(hexOf(k.mac(msg)), `len ${len} fill ${fill}`).toBe(hexOf(nodeMac(key, msg)));
      }
    }
  });

  it('mac() equals node:crypto for random keys of 0..64 bytes and messages of 0..300 bytes (fast-check)', () => {
    const boundaryLength = fc.constantFrom(0, 54, 55, 56, 57, 63, 64, 65, 119, 120, 128, 300);
    const message = fc.oneof(
      fc.uint8Array({ minLength: 0, maxLength: 300 }),
      boundaryLength.chain((n) => fc.uint8Array({ minLength: n, maxLength: n })),
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 64 }), message, (key, msg) => {
        expect(hexOf(new HmacSha1Key(key).mac(msg))).toBe(hexOf(nodeMac(key, msg)));
      }),
      FC,
    );
  });

  it('refuses every key of 65 bytes or more (fast-check)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 65, max: 1000 }), (n) => {
        expect(() => new HmacSha1Key(new Uint8Array(n))).toThrow(
          new RangeError(`Cannot use key: ${n} bytes is over the 64-byte limit`),
        );
      }),
      { ...FC, numRuns: 50 },
    );
  });

  it('hex() gives the prefix of node:crypto lowercase hex for 0..20 bytes', () => {
    const key = utf8('secret');
    const msg = utf8('5461user@example.com');
    const k = new HmacSha1Key(key);
    const full = nodeMac(key, msg).toString('hex');
    for (let n = 0; n <= 20; n++) expect(k.hex(msg, n)).toBe(full.slice(0, n * 2));
    expect(k.hex(msg, 3)).toBe('cd18bc');
  });

  it('base64() gives the prefix of node:crypto unpadded standard base64 for 0..27 characters', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 120 }), (key, msg) => {
        const k = new HmacSha1Key(key);
        const full = nodeMac(key, msg).toString('base64').replace(/=+$/, '');
        expect(full).toHaveLength(27);
        for (let n = 0; n <= 27; n++) expect(k.base64(msg, n)).toBe(full.slice(0, n));
      }),
      { ...FC, numRuns: 100 },
    );
  });

  it('base64() of the postsrsd vector fields gives the published hash', () => {
    // postsrsd: secret tops3cr3t, lc("2W") lc("otherdomain.com") lc("test") → SRS0=vmyz=...
    expect(new HmacSha1Key(utf8('tops3cr3t')).base64(utf8('2wotherdomain.comtest'), 4)).toBe('vmyz');
  });

  it('hex() and base64() refuse lengths beyond the 20-byte digest with a RangeError', () => {
    // A digest has 20 bytes: 40 hex digits, 27 base64 characters. Asking for more is a caller (config) error,
    // e.g. an SRS hashLength of 30; it must not come back as "...undefined" or as made-up "A" characters.
    const k = new HmacSha1Key(utf8('k'));
    expect(() => k.hex(utf8('m'), 21)).toThrow(RangeError);
    expect(() => k.base64(utf8('m'), 28)).toThrow(RangeError);
  });

  it('B64 is the RFC 4648 §4 standard alphabet', () => {
    expect(B64).toBe('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');
  });

  it('keeps no state between calls: interleaved keys and reused results give node:crypto digests', () => {
    const ka = utf8('key-a');
    const kb = pattern(64, 3);
    const a = new HmacSha1Key(ka);
    const b = new HmacSha1Key(kb);
    const m1 = pattern(100, 1);
    const m2 = utf8('short');
    const first = a.mac(m1);
    first.fill(0); // a caller scribbling on a result must not affect the next one
    expect(hexOf(b.mac(m2))).toBe(hexOf(nodeMac(kb, m2)));
    expect(hexOf(a.mac(m1))).toBe(hexOf(nodeMac(ka, m1)));
    expect(hexOf(a.mac(m2))).toBe(hexOf(nodeMac(ka, m2)));
    expect(hexOf(b.mac(m1))).toBe(hexOf(nodeMac(kb, m1)));
  });

  it('does not keep a reference to the key bytes it was built from', () => {
    const key = utf8('secret');
    const k = new HmacSha1Key(key);
    key.fill(0);
    expect(k.hex(utf8('5461user@example.com'), 3)).toBe('cd18bc');
  });
});

describe('utf8()', () => {
  it('gives the UTF-8 bytes of a string, unnormalised', () => {
    expect(Array.from(utf8('aü€😀'))).toEqual([0x61, 0xc3, 0xbc, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80]);
    // "é" precomposed and decomposed stay different byte strings.
    expect(Array.from(utf8('\u00e9'))).toEqual([0xc3, 0xa9]);
    expect(Array.from(utf8('e\u0301'))).toEqual([0x65, 0xcc, 0x81]);
  });
});

describe('constantTimeEqual()', () => {
  it('is true for equal strings, including two empty strings', () => {
    expect(constantTimeEqual('', '')).toBe(true);
    expect(constantTimeEqual('cd18bc', 'cd18bc')).toBe(true);
  });

  it('is false for strings that differ in one character, first or last', () => {
    expect(constantTimeEqual('cd18bc', 'dd18bc')).toBe(false);
    expect(constantTimeEqual('cd18bc', 'cd18bd')).toBe(false);
  });

  it('is false for unequal lengths, including a prefix and a NUL-padded copy', () => {
    expect(constantTimeEqual('cd18bc', 'cd18b')).toBe(false);
    expect(constantTimeEqual('cd18b', 'cd18bc')).toBe(false);
    expect(constantTimeEqual('', 'a')).toBe(false);
    expect(constantTimeEqual('a', '')).toBe(false);
    expect(constantTimeEqual('ab\u0000', 'ab')).toBe(false);
    expect(constantTimeEqual('ab', 'ab\u0000')).toBe(false);
  });

  it('compares exactly by default: a case difference is a difference', () => {
    expect(constantTimeEqual('CD18BC', 'cd18bc')).toBe(false);
  });

  it('compares after folding each character when a fold is given', () => {
    expect(constantTimeEqual('CD18BC', 'cd18bc', foldAsciiCase)).toBe(true);
    expect(constantTimeEqual('vMyZ', 'VmYz', foldAsciiCase)).toBe(true);
    expect(constantTimeEqual('vmyz', 'vmya', foldAsciiCase)).toBe(false);
    const dashIsPlus = (c: number): number => (c === 45 ? 43 : c);
    expect(constantTimeEqual('-3/5', '+3/5', dashIsPlus)).toBe(true);
    // A fold never makes strings of different lengths equal.
    expect(constantTimeEqual('abc', 'ab', () => 0)).toBe(false);
    expect(constantTimeEqual('abc', 'xyz', () => 0)).toBe(true);
  });

  it('folds every character of both strings whatever the position of the first difference', () => {
    // The call count stands in for timing: one fold per character present, whatever the content.
    const counts: number[] = [];
    for (const other of ['xd18bc', 'cd18bx', 'cd18bc', 'cd1', 'cd18bcxxxx']) {
      let calls = 0;
      const counting = (c: number): number => { calls++; return c; };
      constantTimeEqual('cd18bc', other, counting);
      counts.push(calls);
    }
    expect(counts).toEqual([12, 12, 12, 9, 16]);
  });

  it('agrees with === and with ASCII-lowercased === on arbitrary strings (fast-check)', () => {
    const lower = (s: string): string => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
    const str = fc.string({ unit: 'binary-ascii', maxLength: 12 });
    fc.assert(
      fc.property(str, str, (a, b) => {
        expect(constantTimeEqual(a, b)).toBe(a === b);
        expect(constantTimeEqual(a, a)).toBe(true);
        expect(constantTimeEqual(a, b, foldAsciiCase)).toBe(lower(a) === lower(b));
      }),
      FC,
    );
  });
});

describe('foldAsciiCase()', () => {
  it('maps A-Z to a-z and leaves every other code unchanged', () => {
    const changed: string[] = [];
    for (let c = 0; c < 0x300; c++) {
      const want = c >= 65 && c <= 90 ? c + 32 : c;
      if (foldAsciiCase(c) !== want) changed.push(c.toString(16));
    }
    expect(changed).toEqual([]);
    expect(String.fromCharCode(foldAsciiCase('@'.charCodeAt(0)), foldAsciiCase('['.charCodeAt(0)))).toBe('@[');
    expect(foldAsciiCase('Ä'.charCodeAt(0))).toBe('Ä'.charCodeAt(0));
  });
});
