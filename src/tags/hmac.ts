/**
 * HMAC-SHA1 (RFC 2104) through node:crypto, and the constant-time comparisons the tag checks use.
 *
 * node:crypto, not a hand-written SHA-1: a hand-written one with precomputed pad states was 2.4x faster
 * per MAC in isolation, but a MAC is computed once per message (sign) or per tagged recipient (verify),
 * and end to end the difference was within the benchmark's noise (bench/README.md, "HMAC").
 *
 * Pure: no I/O, no clock.
 */
import { createHmac } from 'node:crypto';

/** exim refuses longer prvs keys (it never hashes a long key first); so do we, for BATV and SRS alike. */
export const MAX_KEY_BYTES = 64;

const encoder = new TextEncoder();

/** Bytes of a string as UTF-8 (tags hash the UTF-8 bytes of addresses, never a normalised form). */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/**
 * A key ready for HMAC-SHA1. Construct once per secret (the length check runs once).
 *
 * @example
 *   const k = new HmacSha1Key(utf8('secret'));
 *   k.hex('5461user@example.com', 3); // 'cd18bc'
 */
export class HmacSha1Key {
  private readonly key: Buffer;

  /** @throws RangeError when the key is longer than 64 bytes (exim refuses such keys). */
  constructor(key: Uint8Array) {
    if (key.length > MAX_KEY_BYTES) {
      throw new RangeError(`Cannot use key: ${key.length} bytes is over the ${MAX_KEY_BYTES}-byte limit`);
    }
    this.key = Buffer.from(key);
  }

  private digest(msg: Uint8Array | string, more?: string): Buffer {
    const h = createHmac('sha1', this.key).update(msg);
    if (more !== undefined) h.update(more);
    return h.digest();
  }

  /** The 20-byte HMAC-SHA1 of `msg` (bytes, or a string taken as UTF-8). */
  mac(msg: Uint8Array | string): Uint8Array {
    return new Uint8Array(this.digest(msg));
  }

  /** Lowercase hex of the first `bytes` (0-20) bytes of the MAC of `msg` (then `more`, if given). */
  hex(msg: Uint8Array | string, bytes: number, more?: string): string {
    if (!(bytes >= 0 && bytes <= 20)) throw new RangeError(`Cannot take ${bytes} bytes of a 20-byte MAC`);
    return this.digest(msg, more).toString('hex', 0, bytes);
  }

  /** The first `chars` (0-27) characters of the standard base64 (RFC 4648 §4, unpadded) of the MAC. */
  base64(msg: Uint8Array | string, chars: number): string {
    if (!(chars >= 0 && chars <= 27)) throw new RangeError(`Cannot take ${chars} base64 characters of a 20-byte MAC`);
    return this.digest(msg).toString('base64').slice(0, chars);
  }
}

export const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * Compares two ASCII strings in time that depends only on their lengths, after mapping each character
 * through `fold` (e.g. lowercase, or base64url to base64). Never returns early on the first difference.
 */
export function constantTimeEqual(a: string, b: string, fold: (code: number) => number = (c) => c): boolean {
  const n = Math.max(a.length, b.length);
  let diff = a.length ^ b.length;
  for (let i = 0; i < n; i++) {
    const x = i < a.length ? fold(a.charCodeAt(i)) : 0;
    const y = i < b.length ? fold(b.charCodeAt(i)) : 0;
    diff |= x ^ y;
  }
  return diff === 0;
}

/** Constant-time comparison of two hex strings, ignoring case (both lengths are public). */
export function hexEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a.charCodeAt(i) | 0x20) ^ (b.charCodeAt(i) | 0x20);
  return diff === 0;
}

/** ASCII A-Z → a-z, everything else unchanged (the fold used by every SRS and BATV comparison). */
export function foldAsciiCase(c: number): number {
  return c >= 65 && c <= 90 ? c + 32 : c;
}
