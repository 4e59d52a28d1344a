/**
 * SRS (Sender Rewriting Scheme), Guarded, byte-identical to libsrs2, postsrsd 1.x and Perl
 * Mail::SRS::Guarded.
 *
 *   SRS0 = "SRS0" SEP HASH "=" TT "=" HOST "=" LOCAL "@" ALIAS
 *   SRS1 = "SRS1" SEP HASH "=" H1 "=" OPAQUE "@" ALIAS       OPAQUE = SRS0 local part minus "SRS0"
 *   SEP  = "=" | "+" | "-" (only right after the tag; every other separator is "=")
 *   TT   = base32 of (UTC day mod 1024), 2 characters
 *   HASH = first hashLength chars of base64(HMAC-SHA1(secret, lc(TT) lc(HOST) lc(LOCAL)))  [SRS0]
 *                                   base64(HMAC-SHA1(secret, lc(H1) lc(OPAQUE)))          [SRS1]
 *   lc   = ASCII A-Z only, on the UTF-8 bytes
 *
 * Verification compares hashes case-insensitively with "-" = "+" and "_" = "/" (postsrsd 2.x writes
 * base64url), in constant time, against every verifying key. Pure: time is a parameter.
 */
import { utcDay } from '../clock.js';
import { constantTimeEqual, foldAsciiCase } from './hmac.js';
import type { TagKey, TagKeyring } from './keyring.js';
import { lowerAscii } from './address.js';
import { FUTURE_WINDOW_DAYS } from './batv.js';

export type SrsSeparator = '=' | '+' | '-';
export type SrsAlphabet = 'base64' | 'base64url';

export interface SrsOptions {
  /** The forwarder's own domain, written after the @ of every SRS address. */
  readonly domain: string;
  readonly separator: SrsSeparator;
  /** Characters of hash written (default 4). */
  readonly hashLength: number;
  /** Shortest hash accepted on reverse (default = hashLength). */
  readonly hashMin: number;
  readonly maxAgeDays: number;
  /** Rewrite even senders already in the SRS domain. */
  readonly alwaysRewrite: boolean;
  /** Emitted hash alphabet; both are always accepted. base64url avoids "/" for receivers refusing it. */
  readonly alphabet: SrsAlphabet;
}

export const SRS_DEFAULTS = {
  separator: '=',
  hashLength: 4,
  hashMin: 4,
  maxAgeDays: 21,
  alwaysRewrite: false,
  alphabet: 'base64',
} as const satisfies Omit<SrsOptions, 'domain'>;

export type SrsForwardResult =
  | { kind: 'rewritten'; address: string; scheme: 'SRS0' | 'SRS1' }
  | { kind: 'unchanged'; reason: 'srs-domain'; address: string }
  | { kind: 'refused'; reason: 'null-sender' | 'unqualified' | 'at-in-local-part' | 'malformed-srs1'; message: string };

export type SrsInvalidReason = 'malformed' | 'bad-timestamp' | 'hash-too-short' | 'bad-hash' | 'expired' | 'future';

/** What each refusal is called, in results and in the proxy's RCPT reply (src/policy/replies.ts). */
export const SRS_INVALID_WORDS: Readonly<Record<SrsInvalidReason, string>> = {
  malformed: 'malformed SRS address',
  'bad-timestamp': 'SRS timestamp malformed',
  'hash-too-short': 'SRS hash too short',
  'bad-hash': 'SRS hash invalid',
  expired: 'SRS address expired',
  future: 'SRS timestamp in the future',
};

export type SrsReverseResult =
  | { kind: 'not-tagged' }
  | { kind: 'valid'; original: string; scheme: 'SRS0' | 'SRS1'; keyNum: number; ageDays?: number }
  | { kind: 'invalid'; reason: SrsInvalidReason; message: string; scheme: 'SRS0' | 'SRS1' };

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const SRS0_RE = /^SRS0[=+-]/i;
const SRS1_RE = /^SRS1[=+-]/i;
const DAYS_PER_CYCLE = 1024;

/** The two-character base32 day stamp for an instant. */
export function srsTimestamp(nowMs: number): string {
  const d = utcDay(nowMs) % DAYS_PER_CYCLE;
  return B32[(d >> 5) & 31]! + B32[d & 31]!;
}

function hash(key: TagKey, fields: readonly string[], chars: number, alphabet: SrsAlphabet): string {
  const h = key.hmac.base64(fields.map(lowerAscii).join(''), chars);
  return alphabet === 'base64url' ? h.replace(/\+/g, '-').replace(/\//g, '_') : h;
}

/** Case-insensitive, base64url-tolerant fold of one hash character. */
function foldHash(c: number): number {
  if (c === 45) return 43; // '-' → '+'
  if (c === 95) return 47; // '_' → '/'
  return foldAsciiCase(c);
}

/**
 * Rewrites a sender for forwarding: SRS0 for an ordinary address, SRS1 for an SRS0 (keeping its
 * separator, hence the familiar "=="), a fresh hash for an SRS1 (pointing back at its first forwarder).
 * Senders already in the SRS domain are left unchanged unless alwaysRewrite is set.
 *
 * @example
 *   srsForward('test@otherdomain.com', ring, { ...SRS_DEFAULTS, domain: 'example.com' }, 1577836860000);
 *   // { kind: 'rewritten', scheme: 'SRS0', address: 'SRS0=vmyz=2W=otherdomain.com=test@example.com' }
 */
export function srsForward(sender: string, keyring: Pick<TagKeyring, 'signing'> & Partial<Pick<TagKeyring, 'signingAt'>>, opts: SrsOptions, nowMs: number): SrsForwardResult {
  if (sender === '' || sender === '<>') {
    return { kind: 'refused', reason: 'null-sender', message: 'the null sender is never rewritten' };
  }
  const at = sender.lastIndexOf('@');
  if (at <= 0 || at === sender.length - 1) {
    return { kind: 'refused', reason: 'unqualified', message: `"${sender}" is not a qualified address` };
  }
  const local = sender.slice(0, at);
  const host = sender.slice(at + 1);
  if (local.includes('@')) {
    return { kind: 'refused', reason: 'at-in-local-part', message: 'a sender whose local part contains "@" cannot be rewritten' };
  }
  // Exactly as the family compares (case-insensitive, a trailing dot is a different name).
  if (!opts.alwaysRewrite && lowerAscii(host) === lowerAscii(opts.domain)) return { kind: 'unchanged', reason: 'srs-domain', address: sender };

  const key = keyring.signingAt?.(nowMs) ?? keyring.signing;
  const { separator: sep, hashLength: n, alphabet, domain } = opts;
  if (SRS0_RE.test(local)) {
    const opaque = local.slice(4);
    return { kind: 'rewritten', scheme: 'SRS1', address: `SRS1${sep}${hash(key, [host, opaque], n, alphabet)}=${host}=${opaque}@${domain}` };
  }
  if (SRS1_RE.test(local)) {
    // The family re-hashes an SRS1 even when some of its fields are empty; only missing separators refuse.
    const parts = splitFields(local.slice(5), 3, true);
    if (!parts) return { kind: 'refused', reason: 'malformed-srs1', message: 'malformed SRS1 sender' };
    const [, h1, opaque] = parts;
    return { kind: 'rewritten', scheme: 'SRS1', address: `SRS1${sep}${hash(key, [h1!, opaque!], n, alphabet)}=${h1}=${opaque}@${domain}` };
  }
  const tt = srsTimestamp(nowMs);
  return { kind: 'rewritten', scheme: 'SRS0', address: `SRS0${sep}${hash(key, [tt, host, local], n, alphabet)}=${tt}=${host}=${local}@${domain}` };
}

/**
 * Splits at "=" into exactly `count` fields (the last keeps any further "="); null when a separator is
 * missing, or (unless `allowEmpty`) when a field is empty.
 */
function splitFields(s: string, count: number, allowEmpty = false): string[] | null {
  const out: string[] = [];
  let rest = s;
  for (let i = 0; i < count - 1; i++) {
    const eq = rest.indexOf('=');
    if (eq < 0 || (eq === 0 && !allowEmpty)) return null;
    out.push(rest.slice(0, eq));
    rest = rest.slice(eq + 1);
  }
  if (rest === '' && !allowEmpty) return null;
  out.push(rest);
  return out;
}

/** Characters in an unpadded base64 HMAC-SHA1 digest. */
const MAX_HASH_CHARS = 27;

function checkHash(given: string, fields: readonly string[], keyring: Pick<TagKeyring, 'verifying'>, opts: SrsOptions): TagKey | 'too-short' | null {
  if (given.length < opts.hashMin) return 'too-short';
  // A hash longer than hashLength verifies only when every character is the HMAC's (Mail::SRS compares
  // the whole given hash with the digest; SRS0=HHHHx=… is "Invalid hash" there). A base64 HMAC-SHA1 has
  // 27 characters, so anything longer cannot match.
  if (given.length > MAX_HASH_CHARS) return null;
  const chars = given.length;
  const g = given;
  let found: TagKey | null = null;
  for (const key of keyring.verifying) {
    // Every key is tried (no early exit), so timing does not reveal which one matched.
    if (constantTimeEqual(g, hash(key, fields, chars, 'base64'), foldHash) && !found) found = key;
  }
  return found;
}

/** Age in days of a base32 stamp, or null for a bad stamp; future stamps come out near 1024. */
function stampAge(tt: string, nowMs: number): number | null {
  if (tt.length !== 2) return null;
  const hi = B32.indexOf(tt[0]!.toUpperCase());
  const lo = B32.indexOf(tt[1]!.toUpperCase());
  if (hi < 0 || lo < 0) return null;
  const then = (hi << 5) | lo;
  return (utcDay(nowMs) - then + DAYS_PER_CYCLE * 2) % DAYS_PER_CYCLE;
}

/**
 * Reverses an SRS address: SRS0 gives the original sender, SRS1 the SRS0 address at its first forwarder.
 * The hash is checked before the timestamp (as Mail::SRS does), so "expired" only ever describes an
 * address we really made. The domain after "@" is not checked here (the caller routes on it).
 *
 * @example
 *   srsReverse('SRS0=XjO9=2V=otherdomain.com=test@example.com', ring, opts, 1577836860000);
 *   // { kind: 'valid', scheme: 'SRS0', original: 'test@otherdomain.com', keyNum: 0, ageDays: 1 }
 */
export function srsReverse(address: string, keyring: Pick<TagKeyring, 'verifying'>, opts: SrsOptions, nowMs: number): SrsReverseResult {
  const at = address.lastIndexOf('@');
  const local = at < 0 ? address : address.slice(0, at);
  if (SRS0_RE.test(local)) {
    const f = splitFields(local.slice(5), 4);
    if (!f) return { kind: 'invalid', scheme: 'SRS0', reason: 'malformed', message: 'malformed SRS0 address' };
    const [h, tt, host, user] = f as [string, string, string, string];
    const key = checkHash(h, [tt, host, user], keyring, opts);
    if (key === 'too-short') return { kind: 'invalid', scheme: 'SRS0', reason: 'hash-too-short', message: SRS_INVALID_WORDS['hash-too-short'] };
    if (!key) return { kind: 'invalid', scheme: 'SRS0', reason: 'bad-hash', message: SRS_INVALID_WORDS['bad-hash'] };
    const age = stampAge(tt, nowMs);
    if (age === null) return { kind: 'invalid', scheme: 'SRS0', reason: 'bad-timestamp', message: SRS_INVALID_WORDS['bad-timestamp'] };
    if (age > opts.maxAgeDays) {
      return age >= DAYS_PER_CYCLE - FUTURE_WINDOW_DAYS
        ? { kind: 'invalid', scheme: 'SRS0', reason: 'future', message: SRS_INVALID_WORDS.future }
        : { kind: 'invalid', scheme: 'SRS0', reason: 'expired', message: SRS_INVALID_WORDS.expired };
    }
    return { kind: 'valid', scheme: 'SRS0', original: `${user}@${host}`, keyNum: key.num, ageDays: age };
  }
  if (SRS1_RE.test(local)) {
    const f = splitFields(local.slice(5), 3);
    if (!f) return { kind: 'invalid', scheme: 'SRS1', reason: 'malformed', message: 'malformed SRS1 address' };
    const [h, h1, opaque] = f as [string, string, string];
    const key = checkHash(h, [h1, opaque], keyring, opts);
    if (key === 'too-short') return { kind: 'invalid', scheme: 'SRS1', reason: 'hash-too-short', message: SRS_INVALID_WORDS['hash-too-short'] };
    if (!key) return { kind: 'invalid', scheme: 'SRS1', reason: 'bad-hash', message: SRS_INVALID_WORDS['bad-hash'] };
    return { kind: 'valid', scheme: 'SRS1', original: `SRS0${opaque}@${h1}`, keyNum: key.num };
  }
  return { kind: 'not-tagged' };
}
