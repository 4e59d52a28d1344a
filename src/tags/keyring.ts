/**
 * The keys the tag code works with, already prepared for HMAC. Built by src/keys.ts from the JWK Set on
 * disk (or from --secret on the command line); the tag code never reads files.
 *
 * One keyring serves both schemes: the signing key signs BATV and SRS; every key verifies (SRS tries them
 * all, BATV picks the one whose number is in the tag). A key may carry an activation instant: it verifies
 * at once but signs only from then on, so replicas that received the file at different moments all switch
 * at the same instant. Which key signs therefore depends on the time, which callers pass (`signingAt`).
 * Pure: no I/O, no clock.
 */
import { HmacSha1Key, MAX_KEY_BYTES } from './hmac.js';

export interface TagKey {
  /** BATV key number, 0-9; also the JWK kid. */
  readonly num: number;
  readonly secret: Uint8Array;
  readonly hmac: HmacSha1Key;
  /** Epoch ms from which this key signs (a scheduled key); absent for the key that signs already. */
  readonly activateAtMs?: number;
}

export interface TagKeyring {
  /** The key that signs before any scheduled activation (the first key). */
  readonly signing: TagKey;
  /** The key that signs at `nowMs`: the scheduled key with the latest activation <= nowMs, else `signing`. */
  signingAt(nowMs: number): TagKey;
  /** Every key that verifies, signing key first. */
  readonly verifying: readonly TagKey[];
  /** The verifying key with this BATV key number, if any. */
  byNum(num: number): TagKey | undefined;
}

/** Prepares one secret. @throws RangeError for a key number outside 0-9 or a secret over 64 bytes. */
export function tagKey(num: number, secret: Uint8Array, activateAtMs?: number): TagKey {
  if (!Number.isInteger(num) || num < 0 || num > 9) {
    throw new RangeError(`Cannot use key number ${num}: BATV key numbers are one digit, 0-9`);
  }
  if (secret.length > MAX_KEY_BYTES) {
    throw new RangeError(`Cannot use key ${num}: ${secret.length} bytes is over the ${MAX_KEY_BYTES}-byte limit`);
  }
  if (activateAtMs !== undefined && !Number.isFinite(activateAtMs)) throw new RangeError(`Cannot use key ${num}: its activation time is not a time`);
  return { num, secret, hmac: new HmacSha1Key(secret), ...(activateAtMs !== undefined ? { activateAtMs } : {}) };
}

/**
 * A keyring from keys in order: the first signs (until a scheduled key's activation), all verify. Two
 * keys may not share a number.
 *
 * @example
 *   const ring = makeKeyring([tagKey(1, utf8('new')), tagKey(0, utf8('old')), tagKey(2, utf8('next'), T)]);
 *   ring.signing.num; // 1
 *   ring.signingAt(T - 1).num; // 1
 *   ring.signingAt(T).num; // 2
 */
export function makeKeyring(keys: readonly TagKey[]): TagKeyring {
  const first = keys[0];
  if (!first) throw new RangeError('Cannot build a keyring with no keys');
  const byNum = new Map<number, TagKey>();
  for (const k of keys) {
    if (byNum.has(k.num)) throw new RangeError(`Cannot build a keyring: key number ${k.num} appears twice`);
    byNum.set(k.num, k);
  }
  // Scheduled keys, latest activation first; the first one due at `now` signs.
  const scheduled = keys.filter((k) => k !== first && k.activateAtMs !== undefined).sort((a, b) => b.activateAtMs! - a.activateAtMs!);
  const signingAt = (nowMs: number): TagKey => {
    for (const k of scheduled) if (k.activateAtMs! <= nowMs) return k;
    return first;
  };
  return { signing: first, signingAt, verifying: keys, byNum: (n) => byNum.get(n) };
}
