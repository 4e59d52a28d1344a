/**
 * Envelope addresses (RFC 5321 §4.1.2, with the UTF-8 extensions of RFC 6531 §3.3).
 *
 *   Reverse-path   = Path / "<>"
 *   Path           = "<" [ A-d-l ":" ] Mailbox ">"
 *   Mailbox        = Local-part "@" ( Domain / address-literal )
 *   Local-part     = Dot-string / Quoted-string
 *   Dot-string     = Atom *("."  Atom)
 *   Atom           = 1*atext                      ; atext =/ UTF8-non-ascii (RFC 6531)
 *   Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
 *   QcontentSMTP   = qtextSMTP / quoted-pairSMTP
 *   qtextSMTP      = %d32-33 / %d35-91 / %d93-126   ; =/ UTF8-non-ascii
 *   quoted-pairSMTP= %d92 %d32-126
 *   Domain         = sub-domain *("." sub-domain)
 *   sub-domain     = Let-dig [Ldh-str]               ; =/ U-label (RFC 6531)
 *   address-literal= "[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"
 *
 * Limits (§4.5.3.1): local part 64 octets, domain 255 octets, path 256 octets including the brackets,
 * hence 254 for the address itself. Tagged addresses routinely pass 64 octets in the local part (every
 * SRS1 does), so that limit is reported, not enforced; the 254-octet limit is enforced.
 *
 * The address is the text between the angle brackets, as smtp-server hands it over (`''` for `<>`).
 * Source routes (`@a,@b:user@c`) are not accepted. Pure: no I/O.
 */

export const MAX_LOCAL_OCTETS = 64;
export const MAX_DOMAIN_OCTETS = 255;
export const MAX_ADDRESS_OCTETS = 254;

export interface Mailbox {
  /** The local part exactly as written, quotes included when quoted. */
  readonly local: string;
  /** The domain or address literal exactly as written (case kept). */
  readonly domain: string;
  readonly quoted: boolean;
  /** Any non-ASCII byte (needs SMTPUTF8 on the wire). */
  readonly utf8: boolean;
  /** Local part over 64 octets: legal to relay, but some receivers refuse it. */
  readonly localTooLong: boolean;
}

export type AddressProblem = 'null-sender' | 'unqualified' | 'bad-local-part' | 'bad-domain' | 'too-long';

export type ParsedAddress =
  | { ok: true; mailbox: Mailbox }
  | { ok: false; problem: AddressProblem; message: string };

const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10FFFF}]+$/u;
const QUOTED = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\u{10FFFF}]|\\[\x20-\x7e])*"$/u;
const LABEL = /^(?:[A-Za-z0-9\u0080-\u{10FFFF}](?:[A-Za-z0-9\-\u0080-\u{10FFFF}]*[A-Za-z0-9\u0080-\u{10FFFF}])?)$/u;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const GENERAL_LITERAL = /^[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+$/;
// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/** UTF-8 length of a string without allocating. */
export function octets(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

/** Is `s` a valid domain or address literal (RFC 5321 §4.1.2/§4.1.3)? Trailing dots are not. */
export function isValidDomain(s: string): boolean {
  if (s.length === 0 || octets(s) > MAX_DOMAIN_OCTETS) return false;
  if (s.startsWith('[')) {
    if (!s.endsWith(']')) return false;
    const lit = s.slice(1, -1);
    if (IPV4.test(lit)) return true;
    if (/^IPv6:/i.test(lit)) return isIPv6(lit.slice(5));
    return GENERAL_LITERAL.test(lit) && !/^IPv6:/i.test(lit);
  }
  const labels = s.split('.');
  return labels.every((l) => l.length > 0 && octets(l) <= 63 && LABEL.test(l));
}

/**
 * The 16 bytes of an IPv6 address in text (RFC 4291 §2.2: full, "::"-compressed, with an embedded IPv4
 * tail; no zone), and how many groups its "::" stands for (0 without one); null for anything else. The
 * one IPv6 parser: SMTP address literals here, DNSBL lookups in src/inbound/dnsbl.ts.
 *
 * @example
 *   parseIPv6('2001:db8::1');      // { bytes: [0x20, 0x01, 0x0d, 0xb8, 0, ..., 1], elided: 5 }
 *   parseIPv6('::ffff:192.0.2.7'); // { bytes: [0, ..., 0xff, 0xff, 192, 0, 2, 7], elided: 5 }
 */
export function parseIPv6(s: string): { bytes: number[]; elided: number } | null {
  let rest = s;
  const tail: number[] = [];
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    if (!IPV4.test(v4[2]!)) return null;
    tail.push(...v4[2]!.split('.').map(Number));
    rest = v4[1]!.endsWith('::') ? v4[1]! : v4[1]!.slice(0, -1);
  }
  const halves = rest.split('::');
  if (halves.length > 2) return null;
  const split = (h: string): string[] => (h === '' ? [] : h.split(':'));
  const left = split(halves[0]!);
  const right = halves.length === 2 ? split(halves[1]!) : [];
  const groups = [...left, ...right];
  if (!groups.every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return null;
  const room = 8 - tail.length / 2;
  const elided = room - groups.length;
  if (halves.length === 1 ? elided !== 0 : elided < 1) return null;
  const words = [...left, ...Array<string>(halves.length === 2 ? elided : 0).fill('0'), ...right].map((g) => parseInt(g, 16));
  return { bytes: [...words.flatMap((w) => [w >> 8, w & 0xff]), ...tail], elided: halves.length === 2 ? elided : 0 };
}

/** RFC 5321 §4.1.3 IPv6-addr: as RFC 4291, except that "::" stands for at least two groups. */
function isIPv6(s: string): boolean {
  const p = parseIPv6(s);
  return p !== null && p.elided !== 1;
}

function isValidLocal(local: string): boolean {
  if (local.startsWith('"')) return QUOTED.test(local);
  return local.split('.').every((atom) => atom.length > 0 && ATEXT.test(atom));
}

/**
 * Parses a mailbox `local@domain` (no angle brackets). The null sender is reported as a problem so that
 * callers which accept it (MAIL FROM) test for `''` first.
 *
 * @example
 *   parseMailbox('user@example.com'); // { ok: true, mailbox: { local: 'user', domain: 'example.com', ... } }
 *   parseMailbox('postmaster');       // { ok: false, problem: 'unqualified', ... }
 */
export function parseMailbox(address: string): ParsedAddress {
  if (address === '' || address === '<>') {
    return { ok: false, problem: 'null-sender', message: 'the null sender <> has no mailbox' };
  }
  if (octets(address) > MAX_ADDRESS_OCTETS) {
    return { ok: false, problem: 'too-long', message: `address is over ${MAX_ADDRESS_OCTETS} octets` };
  }
  const at = address.lastIndexOf('@');
  if (at < 0) return { ok: false, problem: 'unqualified', message: `"${address}" has no domain` };
  const local = address.slice(0, at);
  const domain = address.slice(at + 1);
  if (local === '') return { ok: false, problem: 'bad-local-part', message: 'empty local part' };
  if (domain === '') return { ok: false, problem: 'unqualified', message: `"${address}" has no domain` };
  if (!isValidLocal(local)) {
    return { ok: false, problem: 'bad-local-part', message: `invalid local part "${local}"` };
  }
  if (!isValidDomain(domain)) return { ok: false, problem: 'bad-domain', message: `invalid domain "${domain}"` };
  return {
    ok: true,
    mailbox: {
      local,
      domain,
      quoted: local.startsWith('"'),
      utf8: NON_ASCII.test(address),
      localTooLong: octets(local) > MAX_LOCAL_OCTETS,
    },
  };
}

/** `local@domain` back together (the inverse of parseMailbox for valid input). */
export function formatMailbox(m: Pick<Mailbox, 'local' | 'domain'>): string {
  return `${m.local}@${m.domain}`;
}

/** A reverse-path or forward-path as it goes on the wire: `<>` for the null sender, else `<address>`. */
export function formatPath(address: string): string {
  return `<${address}>`;
}

/** ASCII-only lowercase (domains compare case-insensitively; non-ASCII is left as is). */
export function lowerAscii(s: string): string {
  return /[A-Z]/.test(s) ? s.replace(/[A-Z]+/g, (m) => m.toLowerCase()) : s;
}

/** Domain equality as mail software means it: ASCII case-insensitive, trailing dot ignored. */
export function sameDomain(a: string, b: string): boolean {
  return lowerAscii(a.replace(/\.$/, '')) === lowerAscii(b.replace(/\.$/, ''));
}
