import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MS_PER_DAY } from '../../src/clock.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import {
  SRS_DEFAULTS,
  srsForward,
  srsReverse,
  srsTimestamp,
  type SrsAlphabet,
  type SrsForwardResult,
  type SrsOptions,
  type SrsReverseResult,
  type SrsSeparator,
} from '../../src/tags/srs.js';
import postsrsd from '../vectors/srs-postsrsd.json' with { type: 'json' };

const FC = { seed: 42, numRuns: 200 } as const;
const days = (n: number): number => n * MS_PER_DAY;

// ---- the postsrsd set-up (STYLE.md §3.4) ----
const NOW = postsrsd.nowEpochSeconds * 1000; // 2020-01-01T00:01:00Z, day 18262, stamp 2W
const SECRET = utf8(postsrsd.secret);
const ring = makeKeyring([tagKey(0, SECRET)]);
const opts = (o: Partial<SrsOptions> = {}): SrsOptions => ({ ...SRS_DEFAULTS, domain: postsrsd.domain, ...o });

// ---- an independent oracle: node:crypto HMAC-SHA1 over the ASCII-lowercased fields ----
const lcAscii = (s: string): string => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
function refHash(secret: Uint8Array, fields: readonly string[], n = 4, alphabet: SrsAlphabet = 'base64'): string {
  const h = createHmac('sha1', secret).update(fields.map(lcAscii).join(''), 'utf8').digest(alphabet === 'base64' ? 'base64' : 'base64url');
  return h.slice(0, n);
}
const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const refStamp = (ms: number): string => {
  const d = Math.floor(ms / MS_PER_DAY) % 1024;
  return B32[d >> 5]! + B32[d & 31]!;
};

// ---- expected messages (the verdict text, asserted exactly) ----
function withMessage<T extends { kind: string; reason?: string; scheme?: string }>(e: T, input: string): T {
  if (e.kind === 'refused') {
    const m: Record<string, string> = {
      'null-sender': 'the null sender is never rewritten',
      unqualified: `"${input}" is not a qualified address`,
      'at-in-local-part': 'a sender whose local part contains "@" cannot be rewritten',
      'malformed-srs1': 'malformed SRS1 sender',
    };
    return { ...e, message: m[e.reason!] };
  }
  if (e.kind === 'invalid') {
    const m: Record<string, string> = {
      malformed: `malformed ${e.scheme} address`,
      'bad-timestamp': 'SRS timestamp malformed',
      'hash-too-short': 'SRS hash too short',
      'bad-hash': 'SRS hash invalid',
      expired: 'SRS address expired',
      future: 'SRS timestamp in the future',
    };
    return { ...e, message: m[e.reason!] };
  }
  return e;
}
const rewritten = (address: string, scheme: 'SRS0' | 'SRS1'): SrsForwardResult => ({ kind: 'rewritten', address, scheme });
const valid0 = (original: string, ageDays: number, keyNum = 0): SrsReverseResult => ({ kind: 'valid', scheme: 'SRS0', original, keyNum, ageDays });
const valid1 = (original: string, keyNum = 0): SrsReverseResult => ({ kind: 'valid', scheme: 'SRS1', original, keyNum });
const inv = (reason: string, scheme: 'SRS0' | 'SRS1' = 'SRS0'): SrsReverseResult =>
  withMessage({ kind: 'invalid', scheme, reason } as SrsReverseResult, '');
const refused = (reason: string, input: string): SrsForwardResult => withMessage({ kind: 'refused', reason } as SrsForwardResult, input);

describe('postsrsd vectors (test/vectors/srs-postsrsd.json)', () => {
  it('uses the STYLE.md §3.4 set-up and the library defaults', () => {
    expect([postsrsd.secret, postsrsd.nowEpochSeconds, postsrsd.domain]).toEqual(['tops3cr3t', 1577836860, 'example.com']);
    expect(new Date(NOW).toISOString()).toBe('2020-01-01T00:01:00.000Z');
    expect({ ...SRS_DEFAULTS }).toEqual(postsrsd.options);
  });

  for (const v of postsrsd.forward) {
    const o = 'options' in v ? (v.options as Partial<SrsOptions>) : {};
    it(`srsForward(${JSON.stringify(v.input.length > 50 ? `${v.input.slice(0, 47)}...` : v.input)}${'options' in v ? `, ${JSON.stringify(o)}` : ''}) gives postsrsd's ${String(v.postsrsd).slice(0, 60)}`, () => {
      expect(srsForward(v.input, ring, opts(o), NOW)).toStrictEqual(withMessage(v.expect, v.input));
    });
  }

  for (const v of postsrsd.reverse) {
    it(`srsReverse(${JSON.stringify(v.input.length > 60 ? `${v.input.slice(0, 57)}...` : v.input)}) matches postsrsd's ${v.postsrsd.slice(0, 60)}`, () => {
      expect(srsReverse(v.input, ring, opts(), NOW)).toStrictEqual(withMessage(v.expect, v.input));
    });
  }
});

describe('srsTimestamp()', () => {
  it('is base32 of the UTC day mod 1024', () => {
    expect(srsTimestamp(NOW)).toBe('2W');
    expect(srsTimestamp(Date.parse('2026-01-01T12:00:00Z'))).toBe('7G');
    expect(srsTimestamp(Date.parse('2026-01-26T23:59:59.999Z'))).toBe('77'); // slot 1023
    expect(srsTimestamp(Date.parse('2026-01-27T00:00:00Z'))).toBe('AA'); // slot 0
    expect(srsTimestamp(0)).toBe('AA');
    expect(srsTimestamp(days(31))).toBe('A7');
    expect(srsTimestamp(days(32))).toBe('BA');
  });
});

describe('srsForward()', () => {
  const FAMILY_AT = Date.parse('2026-01-01T12:00:00Z');
  const familyRing = makeKeyring([tagKey(0, utf8('secret'))]);
  const family = opts({ domain: 'forwarder.example' });

  it('gives the libsrs2 family output for user@example.com (key "secret", 2026-01-01)', () => {
    expect(srsForward('user@example.com', familyRing, family, FAMILY_AT)).toStrictEqual(
      rewritten('SRS0=cLDn=7G=example.com=user@forwarder.example', 'SRS0'),
    );
  });

  it('puts the quotes of a quoted local part inside, as Mail::SRS and postsrsd do', () => {
    expect(srsForward('"john doe"@example.com', familyRing, family, FAMILY_AT)).toStrictEqual(
      rewritten('SRS0=PtTH=7G=example.com="john doe"@forwarder.example', 'SRS0'),
    );
  });

  it('writes the configured initial separator right after SRS0 only', () => {
    for (const sep of ['=', '+', '-'] as const) {
      expect(srsForward('test@otherdomain.com', ring, opts({ separator: sep }), NOW)).toStrictEqual(
        rewritten(`SRS0${sep}vmyz=2W=otherdomain.com=test@example.com`, 'SRS0'),
      );
    }
  });

  it('writes hashLength characters of hash', () => {
    for (const n of [4, 5, 6, 8, 10]) {
      const want = refHash(SECRET, ['2W', 'otherdomain.com', 'test'], n);
      expect(want.startsWith('vmyz')).toBe(true);
      expect(srsForward('test@otherdomain.com', ring, opts({ hashLength: n, hashMin: n }), NOW)).toStrictEqual(
        rewritten(`SRS0=${want}=2W=otherdomain.com=test@example.com`, 'SRS0'),
      );
    }
  });

  it('keeps the case of the sender and hashes its ASCII-lowercased fields only', () => {
    const h = refHash(SECRET, ['2W', 'Exämple.COM', 'Üser.Name']);
    // the oracle lowercases A-Z only: "Ü" stays "Ü" in the HMAC input
    expect(h).toBe(refHash(SECRET, ['2w', 'exämple.com', 'Üser.name']));
    expect(h).not.toBe(refHash(SECRET, ['2w', 'exämple.com', 'üser.name']));
    expect(srsForward('Üser.Name@Exämple.COM', ring, opts(), NOW)).toStrictEqual(
      rewritten(`SRS0=${h}=2W=Exämple.COM=Üser.Name@example.com`, 'SRS0'),
    );
  });

  it('turns an SRS0 sender into SRS1, keeping its separator, for every pair of separators', () => {
    for (const sep0 of ['=', '+', '-'] as const) {
      for (const sep of ['=', '+', '-'] as const) {
        const input = `SRS0${sep0}abcd=2W=example.org=bob@otherdomain.com`;
        const opaque = `${sep0}abcd=2W=example.org=bob`;
        const h = refHash(SECRET, ['otherdomain.com', opaque]);
        const out = `SRS1${sep}${h}=otherdomain.com=${opaque}@example.com`;
        expect(srsForward(input, ring, opts({ separator: sep }), NOW), input).toStrictEqual(rewritten(out, 'SRS1'));
        expect(srsReverse(out, ring, opts(), NOW)).toStrictEqual(valid1(`SRS0${sep0}abcd=2W=example.org=bob@otherdomain.com`));
      }
    }
  });

  it('re-hashes an SRS1 sender with any separator, keeping its first forwarder and opaque part', () => {
    for (const sep1 of ['=', '+', '-'] as const) {
      for (const sep of ['=', '+', '-'] as const) {
        const input = `SRS1${sep1}X=thirddomain.com==opaque+string@otherdomain.com`;
        expect(srsForward(input, ring, opts({ separator: sep }), NOW), input).toStrictEqual(
          rewritten(`SRS1${sep}JIBX=thirddomain.com==opaque+string@example.com`, 'SRS1'),
        );
      }
    }
    // the opaque part keeps its own "=" and the old hash is dropped whatever its length
    const h = refHash(SECRET, ['h1.example', '+abcd=AA=x.org=a=b']);
    expect(srsForward('SRS1+oldhashlonger=h1.example=+abcd=AA=x.org=a=b@h2.example', ring, opts(), NOW)).toStrictEqual(
      rewritten(`SRS1=${h}=h1.example=+abcd=AA=x.org=a=b@example.com`, 'SRS1'),
    );
  });

  it('recognises srs0= and Srs1= case-insensitively', () => {
    expect(srsForward('srs0=opaque+string@otherdomain.com', ring, opts(), NOW)).toStrictEqual(
      rewritten('SRS1=chaI=otherdomain.com==opaque+string@example.com', 'SRS1'),
    );
    expect(srsForward('Srs1=X=thirddomain.com==opaque+string@otherdomain.com', ring, opts(), NOW)).toStrictEqual(
      rewritten('SRS1=JIBX=thirddomain.com==opaque+string@example.com', 'SRS1'),
    );
  });

  it('wraps SRS0xyz, SRS1xyz and SRS2= local parts as plain SRS0 (no separator after the tag)', () => {
    for (const local of ['SRS0xyz', 'SRS1xyz', 'SRS0', 'SRS2=abcd=2W=a.org=b', 'SRS0_x']) {
      const h = refHash(SECRET, ['2W', 'otherdomain.com', local]);
      expect(srsForward(`${local}@otherdomain.com`, ring, opts(), NOW), local).toStrictEqual(
        rewritten(`SRS0=${h}=2W=otherdomain.com=${local}@example.com`, 'SRS0'),
      );
    }
  });

  it('refuses a malformed SRS1 sender', () => {
    for (const s of ['SRS1=X@otherdomain.com', 'SRS1=X=thirddomain.com@otherdomain.com']) {
      expect(srsForward(s, ring, opts(), NOW), s).toStrictEqual(refused('malformed-srs1', s));
    }
  });

  it('never rewrites the null sender', () => {
    for (const s of ['', '<>']) expect(srsForward(s, ring, opts({ alwaysRewrite: true }), NOW)).toStrictEqual(refused('null-sender', s));
  });

  it('never rewrites an unqualified sender', () => {
    for (const s of ['foo', 'foo@', '@otherdomain.com', '@', '""']) {
      expect(srsForward(s, ring, opts({ alwaysRewrite: true }), NOW), s).toStrictEqual(refused('unqualified', s));
    }
  });

  it('leaves a sender in the SRS domain unchanged, comparing the domain case-insensitively', () => {
    for (const s of ['test@example.com', 'test@EXAMPLE.COM', 'SRS0=XjO9=2V=otherdomain.com=test@eXample.com', 'SRS1=JIBX=thirddomain.com==opaque+string@example.com']) {
      expect(srsForward(s, ring, opts(), NOW), s).toStrictEqual({ kind: 'unchanged', reason: 'srs-domain', address: s });
    }
    expect(srsForward('test@sub.example.com', ring, opts(), NOW)).toStrictEqual(
      rewritten(`SRS0=${refHash(SECRET, ['2W', 'sub.example.com', 'test'])}=2W=sub.example.com=test@example.com`, 'SRS0'),
    );
  });

  it('refuses a sender with @ in a quoted local part', () => {
    for (const s of ['"a@b"@otherdomain.com', 'a@b@otherdomain.com']) {
      expect(srsForward(s, ring, opts(), NOW), s).toStrictEqual(refused('at-in-local-part', s));
      expect(srsForward(s, ring, opts({ alwaysRewrite: true }), NOW), s).toStrictEqual(refused('at-in-local-part', s));
    }
  });

  it('rewrites senders in the SRS domain too when alwaysRewrite is set', () => {
    const o = opts({ alwaysRewrite: true });
    expect(srsForward('test@example.com', ring, o, NOW)).toStrictEqual(
      rewritten(`SRS0=${refHash(SECRET, ['2W', 'example.com', 'test'])}=2W=example.com=test@example.com`, 'SRS0'),
    );
    const own = 'SRS0=XjO9=2V=otherdomain.com=test@example.com';
    const h = refHash(SECRET, ['example.com', '=XjO9=2V=otherdomain.com=test']);
    expect(srsForward(own, ring, o, NOW)).toStrictEqual(rewritten(`SRS1=${h}=example.com==XjO9=2V=otherdomain.com=test@example.com`, 'SRS1'));
  });

  it('writes base64url when asked, which differs only in - and _', () => {
    const std = srsForward('hash234@somedomain.com', ring, opts(), NOW);
    const url = srsForward('hash234@somedomain.com', ring, opts({ alphabet: 'base64url' }), NOW);
    expect([std, url]).toStrictEqual([
      rewritten('SRS0=+3/5=2W=somedomain.com=hash234@example.com', 'SRS0'),
      rewritten('SRS0=-3_5=2W=somedomain.com=hash234@example.com', 'SRS0'),
    ]);
  });
});

describe('srsReverse()', () => {
  it('keeps = in the original local part (only the first 3 = after the tag separate)', () => {
    const f = srsForward('us=er=x@otherdomain.com', ring, opts(), NOW);
    const h = refHash(SECRET, ['2W', 'otherdomain.com', 'us=er=x']);
    expect(f).toStrictEqual(rewritten(`SRS0=${h}=2W=otherdomain.com=us=er=x@example.com`, 'SRS0'));
    expect(srsReverse(`SRS0=${h}=2W=otherdomain.com=us=er=x@example.com`, ring, opts(), NOW)).toStrictEqual(valid0('us=er=x@otherdomain.com', 0));
  });

  it('accepts any initial separator whatever the configured one', () => {
    for (const sep of ['=', '+', '-'] as const) {
      for (const configured of ['=', '+', '-'] as const) {
        expect(srsReverse(`SRS0${sep}XjO9=2V=otherdomain.com=test@example.com`, ring, opts({ separator: configured }), NOW)).toStrictEqual(
          valid0('test@otherdomain.com', 1),
        );
      }
    }
  });

  it('reverses SRS1 to the SRS0 address at the first forwarder, in any case', () => {
    expect(srsReverse('SRS1=JIBX=thirddomain.com==opaque+string@example.com', ring, opts(), NOW)).toStrictEqual(
      valid1('SRS0=opaque+string@thirddomain.com'),
    );
    expect(srsReverse('srs1=jibx=THIRDDOMAIN.COM==OPAQUE+STRING@EXAMPLE.COM', ring, opts(), NOW)).toStrictEqual(
      valid1('SRS0=OPAQUE+STRING@THIRDDOMAIN.COM'),
    );
    expect(srsReverse('SRS1+JIBX=thirddomain.com==opaque+string@example.com', ring, opts(), NOW)).toStrictEqual(
      valid1('SRS0=opaque+string@thirddomain.com'),
    );
    expect(srsReverse('SRS1=FAKE=thirddomain.com==opaque+string@example.com', ring, opts(), NOW)).toStrictEqual(inv('bad-hash', 'SRS1'));
  });

  it('treats - as + and _ as / in the hash (postsrsd 2.x base64url), in any mix and case', () => {
    for (const h of ['+3/5', '-3_5', '+3_5', '-3/5']) {
      expect(srsReverse(`SRS0=${h}=2W=somedomain.com=hash234@example.com`, ring, opts(), NOW), h).toStrictEqual(valid0('hash234@somedomain.com', 0));
    }
    // "-" is not "/" and "_" is not "+"
    for (const h of ['/3+5', '_3-5']) {
      expect(srsReverse(`SRS0=${h}=2W=somedomain.com=hash234@example.com`, ring, opts(), NOW), h).toStrictEqual(inv('bad-hash'));
    }
  });

  it('refuses a hash longer than hashLength unless every character is the HMAC\'s (Mail::SRS)', () => {
    for (const h of ['XjO9z', 'XjO9zzzzzz', `XjO9${'A'.repeat(40)}`, 'xjo9Q']) {
      expect(srsReverse(`SRS0=${h}=2V=otherdomain.com=test@example.com`, ring, opts(), NOW), h).toStrictEqual(inv('bad-hash'));
    }
    // the longer hash made with the same key verifies: it is the HMAC's own prefix
    for (const n of [5, 8, 27]) {
      const long = refHash(SECRET, ['2V', 'otherdomain.com', 'test'], n);
      expect(long.startsWith('XjO9')).toBe(true);
      expect(srsReverse(`SRS0=${long}=2V=otherdomain.com=test@example.com`, ring, opts(), NOW), long).toStrictEqual(valid0('test@otherdomain.com', 1));
    }
    expect(srsReverse('SRS0=XjOaz=2V=otherdomain.com=test@example.com', ring, opts(), NOW)).toStrictEqual(inv('bad-hash'));
  });

  it('refuses a hash shorter than hashMin as hash-too-short', () => {
    for (const h of ['XjO', 'X']) {
      expect(srsReverse(`SRS0=${h}=2V=otherdomain.com=test@example.com`, ring, opts(), NOW), h).toStrictEqual(inv('hash-too-short'));
    }
    expect(srsReverse('SRS1=JIB=thirddomain.com==opaque+string@example.com', ring, opts(), NOW)).toStrictEqual(inv('hash-too-short', 'SRS1'));
    // a too-short hash is refused even when it is a correct prefix and hashMin is below the default
    expect(srsReverse('SRS0=XjO9=2V=otherdomain.com=test@example.com', ring, opts({ hashLength: 6, hashMin: 6 }), NOW)).toStrictEqual(inv('hash-too-short'));
  });

  it('accepts hashMin <= length < hashLength when hashMin allows it', () => {
    const o = opts({ hashLength: 6, hashMin: 4 });
    const full = refHash(SECRET, ['2W', 'otherdomain.com', 'test'], 6);
    const out = srsForward('test@otherdomain.com', ring, o, NOW);
    expect(out).toStrictEqual(rewritten(`SRS0=${full}=2W=otherdomain.com=test@example.com`, 'SRS0'));
    for (const n of [4, 5, 6]) {
      expect(srsReverse(`SRS0=${full.slice(0, n)}=2W=otherdomain.com=test@example.com`, ring, o, NOW), `${n} characters`).toStrictEqual(
        valid0('test@otherdomain.com', 0),
      );
    }
    expect(srsReverse(`SRS0=${full.slice(0, 3)}=2W=otherdomain.com=test@example.com`, ring, o, NOW)).toStrictEqual(inv('hash-too-short'));
    const wrong5 = full.slice(0, 4) + (full[4] === 'A' ? 'B' : 'A');
    expect(srsReverse(`SRS0=${wrong5}=2W=otherdomain.com=test@example.com`, ring, o, NOW)).toStrictEqual(inv('bad-hash'));
  });

  it('accepts ages 0..21, refuses 22 as expired and a stamp one day ahead as future', () => {
    const addr = 'SRS0=vmyz=2W=otherdomain.com=test@example.com'; // signed on day 18262
    for (let d = 0; d <= 21; d++) {
      expect(srsReverse(addr, ring, opts(), days(18262 + d)), `age ${d}`).toStrictEqual(valid0('test@otherdomain.com', d));
    }
    expect(srsReverse(addr, ring, opts(), Date.parse('2020-01-22T23:59:59.999Z'))).toStrictEqual(valid0('test@otherdomain.com', 21));
    expect(srsReverse(addr, ring, opts(), Date.parse('2020-01-23T00:00:00Z'))).toStrictEqual(inv('expired'));
    expect(srsReverse(addr, ring, opts(), days(18262 + 22))).toStrictEqual(inv('expired'));
    expect(srsReverse(addr, ring, opts(), days(18262 + 500))).toStrictEqual(inv('expired'));
    expect(srsReverse(addr, ring, opts(), days(18262 - 1))).toStrictEqual(inv('future'));
    expect(srsReverse(addr, ring, opts(), Date.parse('2019-12-31T23:59:59.999Z'))).toStrictEqual(inv('future'));
  });

  it('honours maxAgeDays', () => {
    const addr = 'SRS0=vmyz=2W=otherdomain.com=test@example.com';
    expect(srsReverse(addr, ring, opts({ maxAgeDays: 5 }), days(18262 + 5))).toStrictEqual(valid0('test@otherdomain.com', 5));
    expect(srsReverse(addr, ring, opts({ maxAgeDays: 5 }), days(18262 + 6))).toStrictEqual(inv('expired'));
    expect(srsReverse(addr, ring, opts({ maxAgeDays: 0 }), days(18262 + 1))).toStrictEqual(inv('expired'));
  });

  it('counts ages across the 1023 → 0 wrap of the stamp', () => {
    const lastSlot = Date.parse('2026-01-26T12:00:00Z'); // slot 1023, "77"
    const f = srsForward('user@example.org', ring, opts(), lastSlot);
    const h = refHash(SECRET, ['77', 'example.org', 'user']);
    expect(f).toStrictEqual(rewritten(`SRS0=${h}=77=example.org=user@example.com`, 'SRS0'));
    const addr = `SRS0=${h}=77=example.org=user@example.com`;
    for (let d = 0; d <= 21; d++) expect(srsReverse(addr, ring, opts(), lastSlot + days(d)), `age ${d}`).toStrictEqual(valid0('user@example.org', d));
    expect(srsReverse(addr, ring, opts(), lastSlot + days(22))).toStrictEqual(inv('expired'));
    // signed in slot 0 ("AA"), checked in slot 1023 the day before
    const h0 = refHash(SECRET, ['AA', 'example.org', 'user']);
    const addr0 = `SRS0=${h0}=AA=example.org=user@example.com`;
    expect(srsReverse(addr0, ring, opts(), lastSlot)).toStrictEqual(inv('future'));
    expect(srsReverse(addr0, ring, opts(), lastSlot + days(1))).toStrictEqual(valid0('user@example.org', 0));
  });

  it('accepts a stamp again 1024 days later, as the whole family does', () => {
    const addr = 'SRS0=vmyz=2W=otherdomain.com=test@example.com';
    expect(srsReverse(addr, ring, opts(), days(18262 + 1024))).toStrictEqual(valid0('test@otherdomain.com', 0));
  });

  it('refuses a stamp with a character outside base32, or not 2 characters long, as bad-timestamp', () => {
    for (const tt of ['1A', 'A1', '08', 'A!', 'A', 'AAA', '2W2', 'é2']) {
      const h = refHash(SECRET, [tt, 'otherdomain.com', 'test']);
      const addr = `SRS0=${h}=${tt}=otherdomain.com=test@example.com`;
      expect(srsReverse(addr, ring, opts(), NOW), addr).toStrictEqual(inv('bad-timestamp'));
    }
    // a lowercase stamp is uppercased before decoding
    const h = refHash(SECRET, ['2w', 'otherdomain.com', 'test']);
    expect(srsReverse(`SRS0=${h}=2w=otherdomain.com=test@example.com`, ring, opts(), NOW)).toStrictEqual(valid0('test@otherdomain.com', 0));
  });

  it('checks the hash before the stamp, so a forged address never reports its age', () => {
    expect(srsReverse('SRS0=FAKE=1A=otherdomain.com=test@example.com', ring, opts(), NOW)).toStrictEqual(inv('bad-hash'));
    expect(srsReverse('SRS0=FAKE=T7=otherdomain.com=test@example.com', ring, opts(), NOW)).toStrictEqual(inv('bad-hash'));
  });

  it('refuses SRS0 and SRS1 addresses with missing or empty fields as malformed', () => {
    const srs0 = [
      'SRS0=@example.com',
      'SRS0=XjO9@example.com',
      'SRS0=XjO9=2V@example.com',
      'SRS0=XjO9=2V=otherdomain.com@example.com',
      'SRS0=XjO9=2V=otherdomain.com=@example.com',
      'SRS0==2V=otherdomain.com=test@example.com',
      'SRS0=XjO9==otherdomain.com=test@example.com',
      'SRS0=XjO9=2V==test@example.com',
      'SRS0+',
      'SRS0=',
    ];
    for (const a of srs0) expect(srsReverse(a, ring, opts(), NOW), a).toStrictEqual(inv('malformed', 'SRS0'));
    const srs1 = [
      'SRS1=@example.com',
      'SRS1=JIBX@example.com',
      'SRS1=JIBX=thirddomain.com@example.com',
      'SRS1=JIBX=thirddomain.com=@example.com',
      'SRS1==thirddomain.com==opaque@example.com',
      'SRS1=JIBX==opaque@example.com',
    ];
    for (const a of srs1) expect(srsReverse(a, ring, opts(), NOW), a).toStrictEqual(inv('malformed', 'SRS1'));
  });

  it('reports addresses that are not SRS as not tagged', () => {
    for (const a of ['test@example.com', '', 'SRS0xyz@example.com', 'SRS2=abcd=2W=a.org=b@example.com', '"SRS0=XjO9=2V=otherdomain.com=test"@example.com', 'xSRS0=XjO9=2V=otherdomain.com=test@example.com', 'prvs=5461cd18bc=user@example.com']) {
      expect(srsReverse(a, ring, opts(), NOW), a).toStrictEqual({ kind: 'not-tagged' });
    }
  });

  it('ignores the domain after @, and reverses an address without one (as postsrsd 1.10)', () => {
    expect(srsReverse('SRS0=XjO9=2V=otherdomain.com=test@anything.example', ring, opts(), NOW)).toStrictEqual(valid0('test@otherdomain.com', 1));
    expect(srsReverse('SRS0=XjO9=2V=otherdomain.com=test', ring, opts(), NOW)).toStrictEqual(valid0('test@otherdomain.com', 1));
  });

  it('signs with the first secret and verifies with every secret, reporting the key number that matched', () => {
    const newSecret = utf8('n3wer s3cret');
    const rotated = makeKeyring([tagKey(1, newSecret), tagKey(0, SECRET)]);
    const h = refHash(newSecret, ['2W', 'otherdomain.com', 'test']);
    expect(h).not.toBe('vmyz');
    const f = srsForward('test@otherdomain.com', rotated, opts(), NOW);
    expect(f).toStrictEqual(rewritten(`SRS0=${h}=2W=otherdomain.com=test@example.com`, 'SRS0'));
    expect(srsReverse(`SRS0=${h}=2W=otherdomain.com=test@example.com`, rotated, opts(), NOW)).toStrictEqual(valid0('test@otherdomain.com', 0, 1));
    expect(srsReverse('SRS0=XjO9=2V=otherdomain.com=test@example.com', rotated, opts(), NOW)).toStrictEqual(valid0('test@otherdomain.com', 1, 0));
    expect(srsReverse('SRS1=JIBX=thirddomain.com==opaque+string@example.com', rotated, opts(), NOW)).toStrictEqual(
      valid1('SRS0=opaque+string@thirddomain.com', 0),
    );
    // a ring without the old secret no longer verifies its addresses
    const newOnly = makeKeyring([tagKey(1, newSecret)]);
    expect(srsReverse('SRS0=XjO9=2V=otherdomain.com=test@example.com', newOnly, opts(), NOW)).toStrictEqual(inv('bad-hash'));
  });
});

// ---- property tests ----
const ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
const localChar = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...ATEXT) }, { weight: 1, arbitrary: fc.constantFrom('ü', 'Ä', '用', '😀') });
const atom = fc.string({ unit: localChar, minLength: 1, maxLength: 10 });
const local = fc
  .array(atom, { minLength: 1, maxLength: 3 })
  .map((a) => a.join('.'))
  .filter((l) => !/^SRS[01][=+-]/i.test(l));
const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?$/);
const host = fc
  .oneof(fc.array(label, { minLength: 1, maxLength: 3 }).map((a) => a.join('.')), fc.constantFrom('exämple.com', '例子.广告', '[192.0.2.1]'))
  .filter((d) => d.toLowerCase() !== 'example.com' && d.toLowerCase() !== 'fwd.example');
const separator = fc.constantFrom<SrsSeparator>('=', '+', '-');
const alphabet = fc.constantFrom<SrsAlphabet>('base64', 'base64url');
const hashLength = fc.integer({ min: 4, max: 10 });
const secret = fc.uint8Array({ minLength: 1, maxLength: 64 });
const day = fc.integer({ min: 0, max: 60_000 });
const msInDay = fc.integer({ min: 0, max: MS_PER_DAY - 1 });

/** Index range of the hash in an SRS address: after "SRSx" and the separator, up to the next "=". */
function hashSpan(address: string): [number, number] {
  return [5, address.indexOf('=', 5)];
}
function swapCase(c: string): string {
  return c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase();
}

describe('SRS properties (fast-check)', () => {
  it('reverse(forward(x)) = x at ages 0..21, expired at 22, future at -1, and forward matches the oracle', () => {
    fc.assert(
      fc.property(local, host, separator, hashLength, alphabet, secret, day, msInDay, msInDay, (l, h, sep, n, alph, s, d, t1, t2) => {
        const r = makeKeyring([tagKey(0, s)]);
        const o = opts({ separator: sep, hashLength: n, hashMin: n, alphabet: alph });
        const t = days(d) + t1;
        const tt = refStamp(t);
        const out = `SRS0${sep}${refHash(s, [tt, h, l], n, alph)}=${tt}=${h}=${l}@example.com`;
        expect(srsForward(`${l}@${h}`, r, o, t)).toStrictEqual(rewritten(out, 'SRS0'));
        for (let age = 0; age <= 21; age++) expect(srsReverse(out, r, o, days(d + age) + t2)).toStrictEqual(valid0(`${l}@${h}`, age));
        expect(srsReverse(out, r, o, days(d + 22) + t2)).toStrictEqual(inv('expired'));
        expect(srsReverse(out, r, o, days(d - 1) + t2)).toStrictEqual(inv('future'));
      }),
      FC,
    );
  });

  it('SRS1(SRS0(x)) reverses to the SRS0 address, which reverses to x; re-forwarding the SRS1 keeps pointing at the first forwarder', () => {
    fc.assert(
      fc.property(local, host, separator, separator, separator, secret, secret, secret, day, (l, h, sepA, sepB, sepC, sA, sB, sC, d) => {
        const t = days(d);
        const ringA = makeKeyring([tagKey(0, sA)]);
        const ringB = makeKeyring([tagKey(1, sB)]);
        const ringC = makeKeyring([tagKey(2, sC)]);
        const oA = opts({ domain: 'fwd-a.example', separator: sepA });
        const oB = opts({ domain: 'fwd-b.example', separator: sepB });
        const oC = opts({ domain: 'fwd-c.example', separator: sepC });
        const srs0 = srsForward(`${l}@${h}`, ringA, oA, t);
        if (srs0.kind !== 'rewritten') throw new Error('no SRS0');
        const srs1 = srsForward(srs0.address, ringB, oB, t);
        if (srs1.kind !== 'rewritten') throw new Error('no SRS1');
        expect(srs1.scheme).toBe('SRS1');
        expect(srs1.address.endsWith('@fwd-b.example')).toBe(true);
        expect(srsReverse(srs1.address, ringB, oB, t + days(3))).toStrictEqual(valid1(srs0.address, 1));
        expect(srsReverse(srs0.address, ringA, oA, t + days(3))).toStrictEqual(valid0(`${l}@${h}`, 3));
        const again = srsForward(srs1.address, ringC, oC, t);
        if (again.kind !== 'rewritten') throw new Error('no SRS1 again');
        expect(again.address.startsWith(`SRS1${sepC}`)).toBe(true);
        expect(srsReverse(again.address, ringC, oC, t)).toStrictEqual(valid1(srs0.address, 2));
        // B's secret does not verify A's address, and the other way round
        expect(srsReverse(srs1.address, ringA, oB, t)).toStrictEqual(inv('bad-hash', 'SRS1'));
      }),
      FC,
    );
  });

  it('any case-munging of the hash (and base64url spelling) still verifies; munging the whole address returns the munged original', () => {
    fc.assert(
      fc.property(local, host, secret, day, fc.array(fc.boolean(), { minLength: 200, maxLength: 200 }), fc.boolean(), (l, h, s, d, flips, url) => {
        const r = makeKeyring([tagKey(0, s)]);
        const f = srsForward(`${l}@${h}`, r, opts(), days(d));
        if (f.kind !== 'rewritten') throw new Error('not rewritten');
        const [a, b] = hashSpan(f.address);
        let hash = [...f.address.slice(a, b)].map((c, i) => (flips[i] ? swapCase(c) : c)).join('');
        if (url) hash = hash.replace(/\+/g, '-').replace(/\//g, '_');
        const munged = f.address.slice(0, a) + hash + f.address.slice(b);
        expect(srsReverse(munged, r, opts(), days(d))).toStrictEqual(valid0(`${l}@${h}`, 0));
        // whole-address munging of ASCII letters: the hash covers lowercased fields
        const all = [...f.address].map((c, i) => (flips[i % flips.length] && /[A-Za-z]/.test(c) ? swapCase(c) : c)).join('');
        const at = all.lastIndexOf('@');
        const fields = all.slice(5, at).split('=');
        const user = fields.slice(3).join('=');
        expect(srsReverse(all, r, opts(), days(d))).toStrictEqual(valid0(`${user}@${fields[2]}`, 0));
        expect(lcAscii(`${user}@${fields[2]}`)).toBe(lcAscii(`${l}@${h}`));
      }),
      FC,
    );
  });

  it('any non-case mutation of one hash character fails as bad-hash', () => {
    const b64char = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_');
    const fold = (c: string): string => (c === '-' ? '+' : c === '_' ? '/' : c.toLowerCase());
    fc.assert(
      fc.property(local, host, secret, day, hashLength, fc.nat(), b64char, (l, h, s, d, n, pos, c) => {
        const r = makeKeyring([tagKey(0, s)]);
        const o = opts({ hashLength: n, hashMin: n });
        const f = srsForward(`${l}@${h}`, r, o, days(d));
        if (f.kind !== 'rewritten') throw new Error('not rewritten');
        const [a, b] = hashSpan(f.address);
        const i = a + (pos % (b - a));
        const mutated = f.address.slice(0, i) + c + f.address.slice(i + 1);
        const got = srsReverse(mutated, r, o, days(d));
        if (fold(c) === fold(f.address[i]!)) expect(got).toStrictEqual(valid0(`${l}@${h}`, 0));
        else expect(got).toStrictEqual(inv('bad-hash'));
      }),
      FC,
    );
  });
});
