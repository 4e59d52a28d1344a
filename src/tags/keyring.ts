/**
 * The keys the tag code works with, already prepared for HMAC. Built by src/keys.ts from the JWK Set on
 * disk (or from --secret on the command line); the tag code never reads files.
 *
 * One keyring serves both schemes: the signing key signs BATV and SRS; every key verifies (SRS tries them
 * all, BATV picks the one whose number is in the tag). Pure: no I/O.
 */
import { HmacSha1Key, MAX_KEY_BYTES } from './hmac.js';

export interface TagKey {
  /** BATV key number, 0-9; also the JWK kid. */
  readonly num: number;
  readonly secret: Uint8Array;
  readonly hmac: HmacSha1Key;
}

export interface TagKeyring {
  /** The key that signs now. */
  readonly signing: TagKey;
  /** Every key that verifies, signing key first. */
  readonly verifying: readonly TagKey[];
  /** The verifying key with this BATV key number, if any. */
  byNum(num: number): TagKey | undefined;
}

/** Prepares one secret. @throws RangeError for a key number outside 0-9 or a secret over 64 bytes. */
export function tagKey(num: number, secret: Uint8Array): TagKey {
  if (!Number.isInteger(num) || num < 0 || num > 9) {
    throw new RangeError(`Cannot use key number ${num}: BATV key numbers are one digit, 0-9`);
  }
  if (secret.length > MAX_KEY_BYTES) {
    throw new RangeError(`Cannot use key ${num}: ${secret.length} bytes is over the ${MAX_KEY_BYTES}-byte limit`);
  }
  return { num, secret, hmac: new HmacSha1Key(secret) };
}

/**
 * A keyring from keys in order: the first signs, all verify. Two keys may not share a number.
 *
 * @example
 *   const ring = makeKeyring([tagKey(1, utf8('new')), tagKey(0, utf8('old'))]);
 *   ring.signing.num; // 1
 */
export function makeKeyring(keys: readonly TagKey[]): TagKeyring {
  const first = keys[0];
  if (!first) throw new RangeError('Cannot build a keyring with no keys');
  const byNum = new Map<number, TagKey>();
  for (const k of keys) {
    if (byNum.has(k.num)) throw new RangeError(`Cannot build a keyring: key number ${k.num} appears twice`);
    byNum.set(k.num, k);
  }
  return { signing: first, verifying: keys, byNum: (n) => byNum.get(n) };
}
