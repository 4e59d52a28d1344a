import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_ADDRESS_OCTETS,
  MAX_DOMAIN_OCTETS,
  MAX_LOCAL_OCTETS,
  formatMailbox,
  formatPath,
  isValidDomain,
  lowerAscii,
  octets,
  parseMailbox,
  parseIPv6,
  sameDomain,
  type AddressProblem,
  type ParsedAddress,
} from '../../src/tags/address.js';

const FC = { seed: 42, numRuns: 200 } as const;

function ok(local: string, domain: string, extra: { quoted?: boolean; utf8?: boolean; localTooLong?: boolean } = {}): ParsedAddress {
  return {
    ok: true,
    mailbox: { local, domain, quoted: extra.quoted ?? false, utf8: extra.utf8 ?? false, localTooLong: extra.localTooLong ?? false },
  };
}

function bad(problem: AddressProblem, message: string): ParsedAddress {
  return { ok: false, problem, message };
}

const badLocal = (local: string): ParsedAddress => bad('bad-local-part', `invalid local part "${local}"`);
const badDomain = (domain: string): ParsedAddress => bad('bad-domain', `invalid domain "${domain}"`);
const TOO_LONG = bad('too-long', 'address is over 254 octets');

const label63 = 'a'.repeat(63);
const label64 = 'a'.repeat(64);
// 254 octets: 80-octet UTF-8 local part (40 × "ü"), "@", a 173-octet domain.
const domain173 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(45)}`;
const local80 = 'ü'.repeat(40);

describe('parseMailbox()', () => {
  const valid: [string, string, ParsedAddress][] = [
    ['a plain dot-atom', 'user@example.com', ok('user', 'example.com')],
    ['dots between atoms', 'first.last@mail.example.co.uk', ok('first.last', 'mail.example.co.uk')],
    ['a subaddress with +', 'user+tag@example.com', ok('user+tag', 'example.com')],
    ['= in the local part', 'user=foo=bar@example.com', ok('user=foo=bar', 'example.com')],
    ['% (atext, valid)', 'a%b@example.com', ok('a%b', 'example.com')],
    ['! (atext, valid)', 'a!b@example.com', ok('a!b', 'example.com')],
    ['every atext special', "!#$%&'*+-/=?^_`{|}~@example.com", ok("!#$%&'*+-/=?^_`{|}~", 'example.com')],
    ['case kept', 'User.Name@Example.COM', ok('User.Name', 'Example.COM')],
    ['a single-label domain', 'root@localhost', ok('root', 'localhost')],
    ['hyphens and digits in labels', 'u@a-1.b2-c.d', ok('u', 'a-1.b2-c.d')],
    ['an A-label domain', 'user@xn--exmple-cua.com', ok('user', 'xn--exmple-cua.com')],
    ['a 63-octet label', `user@${label63}.com`, ok('user', `${label63}.com`)],
    ['a quoted local part with a space', '"john doe"@example.com', ok('"john doe"', 'example.com', { quoted: true })],
    ['a quoted local part with an escaped quote', '"a\\"b"@example.com', ok('"a\\"b"', 'example.com', { quoted: true })],
    ['a quoted local part with an escaped backslash', '"a\\\\b"@example.com', ok('"a\\\\b"', 'example.com', { quoted: true })],
    ['a quoted local part with @ and ..', '"a@b..c"@example.com', ok('"a@b..c"', 'example.com', { quoted: true })],
    ['an empty quoted local part', '""@example.com', ok('""', 'example.com', { quoted: true })],
    ['a quoted UTF-8 local part', '"jöhn dœ"@example.com', ok('"jöhn dœ"', 'example.com', { quoted: true, utf8: true })],
    ['a UTF-8 local part', 'üser@example.com', ok('üser', 'example.com', { utf8: true })],
    ['a UTF-8 local part and U-label domain', 'üser@exämple.com', ok('üser', 'exämple.com', { utf8: true })],
    ['CJK local part and domain', '用户@例子.广告', ok('用户', '例子.广告', { utf8: true })],
    ['an astral-plane local part', '😀.x@example.com', ok('😀.x', 'example.com', { utf8: true })],
    ['a UTF-8 domain only', 'user@bücher.example', ok('user', 'bücher.example', { utf8: true })],
    ['an IPv4 address literal', 'user@[192.0.2.1]', ok('user', '[192.0.2.1]')],
    ['an IPv4 literal with 0 and 255', 'user@[0.255.10.199]', ok('user', '[0.255.10.199]')],
    ['a full IPv6 literal', 'user@[IPv6:2001:db8:0:0:0:0:0:1]', ok('user', '[IPv6:2001:db8:0:0:0:0:0:1]')],
    ['a compressed IPv6 literal', 'user@[IPv6:2001:db8::1]', ok('user', '[IPv6:2001:db8::1]')],
    ['a compressed IPv6 literal with 6 groups besides ::', 'user@[IPv6:1:2:3:4:5:6::]', ok('user', '[IPv6:1:2:3:4:5:6::]')],
    ['an IPv6v4 literal with 4 groups besides ::', 'user@[IPv6:1:2:3:4::192.0.2.1]', ok('user', '[IPv6:1:2:3:4::192.0.2.1]')],
    ['the unspecified IPv6 literal', 'user@[IPv6:::]', ok('user', '[IPv6:::]')],
    ['a lowercase ipv6 tag', 'user@[ipv6:::1]', ok('user', '[ipv6:::1]')],
    ['an IPv6 literal with an IPv4 tail', 'user@[IPv6:::ffff:192.0.2.1]', ok('user', '[IPv6:::ffff:192.0.2.1]')],
    ['a full IPv6v4 literal', 'user@[IPv6:1:2:3:4:5:6:192.0.2.1]', ok('user', '[IPv6:1:2:3:4:5:6:192.0.2.1]')],
    ['a general address literal', 'user@[x-tag:some-content]', ok('user', '[x-tag:some-content]')],
    ['the postmaster', 'postmaster@example.com', ok('postmaster', 'example.com')],
    ['a 64-octet local part (not too long)', `${'a'.repeat(64)}@example.com`, ok('a'.repeat(64), 'example.com')],
    ['a 65-octet local part (flagged)', `${'a'.repeat(65)}@example.com`, ok('a'.repeat(65), 'example.com', { localTooLong: true })],
    ['a 64-octet UTF-8 local part (32 ü)', `${'ü'.repeat(32)}@example.com`, ok('ü'.repeat(32), 'example.com', { utf8: true })],
    [
      'a 65-octet UTF-8 local part of 33 characters (flagged)',
      `${'ü'.repeat(32)}a@example.com`,
      ok(`${'ü'.repeat(32)}a`, 'example.com', { utf8: true, localTooLong: true }),
    ],
    ['an address of exactly 254 octets', `${local80}@${domain173}`, ok(local80, domain173, { utf8: true, localTooLong: true })],
    ['an SRS1 address', 'SRS1=JIBX=thirddomain.com==opaque+string@example.com', ok('SRS1=JIBX=thirddomain.com==opaque+string', 'example.com')],
    ['a prvs tag', 'prvs=5461cd18bc=user@example.com', ok('prvs=5461cd18bc=user', 'example.com')],
  ];

  for (const [what, input, want] of valid) {
    it(`parseMailbox() accepts ${what}: ${JSON.stringify(input.length > 60 ? `${input.slice(0, 57)}...` : input)}`, () => {
      expect(parseMailbox(input)).toStrictEqual(want);
    });
  }

  const invalid: [string, string, ParsedAddress][] = [
    ['the null sender as ""', '', bad('null-sender', 'the null sender <> has no mailbox')],
    ['the null sender as "<>"', '<>', bad('null-sender', 'the null sender <> has no mailbox')],
    ['an unqualified address', 'postmaster', bad('unqualified', '"postmaster" has no domain')],
    ['an empty domain', 'user@', bad('unqualified', '"user@" has no domain')],
    ['an empty local part', '@example.com', bad('bad-local-part', 'empty local part')],
    ['a source route', '@a,@b:user@c', badLocal('@a,@b:user')],
    ['a source route with one hop', '@a:user@c', badLocal('@a:user')],
    ['angle brackets left on', '<user@example.com>', badLocal('<user')],
    ['a double dot in the local part', 'a..b@example.com', badLocal('a..b')],
    ['a leading dot in the local part', '.user@example.com', badLocal('.user')],
    ['a trailing dot in the local part', 'user.@example.com', badLocal('user.')],
    ['an unquoted space', 'john doe@example.com', badLocal('john doe')],
    ['an unquoted @ in the local part', 'a@b@example.com', badLocal('a@b')],
    ['a control character in the local part', 'us\u0000er@example.com', badLocal('us\u0000er')],
    ['an unterminated quoted string', '"john@example.com', badLocal('"john')],
    ['a quoted string followed by an atom', '"a".b@example.com', badLocal('"a".b')],
    ['a quoted string ending in an escaped quote', '"a\\"@example.com', badLocal('"a\\"')],
    ['a bare backslash in a quoted string', '"a\\"b@example.com', badLocal('"a\\"b')],
    ['a trailing dot in the domain', 'user@example.com.', badDomain('example.com.')],
    ['a leading dot in the domain', 'user@.example.com', badDomain('.example.com')],
    ['a double dot in the domain', 'user@example..com', badDomain('example..com')],
    ['a label starting with a hyphen', 'user@-example.com', badDomain('-example.com')],
    ['a label ending with a hyphen', 'user@example-.com', badDomain('example-.com')],
    ['an underscore in a label', 'user@exa_mple.com', badDomain('exa_mple.com')],
    ['a space in the domain', 'user@exa mple.com', badDomain('exa mple.com')],
    ['a 64-octet label', `user@${label64}.com`, badDomain(`${label64}.com`)],
    ['a 64-octet UTF-8 label (32 ü)', `user@${'ü'.repeat(32)}.com`, badDomain(`${'ü'.repeat(32)}.com`)],
    ['an IPv4 literal out of range', 'user@[192.0.2.256]', badDomain('[192.0.2.256]')],
    ['an IPv4 literal with three parts', 'user@[192.0.2]', badDomain('[192.0.2]')],
    ['an unclosed literal', 'user@[192.0.2.1', badDomain('[192.0.2.1')],
    ['an IPv6 literal with two ::', 'user@[IPv6:1::2::3]', badDomain('[IPv6:1::2::3]')],
    ['an IPv6 literal with nine groups', 'user@[IPv6:1:2:3:4:5:6:7:8:9]', badDomain('[IPv6:1:2:3:4:5:6:7:8:9]')],
    ['an IPv6 literal with seven groups and no ::', 'user@[IPv6:1:2:3:4:5:6:7]', badDomain('[IPv6:1:2:3:4:5:6:7]')],
    ['an IPv6 literal with a 5-digit group', 'user@[IPv6:12345::1]', badDomain('[IPv6:12345::1]')],
    ['an IPv6 tag holding an IPv4 address', 'user@[IPv6:192.0.2.1]', badDomain('[IPv6:192.0.2.1]')],
    ['an IPv4 literal without tag but with colons', 'user@[:1]', badDomain('[:1]')],
    ['a bare IPv6 address literal without tag', 'user@[::1]', badDomain('[::1]')],
    // RFC 5321 §4.1.3 IPv6-comp: "No more than 6 groups in addition to the '::' may be present."
    ['an IPv6 literal with 7 groups besides ::', 'user@[IPv6:1:2:3:4:5:6:7::]', badDomain('[IPv6:1:2:3:4:5:6:7::]')],
    // RFC 5321 §4.1.3 IPv6v4-comp: "no more than 4 groups in addition to the '::' and IPv4-address-literal"
    ['an IPv6v4 literal with 5 groups besides :: and the IPv4 part', 'user@[IPv6:1:2:3:4:5::192.0.2.1]', badDomain('[IPv6:1:2:3:4:5::192.0.2.1]')],
    ['an address of 255 octets', `${local80}a@${domain173}`, TOO_LONG],
    ['an address of 300 octets', `${'a'.repeat(40)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}.${'e'.repeat(63)}.com`, TOO_LONG],
    ['a domain of 256 octets (the address is then too long)', `u@${'d'.repeat(63)}.${'d'.repeat(63)}.${'d'.repeat(63)}.${'d'.repeat(63)}.dd`, TOO_LONG],
  ];

  for (const [what, input, want] of invalid) {
    it(`parseMailbox() refuses ${what}: ${JSON.stringify(input.length > 60 ? `${input.slice(0, 57)}...` : input)}`, () => {
      expect(parseMailbox(input)).toStrictEqual(want);
    });
  }

  it('parseMailbox() counts UTF-8 octets, not UTF-16 units, for the 254-octet limit', () => {
    const addr254 = `${local80}@${domain173}`;
    expect(addr254.length).toBe(214);
    expect(Buffer.byteLength(addr254)).toBe(MAX_ADDRESS_OCTETS);
    expect(parseMailbox(addr254).ok).toBe(true);
    const addr255 = `${local80}a@${domain173}`;
    expect(addr255.length).toBe(215);
    expect(parseMailbox(addr255)).toStrictEqual(TOO_LONG);
    // The same shapes in ASCII: 254 is accepted, 255 refused.
    const ascii254 = `${'x'.repeat(80)}@${domain173}`;
    expect(Buffer.byteLength(ascii254)).toBe(254);
    expect(parseMailbox(ascii254).ok).toBe(true);
    expect(parseMailbox(`x${ascii254}`)).toStrictEqual(TOO_LONG);
  });

  it('parseMailbox() never throws on arbitrary strings (fast-check)', () => {
    const strings = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 80 }),
      fc.string({ unit: 'grapheme', maxLength: 80 }),
      fc.string({ unit: fc.constantFrom('a', '.', '@', '"', '\\', '[', ']', ':', '-', 'ü', ' ', 'I', 'P', 'v', '6', '1'), maxLength: 40 }),
      // lone surrogates included: a JS string can hold them even if no UTF-8 decoder produces them
      fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 40 }),
      fc.string({ unit: 'binary-ascii', minLength: 240, maxLength: 400 }),
    );
    fc.assert(
      fc.property(strings, (s) => {
        const r = parseMailbox(s);
        expect(typeof r.ok).toBe('boolean');
        if (r.ok) expect(formatMailbox(r.mailbox)).toBe(s);
      }),
      { ...FC, numRuns: 500 },
    );
  });

  it('formatMailbox(parseMailbox(x)) === x and the fields split at the last @ for generated valid addresses (fast-check)', () => {
    fc.assert(
      fc.property(validAddress, ({ local, domain }) => {
        const x = `${local}@${domain}`;
        const r = parseMailbox(x);
        if (Buffer.byteLength(x) > MAX_ADDRESS_OCTETS) {
          expect(r).toStrictEqual(TOO_LONG);
          return;
        }
        expect(r).toStrictEqual(
          ok(local, domain, {
            quoted: local.startsWith('"'),
            utf8: /[^\x00-\x7f]/.test(x),
            localTooLong: Buffer.byteLength(local) > MAX_LOCAL_OCTETS,
          }),
        );
        if (r.ok) expect(formatMailbox(r.mailbox)).toBe(x);
      }),
      { ...FC, numRuns: 500 },
    );
  });
});

// ---- generators of valid addresses ----
const ATEXT_ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
const NON_ASCII = ['ü', 'é', 'ß', '用', '户', 'я', '😀', 'ñ', 'Ω'];
const atextChar = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...ATEXT_ASCII) }, { weight: 1, arbitrary: fc.constantFrom(...NON_ASCII) });
const atom = fc.string({ unit: atextChar, minLength: 1, maxLength: 12 });
const dotAtom = fc.array(atom, { minLength: 1, maxLength: 4 }).map((a) => a.join('.'));
const qtext = fc.oneof(
  fc.constantFrom(' ', '!', '#', '@', '.', '(', ')', ',', ':', ';', '<', '>', '[', ']', 'a', 'Z', '0', '~', 'ü'),
  fc.constantFrom('\\"', '\\\\', '\\ ', '\\a'),
);
const quoted = fc.array(qtext, { maxLength: 10 }).map((a) => `"${a.join('')}"`);
const letDig = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 'ü', 'ä', '例');
const label = fc
  .tuple(letDig, fc.string({ unit: fc.oneof(letDig, fc.constant('-')), maxLength: 20 }), letDig)
  .map(([a, mid, z]) => (mid === '' ? a : `${a}${mid}${z}`))
  .filter((l) => Buffer.byteLength(l) <= 63);
const hostname = fc.array(label, { minLength: 1, maxLength: 4 }).map((a) => a.join('.'));
const octet = fc.integer({ min: 0, max: 255 });
const ipv4 = fc.tuple(octet, octet, octet, octet).map((a) => a.join('.'));
const hex16 = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));
const ipv6 = fc.oneof(
  fc.array(hex16, { minLength: 8, maxLength: 8 }).map((g) => g.join(':')),
  fc.tuple(fc.array(hex16, { maxLength: 3 }), fc.array(hex16, { maxLength: 3 })).map(([a, b]) => `${a.join(':')}::${b.join(':')}`),
  fc.tuple(fc.array(hex16, { minLength: 6, maxLength: 6 }), ipv4).map(([g, v4]) => `${g.join(':')}:${v4}`),
  fc.tuple(fc.array(hex16, { maxLength: 3 }), ipv4).map(([g, v4]) => `${g.join(':')}::${v4}`),
);
const literal = fc.oneof(ipv4.map((a) => `[${a}]`), ipv6.map((a) => `[IPv6:${a}]`));
const validAddress = fc.record({
  local: fc.oneof({ weight: 4, arbitrary: dotAtom }, { weight: 1, arbitrary: quoted }),
  domain: fc.oneof({ weight: 5, arbitrary: hostname }, { weight: 1, arbitrary: literal }, { weight: 1, arbitrary: fc.domain() }),
});

describe('isValidDomain()', () => {
  it('accepts a 255-octet domain and refuses a 256-octet one', () => {
    const d255 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}`;
    const d256 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}.ab`;
    expect([d255.length, d256.length]).toEqual([MAX_DOMAIN_OCTETS, 256]);
    expect(isValidDomain(d255)).toBe(true);
    expect(isValidDomain(d256)).toBe(false);
  });

  it('counts UTF-8 octets for the 255-octet domain limit', () => {
    // 4 labels of 31 × "ü" (62 octets each) and 3 dots: 251 octets in 127 UTF-16 units.
    const base = Array.from({ length: 4 }, () => 'ü'.repeat(31)).join('.');
    expect(octets(base)).toBe(251);
    expect(isValidDomain(`${base}.üa`)).toBe(true); // 255 octets
    expect(isValidDomain(`${base}.üab`)).toBe(false); // 256 octets in 131 UTF-16 units
  });

  it('accepts valid names and literals and refuses empty, dotted-edge and malformed ones', () => {
    const table: [string, boolean][] = [
      ['example.com', true],
      ['EXAMPLE.COM', true],
      ['exämple.com', true],
      ['[192.0.2.1]', true],
      ['[IPv6:::1]', true],
      ['[x-tag:content]', true],
      ['', false],
      ['.', false],
      ['example.com.', false],
      ['[]', false],
      ['[192.0.2.1', false],
      ['192.0.2.1]', false],
      ['[IPv6:]', false],
      ['[-tag:content]', true],
      ['[tag-:content]', false],
      ['[tag:]', false],
      ['[tag:a[b]', false],
    ];
    expect(table.map(([d]) => [d, isValidDomain(d)])).toEqual(table);
  });
});

describe('octets()', () => {
  it('counts UTF-8 octets of 1, 2, 3 and 4-byte characters', () => {
    expect([octets(''), octets('a'), octets('ü'), octets('€'), octets('😀'), octets('aü€😀')]).toEqual([0, 1, 2, 3, 4, 10]);
  });

  it('equals Buffer.byteLength for arbitrary well-formed strings (fast-check)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 60 }), (s) => {
        expect(octets(s)).toBe(Buffer.byteLength(s, 'utf8'));
      }),
      FC,
    );
  });
});

describe('formatMailbox() and formatPath()', () => {
  it('joins local and domain with @ and wraps a path in angle brackets, <> for the null sender', () => {
    expect(formatMailbox({ local: '"john doe"', domain: 'example.com' })).toBe('"john doe"@example.com');
    expect(formatPath('user@example.com')).toBe('<user@example.com>');
    expect(formatPath('')).toBe('<>');
  });
});

describe('lowerAscii() and sameDomain()', () => {
  it('lowerAscii() lowers A-Z only', () => {
    expect(lowerAscii('ÄBC.Example.COM')).toBe('Äbc.example.com');
    expect(lowerAscii('already.lower')).toBe('already.lower');
    expect(lowerAscii('İSTANBUL')).toBe('İstanbul');
  });

  it('sameDomain() ignores ASCII case and one trailing dot, but not non-ASCII case', () => {
    expect(sameDomain('Example.COM', 'example.com')).toBe(true);
    expect(sameDomain('example.com.', 'EXAMPLE.com')).toBe(true);
    expect(sameDomain('example.com', 'example.org')).toBe(false);
    expect(sameDomain('sub.example.com', 'example.com')).toBe(false);
    expect(sameDomain('BÜCHER.example', 'bücher.example')).toBe(false);
  });
});

describe('parseIPv6 (the one IPv6 parser: address literals and DNSBL lookups)', () => {
  it('reads what node:net reads, to the same 16 bytes', async () => {
    const net = await import('node:net');
    const word = fc.integer({ min: 0, max: 0xffff });
    fc.assert(fc.property(fc.array(word, { minLength: 8, maxLength: 8 }), fc.boolean(), (words, v4tail) => {
      const hex = words.map((w) => w.toString(16));
      const text = v4tail ? `${hex.slice(0, 6).join(':')}:${words.slice(6).flatMap((w) => [w >> 8, w & 0xff]).join('.')}` : hex.join(':');
      // node's own canonical (compressed) form of the same address
      const canon = new net.SocketAddress({ address: text, family: 'ipv6' }).address;
      const bytes = words.flatMap((w) => [w >> 8, w & 0xff]);
      expect(parseIPv6(text)?.bytes).toEqual(bytes);
      expect(parseIPv6(canon)?.bytes).toEqual(bytes);
    }), { numRuns: 500 });
  });

  it('refuses what is not one address, and counts the groups "::" stands for', () => {
    for (const bad of ['', ':', ':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', 'g::1', '::1.2.3.256', '1:2:3:4:5:6:7:1.2.3.4', 'fe80::1%eth0']) {
      expect(parseIPv6(bad), bad).toBeNull();
    }
    expect(parseIPv6('::')).toEqual({ bytes: Array(16).fill(0), elided: 8 });
    expect(parseIPv6('1:2:3:4:5:6:7::')?.elided).toBe(1);
    expect(parseIPv6('::ffff:192.0.2.7')).toEqual({ bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7], elided: 5 });
  });
});
