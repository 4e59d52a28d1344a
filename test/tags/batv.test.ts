import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MS_PER_DAY } from '../../src/clock.js';
import {
  BATV_DEFAULT_MAX_AGE_DAYS,
  BATV_LIFETIME_DAYS,
  batvExpiryStamp,
  batvSign,
  batvVerify,
  hasBatvTag,
  type BatvVerifyResult,
} from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import vectors from '../vectors/batv.json' with { type: 'json' };

const FC = { seed: 42, numRuns: 200 } as const;

interface BatvVector {
  name: string;
  key: string;
  keyNum: number;
  address: string;
  now: string;
  tag: string;
  source: string;
}
const VECTORS: readonly BatvVector[] = vectors;

const key5 = tagKey(5, utf8('secret'));
const ring5 = makeKeyring([key5]);
const SIGNED_AT = Date.parse('2026-01-01T12:00:00Z'); // day 20454, DDD 461
const TAG = 'prvs=5461cd18bc=user@example.com';
const days = (n: number): number => n * MS_PER_DAY;

const valid = (original: string, keyNum: number, ageDays: number): BatvVerifyResult => ({ kind: 'valid', original, keyNum, ageDays });
const MESSAGES = {
  'bad-signature': 'BATV signature invalid',
  expired: 'BATV signature expired',
  future: 'BATV signature dated in the future',
} as const;
function invalid(reason: keyof typeof MESSAGES, original: string, keyNum: number): BatvVerifyResult {
  return { kind: 'invalid', reason, message: MESSAGES[reason], original, keyNum };
}
const unknownKey = (original: string, keyNum: number): BatvVerifyResult => ({
  kind: 'invalid',
  reason: 'unknown-key',
  message: `BATV key ${keyNum} is unknown`,
  original,
  keyNum,
});
const MALFORMED: BatvVerifyResult = { kind: 'invalid', reason: 'malformed', message: 'malformed BATV tag' };

/** An independent signer: node:crypto HMAC-SHA1 over K || DDD || address. */
function refTag(secret: Uint8Array, keyNum: number, signDay: number, address: string): string {
  const ddd = String((signDay + 7) % 1000).padStart(3, '0');
  const sig = createHmac('sha1', secret).update(`${keyNum}${ddd}${address}`).digest('hex').slice(0, 6);
  return `prvs=${keyNum}${ddd}${sig}=${address}`;
}

describe('batv vectors (test/vectors/batv.json)', () => {
  it('holds about 30 vectors, each from exim, with the published example first', () => {
    expect(VECTORS.length).toBeGreaterThanOrEqual(30);
    expect(VECTORS[0]).toMatchObject({ key: 'secret', keyNum: 5, address: 'user@example.com', now: '2026-01-01T12:00:00Z', tag: TAG });
    for (const v of VECTORS) expect(v.source).toMatch(/exim 4\.96 -be/);
  });

  for (const v of VECTORS) {
    it(`batvSign() reproduces exim for ${v.name}: ${v.tag}`, () => {
      const got = batvSign(v.address, tagKey(v.keyNum, utf8(v.key)), Date.parse(v.now));
      expect(got).toStrictEqual({ kind: 'signed', address: v.tag, keyNum: v.keyNum, expiryDay: v.tag.slice(6, 9) });
    });
  }

  // Before 1970-04-11 exim writes the literal "100" (its quirk); those tags are for signing parity only.
  for (const v of VECTORS.filter((x) => Date.parse(x.now) >= days(100))) {
    it(`batvVerify() accepts ${v.name} on its sign day and refuses it 8 days later`, () => {
      const ring = makeKeyring([tagKey(v.keyNum, utf8(v.key))]);
      const t = Date.parse(v.now);
      expect(batvVerify(v.tag, ring, t)).toStrictEqual(valid(v.address, v.keyNum, 0));
      expect(batvVerify(v.tag, ring, t + days(8))).toStrictEqual(invalid('expired', v.address, v.keyNum));
    });
  }

  it('batvSign() writes exim\'s literal "100" for a sign day whose day+7 has fewer than 3 digits', () => {
    expect(batvExpiryStamp(days(1))).toBe('100');
    expect(batvExpiryStamp(days(92) + 1)).toBe('100'); // day 92 + 7 = 99
    expect(batvExpiryStamp(days(93))).toBe('100'); // day 93 + 7 = 100, the real value
    expect(batvExpiryStamp(days(94))).toBe('101');
  });
});

describe('batvExpiryStamp()', () => {
  it('is (UTC day + 7) mod 1000, zero-padded, the same all day long', () => {
    expect(batvExpiryStamp(SIGNED_AT)).toBe('461');
    expect(batvExpiryStamp(Date.parse('2026-01-01T00:00:00Z'))).toBe('461');
    expect(batvExpiryStamp(Date.parse('2026-01-01T23:59:59.999Z'))).toBe('461');
    expect(batvExpiryStamp(Date.parse('2026-01-02T00:00:00Z'))).toBe('462');
    expect(batvExpiryStamp(days(19992))).toBe('999');
    expect(batvExpiryStamp(days(19993))).toBe('000');
    expect(batvExpiryStamp(days(19994) + 1)).toBe('001');
    expect(BATV_LIFETIME_DAYS).toBe(7);
    expect(BATV_DEFAULT_MAX_AGE_DAYS).toBe(7);
  });
});

describe('batvSign()', () => {
  it('signs the published example exactly', () => {
    expect(batvSign('user@example.com', key5, SIGNED_AT)).toStrictEqual({ kind: 'signed', address: TAG, keyNum: 5, expiryDay: '461' });
  });

  it('hashes the address bytes as given: each case variant gets a different tag', () => {
    const tags = ['user@example.com', 'User@example.com', 'user@Example.COM', 'USER@EXAMPLE.COM'].map((a) => {
      const r = batvSign(a, key5, SIGNED_AT);
      return r.kind === 'signed' ? r.address.slice(0, 16) : r.kind;
    });
    expect(new Set(tags).size).toBe(4);
  });

  it('leaves an address already carrying a prvs= tag unchanged, even an expired or foreign one', () => {
    for (const a of [TAG, 'PRVS=5461CD18BC=user@example.com', 'prvs=0000000000=user@example.com', 'Prvs=9123abcdef=a=b@example.org']) {
      expect(batvSign(a, key5, SIGNED_AT + days(400))).toStrictEqual({ kind: 'already-tagged', address: a });
    }
  });

  it('refuses the null sender', () => {
    for (const a of ['', '<>']) {
      expect(batvSign(a, key5, SIGNED_AT)).toStrictEqual({ kind: 'refused', reason: 'null-sender', message: 'the null sender is never signed' });
    }
  });

  it('refuses unqualified addresses', () => {
    for (const a of ['postmaster', 'user@', '@example.com', '@']) {
      expect(batvSign(a, key5, SIGNED_AT)).toStrictEqual({
        kind: 'refused',
        reason: 'unqualified',
        message: `"${a}" is not a qualified address`,
      });
    }
  });

  it('writes the key number of the key it was given', () => {
    for (let n = 0; n <= 9; n++) {
      const r = batvSign('user@example.com', tagKey(n, utf8('secret')), SIGNED_AT);
      expect(r).toStrictEqual({ kind: 'signed', address: refTag(utf8('secret'), n, 20454, 'user@example.com'), keyNum: n, expiryDay: '461' });
    }
  });
});

describe('batvVerify()', () => {
  it('accepts a tag at ages 0..7 with the exact original, key number and age', () => {
    for (let d = 0; d <= 7; d++) {
      expect(batvVerify(TAG, ring5, SIGNED_AT + days(d))).toStrictEqual(valid('user@example.com', 5, d));
    }
    // ages count whole UTC days: 1 ms after the sign day's last instant is age 1
    expect(batvVerify(TAG, ring5, Date.parse('2026-01-01T23:59:59.999Z'))).toStrictEqual(valid('user@example.com', 5, 0));
    expect(batvVerify(TAG, ring5, Date.parse('2026-01-02T00:00:00Z'))).toStrictEqual(valid('user@example.com', 5, 1));
    expect(batvVerify(TAG, ring5, Date.parse('2026-01-08T23:59:59.999Z'))).toStrictEqual(valid('user@example.com', 5, 7));
  });

  it('refuses a tag signed 8 days ago as expired', () => {
    expect(batvVerify(TAG, ring5, Date.parse('2026-01-09T00:00:00Z'))).toStrictEqual(invalid('expired', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(8))).toStrictEqual(invalid('expired', 'user@example.com', 5));
  });

  it('refuses stale tags that exim\'s integer comparison lets through (30 and 300 days old)', () => {
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(30))).toStrictEqual(invalid('expired', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(300))).toStrictEqual(invalid('expired', 'user@example.com', 5));
  });

  it('refuses a tag whose sign day is in the future', () => {
    expect(batvVerify(TAG, ring5, SIGNED_AT - days(1))).toStrictEqual(invalid('future', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, Date.parse('2025-12-31T23:59:59.999Z'))).toStrictEqual(invalid('future', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, SIGNED_AT - days(30))).toStrictEqual(invalid('future', 'user@example.com', 5));
  });

  it('honours maxAgeDays', () => {
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(3), 3)).toStrictEqual(valid('user@example.com', 5, 3));
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(4), 3)).toStrictEqual(invalid('expired', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, SIGNED_AT, 0)).toStrictEqual(valid('user@example.com', 5, 0));
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(1), 0)).toStrictEqual(invalid('expired', 'user@example.com', 5));
    expect(batvVerify(TAG, ring5, SIGNED_AT + days(8), 8)).toStrictEqual(valid('user@example.com', 5, 8));
  });

  it('counts ages across the 999 → 000 wrap of DDD', () => {
    const secret = utf8('secret');
    const ring0 = makeKeyring([tagKey(0, secret)]);
    const v999 = VECTORS.find((v) => v.name === 'batv-sign-day-19992-start')!;
    const v000 = VECTORS.find((v) => v.name === 'batv-sign-day-19993-start')!;
    expect(v999.tag.slice(0, 9)).toBe('prvs=0999');
    expect(v000.tag.slice(0, 9)).toBe('prvs=0000');
    for (let d = 0; d <= 7; d++) {
      expect(batvVerify(v999.tag, ring0, days(19992 + d) + 1)).toStrictEqual(valid('user@example.com', 0, d));
      expect(batvVerify(v000.tag, ring0, days(19993 + d) + 1)).toStrictEqual(valid('user@example.com', 0, d));
    }
    // exim accepts DDD 999 for 6 more days after it expired (999 >= 0..5); the mod-1000 check does not
    for (let d = 8; d <= 14; d++) {
      expect(batvVerify(v999.tag, ring0, days(19992 + d))).toStrictEqual(invalid('expired', 'user@example.com', 0));
    }
    expect(batvVerify(v000.tag, ring0, days(19993 + 8))).toStrictEqual(invalid('expired', 'user@example.com', 0));
    // signed on day 19993 (DDD 000), checked the day before (DDD today = 999): future, not 999 days old
    expect(batvVerify(v000.tag, ring0, days(19992))).toStrictEqual(invalid('future', 'user@example.com', 0));
    // a tag signed on day 19995 (DDD 002) checked on day 19994
    const t2 = refTag(secret, 0, 19995, 'user@example.com');
    expect(batvVerify(t2, ring0, days(19994))).toStrictEqual(invalid('future', 'user@example.com', 0));
    expect(batvVerify(t2, ring0, days(19995))).toStrictEqual(valid('user@example.com', 0, 0));
  });

  it('accepts uppercase hex and a PRVS= prefix in any case', () => {
    expect(batvVerify('prvs=5461CD18BC=user@example.com', ring5, SIGNED_AT)).toStrictEqual(valid('user@example.com', 5, 0));
    expect(batvVerify('prvs=5461Cd18bC=user@example.com', ring5, SIGNED_AT)).toStrictEqual(valid('user@example.com', 5, 0));
    expect(batvVerify('PRVS=5461cd18bc=user@example.com', ring5, SIGNED_AT)).toStrictEqual(valid('user@example.com', 5, 0));
    expect(batvVerify('pRvS=5461CD18BC=user@example.com', ring5, SIGNED_AT)).toStrictEqual(valid('user@example.com', 5, 0));
  });

  it('refuses a tag whose address changed case (the address bytes are hashed exactly)', () => {
    expect(batvVerify('prvs=5461cd18bc=User@example.com', ring5, SIGNED_AT)).toStrictEqual(invalid('bad-signature', 'User@example.com', 5));
    expect(batvVerify('prvs=5461cd18bc=user@EXAMPLE.com', ring5, SIGNED_AT)).toStrictEqual(invalid('bad-signature', 'user@EXAMPLE.com', 5));
  });

  it('refuses one changed hex digit at each position of the signature', () => {
    for (let i = 9; i < 15; i++) {
      for (const c of '0123456789abcdef') {
        if (c === TAG[i]) continue;
        const forged = TAG.slice(0, i) + c + TAG.slice(i + 1);
        expect(batvVerify(forged, ring5, SIGNED_AT), forged).toStrictEqual(invalid('bad-signature', 'user@example.com', 5));
      }
    }
  });

  it('refuses one changed digit at each position of the day', () => {
    for (let i = 6; i < 9; i++) {
      for (const c of '0123456789') {
        if (c === TAG[i]) continue;
        const forged = TAG.slice(0, i) + c + TAG.slice(i + 1);
        expect(batvVerify(forged, ring5, SIGNED_AT), forged).toStrictEqual(invalid('bad-signature', 'user@example.com', 5));
      }
    }
  });

  it('refuses a changed key number: bad-signature when that key exists, unknown-key when it does not', () => {
    const ring53 = makeKeyring([key5, tagKey(3, utf8('secret'))]);
    expect(batvVerify('prvs=3461cd18bc=user@example.com', ring53, SIGNED_AT)).toStrictEqual(invalid('bad-signature', 'user@example.com', 3));
    for (const k of '01246789') {
      expect(batvVerify(`prvs=${k}461cd18bc=user@example.com`, ring53, SIGNED_AT)).toStrictEqual(unknownKey('user@example.com', Number(k)));
    }
  });

  it('refuses one changed character anywhere in the local part or the domain', () => {
    const start = 'prvs=5461cd18bc='.length;
    for (let i = start; i < TAG.length; i++) {
      if (TAG[i] === '@') continue;
      for (const c of ['x', 'Q', '0', '.', '=', '+', 'ü']) {
        if (c === TAG[i]) continue;
        const forged = TAG.slice(0, i) + c + TAG.slice(i + 1);
        expect(batvVerify(forged, ring5, SIGNED_AT), forged).toStrictEqual(invalid('bad-signature', forged.slice(start), 5));
      }
    }
  });

  it('verifies with the key its number names in a rotated keyring', () => {
    const oldKey = tagKey(1, utf8('old secret'));
    const newKey = tagKey(2, utf8('new secret'));
    const ring = makeKeyring([newKey, oldKey]);
    const oldTag = batvSign('user@example.com', oldKey, SIGNED_AT);
    const newTag = batvSign('user@example.com', ring.signing, SIGNED_AT);
    expect(oldTag.kind === 'signed' && newTag.kind === 'signed').toBe(true);
    if (oldTag.kind !== 'signed' || newTag.kind !== 'signed') return;
    expect(newTag.keyNum).toBe(2);
    expect(batvVerify(oldTag.address, ring, SIGNED_AT + days(2))).toStrictEqual(valid('user@example.com', 1, 2));
    expect(batvVerify(newTag.address, ring, SIGNED_AT + days(2))).toStrictEqual(valid('user@example.com', 2, 2));
    // once key 1 is dropped, its tags name an unknown key
    expect(batvVerify(oldTag.address, makeKeyring([newKey]), SIGNED_AT)).toStrictEqual(unknownKey('user@example.com', 1));
  });

  it('takes the domain after the last @ and keeps = and @ in the local part', () => {
    const secret = utf8('secret');
    const ring0 = makeKeyring([tagKey(0, secret)]);
    for (const a of ['a=b+c=d@example.com', '"a@b"@example.com', 'prvs=0461000000=x@example.com']) {
      const t = refTag(secret, 0, 20454, a);
      expect(batvVerify(t, ring0, SIGNED_AT)).toStrictEqual(valid(a, 0, 0));
    }
  });

  it('reports addresses without a prvs= prefix as not tagged', () => {
    for (const a of ['user@example.com', '', 'prvsuser@example.com', 'prv=5461cd18bc=user@example.com', 'xprvs=5461cd18bc=user@example.com', 'SRS0=vmyz=2W=otherdomain.com=test@example.com']) {
      expect(batvVerify(a, ring5, SIGNED_AT), a).toStrictEqual({ kind: 'not-tagged' });
    }
  });

  it('reports a prvs= prefix without the full tag shape as malformed', () => {
    for (const a of [
      'prvs=12=user@x',
      'prvs=5461cd18bc=userexample.com',
      'prvs=5461cd18bc=user@',
      'prvs=5461cd18bc=@example.com',
      'prvs=5461cd18b=user@example.com',
      'prvs=5461cd18bcd=user@example.com',
      'prvs=5461cd18bg=user@example.com',
      'prvs=a461cd18bc=user@example.com',
      'prvs=546cd18bc=user@example.com',
      'prvs=5461cd18bc',
      'prvs=',
      'prvs=user/5461cd18bc@example.com',
    ]) {
      expect(batvVerify(a, ring5, SIGNED_AT), a).toStrictEqual(MALFORMED);
    }
  });

  it('hasBatvTag() recognises the full tag shape only', () => {
    expect([TAG, 'PRVS=5461CD18BC=user@example.com', 'prvs=12=user@x', 'user@example.com', 'prvs=5461cd18bc=user@'].map(hasBatvTag)).toEqual([
      true,
      true,
      false,
      false,
      false,
    ]);
  });
});

describe('keyring', () => {
  it('tagKey() refuses key numbers outside 0-9 and secrets over 64 bytes with exact RangeErrors', () => {
    expect(() => tagKey(10, utf8('x'))).toThrow(new RangeError('Cannot use key number 10: BATV key numbers are one digit, 0-9'));
    expect(() => tagKey(-1, utf8('x'))).toThrow(new RangeError('Cannot use key number -1: BATV key numbers are one digit, 0-9'));
    expect(() => tagKey(1.5, utf8('x'))).toThrow(new RangeError('Cannot use key number 1.5: BATV key numbers are one digit, 0-9'));
    expect(() => tagKey(3, new Uint8Array(65))).toThrow(new RangeError('Cannot use key 3: 65 bytes is over the 64-byte limit'));
    expect(tagKey(3, new Uint8Array(64)).num).toBe(3);
  });

  it('makeKeyring() signs with the first key, verifies with all, and refuses empty or duplicate rings', () => {
    const a = tagKey(1, utf8('a'));
    const b = tagKey(0, utf8('b'));
    const ring = makeKeyring([a, b]);
    expect(ring.signing).toBe(a);
    expect(ring.verifying).toEqual([a, b]);
    expect(ring.byNum(0)).toBe(b);
    expect(ring.byNum(2)).toBeUndefined();
    expect(() => makeKeyring([])).toThrow(new RangeError('Cannot build a keyring with no keys'));
    expect(() => makeKeyring([a, tagKey(1, utf8('c'))])).toThrow(new RangeError('Cannot build a keyring: key number 1 appears twice'));
  });
});

// ---- property tests ----
const ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
const localChar = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...ATEXT) }, { weight: 1, arbitrary: fc.constantFrom('ü', '用', '😀', 'é') });
const atom = fc.string({ unit: localChar, minLength: 1, maxLength: 10 });
const local = fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.'));
const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?$/);
const domain = fc.oneof(fc.array(label, { minLength: 1, maxLength: 3 }).map((a) => a.join('.')), fc.constantFrom('exämple.com', '例子.广告', '[192.0.2.1]'));
const sender = fc
  .tuple(local, domain)
  .map(([l, d]) => `${l}@${d}`)
  .filter((a) => !/^prvs=/i.test(a));
const keyNum = fc.integer({ min: 0, max: 9 });
const secret = fc.uint8Array({ minLength: 0, maxLength: 64 });
const signDay = fc.integer({ min: 1000, max: 60_000 }); // day 99 and earlier read as 100 in exim (see the 1970 vectors)
const msInDay = fc.integer({ min: 0, max: MS_PER_DAY - 1 });

describe('BATV properties (fast-check)', () => {
  it('verify(sign(x)) is valid with age d for d in 0..7 and expired at 8, and sign matches node:crypto', () => {
    fc.assert(
      fc.property(sender, keyNum, secret, signDay, msInDay, msInDay, (addr, k, s, day, t1, t2) => {
        const key = tagKey(k, s);
        const ring = makeKeyring([key]);
        const signed = batvSign(addr, key, days(day) + t1);
        expect(signed).toStrictEqual({ kind: 'signed', address: refTag(s, k, day, addr), keyNum: k, expiryDay: refTag(s, k, day, addr).slice(6, 9) });
        if (signed.kind !== 'signed') return;
        for (let d = 0; d <= 7; d++) expect(batvVerify(signed.address, ring, days(day + d) + t2)).toStrictEqual(valid(addr, k, d));
        expect(batvVerify(signed.address, ring, days(day + 8) + t2)).toStrictEqual(invalid('expired', addr, k));
        expect(batvVerify(signed.address, ring, days(day - 1) + t2)).toStrictEqual(invalid('future', addr, k));
        expect(batvSign(signed.address, key, days(day) + t1)).toStrictEqual({ kind: 'already-tagged', address: signed.address });
      }),
      FC,
    );
  });

  it('a single-character mutation of the hex never verifies unless it is only a case change', () => {
    const hexChar = fc.constantFrom(...'0123456789abcdefABCDEF');
    fc.assert(
      fc.property(sender, keyNum, secret, signDay, fc.integer({ min: 0, max: 5 }), hexChar, (addr, k, s, day, pos, c) => {
        const key = tagKey(k, s);
        const signed = batvSign(addr, key, days(day));
        if (signed.kind !== 'signed') throw new Error('not signed');
        const i = 'prvs=KDDD'.length + pos; // hex starts after prvs=, K and DDD
        const mutated = signed.address.slice(0, i) + c + signed.address.slice(i + 1);
        const got = batvVerify(mutated, makeKeyring([key]), days(day));
        if (c.toLowerCase() === signed.address[i]) expect(got).toStrictEqual(valid(addr, k, 0));
        else expect(got).toStrictEqual(invalid('bad-signature', addr, k));
      }),
      FC,
    );
  });
});
