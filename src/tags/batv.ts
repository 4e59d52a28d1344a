/**
 * BATV "Simple Private Signature" (prvs), draft-levine-smtp-batv-01 §4, byte-identical to exim's
 * ${prvs} and checked as the draft says (mod-1000 window), which accepts everything exim accepts in
 * normal use and refuses the stale tags exim's plain integer comparison lets through.
 *
 *   tagged = "prvs=" K DDD SSSSSS "=" local "@" domain
 *   K      = key number, one digit
 *   DDD    = (UTC day + 7) mod 1000, three digits: the day the tag expires
 *   SSSSSS = lowercase hex of the first 3 bytes of HMAC-SHA1(key, K DDD local "@" domain)
 *
 * The hashed address is the sender's bytes exactly (UTF-8, no case folding). Pure: time is a parameter.
 */
import { utcDay } from '../clock.js';
import { hexEqual } from './hmac.js';
import type { TagKey, TagKeyring } from './keyring.js';

/** exim signs every tag for 7 days; the expiry day is written into the tag. */
export const BATV_LIFETIME_DAYS = 7;
/** Default accepted age in days (0 = signed today). 7 makes ages 0..7 valid, as in exim. */
export const BATV_DEFAULT_MAX_AGE_DAYS = 7;

/** Sign days this far ahead of our clock are reported as "future" rather than "expired". */
export const FUTURE_WINDOW_DAYS = 30;

const TAGGED = /^prvs=/i;

export type BatvSignResult =
  | { kind: 'signed'; address: string; keyNum: number; expiryDay: string }
  | { kind: 'already-tagged'; address: string }
  | { kind: 'refused'; reason: 'null-sender' | 'unqualified'; message: string };

export type BatvInvalidReason = 'malformed' | 'unknown-key' | 'bad-signature' | 'expired' | 'future';

/** What each refusal is called, in results and in the proxy's RCPT reply (src/policy/replies.ts). */
export const BATV_INVALID_WORDS: Readonly<Record<BatvInvalidReason, string>> = {
  malformed: 'malformed BATV tag',
  'unknown-key': 'BATV key unknown',
  'bad-signature': 'BATV signature invalid',
  expired: 'BATV signature expired',
  future: 'BATV signature dated in the future',
};

export type BatvVerifyResult =
  | { kind: 'not-tagged' }
  | { kind: 'valid'; original: string; keyNum: number; ageDays: number }
  | { kind: 'invalid'; reason: BatvInvalidReason; message: string; original?: string; keyNum?: number };

/**
 * Splits "prvs=" K DDD SSSSSS "=" local "@" domain without a regular expression (this runs for every
 * tagged recipient): the one BATV tag parser (verify, hasBatvTag, `batv-proxy explain`). Local and domain
 * must be non-empty, the domain being what follows the last "@" (as exim's greedy match has it).
 *
 * @example
 *   parseBatvTag('prvs=5461cd18bc=user@example.com'); // { k: '5', ddd: '461', sig: 'cd18bc', original: 'user@example.com' }
 */
export function parseBatvTag(a: string): { k: string; ddd: string; sig: string; original: string } | null {
  if (a.length < 19 || !TAGGED.test(a) || a.charCodeAt(15) !== 61 /* = */) return null;
  for (let i = 5; i < 9; i++) {
    const c = a.charCodeAt(i);
    if (c < 48 || c > 57) return null;
  }
  for (let i = 9; i < 15; i++) {
    const c = a.charCodeAt(i) | 0x20;
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return null;
  }
  const at = a.lastIndexOf('@');
  if (at <= 16 || at === a.length - 1) return null;
  return { k: a[5]!, ddd: a.slice(6, 9), sig: a.slice(9, 15), original: a.slice(16) };
}

/** Does the address start with a prvs= tag (case-insensitive), valid or not? */
export function hasBatvTag(address: string): boolean {
  return parseBatvTag(address) !== null;
}

let stampDay = NaN;
let stampText = '';

/** DDD for a sign day, exactly as exim writes it (including its "100" for day+7 < 100). */
export function batvExpiryStamp(nowMs: number): string {
  const day = utcDay(nowMs);
  if (day !== stampDay) {
    const s = String(day + BATV_LIFETIME_DAYS);
    stampText = s.length < 3 ? '100' : s.slice(-3);
    stampDay = day;
  }
  return stampText;
}

/** The hash source is K DDD and the address; fed to the MAC as two parts (no joined copy). */
function signature(key: TagKey, keyNum: string, ddd: string, address: string): string {
  return key.hmac.hex(keyNum + ddd, 3, address);
}

/**
 * Signs an envelope sender. An address that already carries a prvs= tag is returned as it is (never
 * tagged twice); the null sender and unqualified addresses are refused, as exim refuses them.
 *
 * @example
 *   batvSign('user@example.com', tagKey(5, utf8('secret')), Date.parse('2026-01-01T12:00:00Z'));
 *   // { kind: 'signed', address: 'prvs=5461cd18bc=user@example.com', keyNum: 5, expiryDay: '461' }
 */
export function batvSign(address: string, key: TagKey, nowMs: number): BatvSignResult {
  if (address === '' || address === '<>') {
    return { kind: 'refused', reason: 'null-sender', message: 'the null sender is never signed' };
  }
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) {
    return { kind: 'refused', reason: 'unqualified', message: `"${address}" is not a qualified address` };
  }
  if (hasBatvTag(address)) return { kind: 'already-tagged', address };
  const k = String(key.num);
  const ddd = batvExpiryStamp(nowMs);
  return { kind: 'signed', address: `prvs=${k}${ddd}${signature(key, k, ddd, address)}=${address}`, keyNum: key.num, expiryDay: ddd };
}

/**
 * Checks a prvs= address: the key its number names, the HMAC (hex case-insensitive, constant time), then
 * its age by the draft's mod-1000 rule. Age = today - (DDD - 7) mod 1000; valid for 0..maxAgeDays.
 * An age in the upper half of the circle means a sign day in the future.
 *
 * @example
 *   batvVerify('prvs=5461cd18bc=user@example.com', ring, Date.parse('2026-01-03T00:00:00Z'));
 *   // { kind: 'valid', original: 'user@example.com', keyNum: 5, ageDays: 2 }
 */
export function batvVerify(
  address: string,
  keyring: Pick<TagKeyring, 'byNum'>,
  nowMs: number,
  maxAgeDays: number = BATV_DEFAULT_MAX_AGE_DAYS,
): BatvVerifyResult {
  if (!TAGGED.test(address)) return { kind: 'not-tagged' };
  const parsed = parseBatvTag(address);
  if (!parsed) return { kind: 'invalid', reason: 'malformed', message: BATV_INVALID_WORDS.malformed };
  const { k, ddd, sig, original } = parsed;
  const keyNum = Number(k);
  const key = keyring.byNum(keyNum);
  if (!key) {
    return { kind: 'invalid', reason: 'unknown-key', message: `BATV key ${keyNum} is unknown`, original, keyNum };
  }
  if (!hexEqual(sig, signature(key, k, ddd, original))) {
    return { kind: 'invalid', reason: 'bad-signature', message: BATV_INVALID_WORDS['bad-signature'], original, keyNum };
  }
  // Today's stamp as exim computes it when checking (day numbers under three digits read as 100).
  const today = utcDay(nowMs);
  const ageDays = ((((today < 100 ? 100 : today) - Number(ddd) + BATV_LIFETIME_DAYS) % 1000) + 1000) % 1000;
  if (ageDays <= maxAgeDays) return { kind: 'valid', original, keyNum, ageDays };
  // DDD only has three digits, so a sign day "in the future" and one ~1000 days ago look alike: only a
  // sign day up to FUTURE_WINDOW_DAYS ahead (a clock running ahead) is called future, the rest expired.
  if (ageDays >= 1000 - FUTURE_WINDOW_DAYS) {
    return { kind: 'invalid', reason: 'future', message: BATV_INVALID_WORDS.future, original, keyNum };
  }
  return { kind: 'invalid', reason: 'expired', message: BATV_INVALID_WORDS.expired, original, keyNum };
}
