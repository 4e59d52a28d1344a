/**
 * HMAC-SHA1 (RFC 2104 over FIPS 180-4 SHA-1) with the key's inner and outer pad states computed once.
 *
 * Why not node:crypto's createHmac: every call allocates an Hmac object and imports the key, which caps
 * it near 250,000 MACs per second on one core. Tags are short (one or two SHA-1 blocks), so a keyed
 * object that starts from the precomputed pad states does two or three compressions per MAC and no
 * allocation beyond the message bytes. Tests compare it with node:crypto on random keys and messages.
 *
 * Pure: no I/O, no clock.
 */

const BLOCK_BYTES = 64;
/** exim refuses longer prvs keys (it never hashes a long key first); so do we, for BATV and SRS alike. */
export const MAX_KEY_BYTES = 64;

const encoder = new TextEncoder();

/** Bytes of a string as UTF-8 (tags hash the UTF-8 bytes of addresses, never a normalised form). */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** A SHA-1 compression over one 64-byte block at `off` of `block`, updating the 5-word state `h`. */
function compress(h: Int32Array, block: Uint8Array, off: number, w: Int32Array): void {
  for (let i = 0; i < 16; i++) {
    const j = off + i * 4;
    w[i] = (block[j]! << 24) | (block[j + 1]! << 16) | (block[j + 2]! << 8) | block[j + 3]!;
  }
  for (let i = 16; i < 80; i++) {
    const x = w[i - 3]! ^ w[i - 8]! ^ w[i - 14]! ^ w[i - 16]!;
    w[i] = (x << 1) | (x >>> 31);
  }
  let a = h[0]!, b = h[1]!, c = h[2]!, d = h[3]!, e = h[4]!;
  for (let i = 0; i < 80; i++) {
    let f: number, k: number;
    if (i < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
    else if (i < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
    else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
    else { f = b ^ c ^ d; k = 0xca62c1d6; }
    const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]!) | 0;
    e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
  }
  h[0] = (h[0]! + a) | 0; h[1] = (h[1]! + b) | 0; h[2] = (h[2]! + c) | 0;
  h[3] = (h[3]! + d) | 0; h[4] = (h[4]! + e) | 0;
}

const SHA1_IV = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0 | 0];

/**
 * A key ready for HMAC-SHA1. Construct once per secret; `mac()` is then cheap.
 *
 * @example
 *   const k = new HmacSha1Key(utf8('secret'));
 *   k.hex(utf8('5461user@example.com'), 3); // 'cd18bc'
 */
export class HmacSha1Key {
  private readonly inner = new Int32Array(5);
  private readonly outer = new Int32Array(5);
  // Scratch space, reused across calls (single-threaded; no call re-enters another).
  private readonly h = new Int32Array(5);
  private readonly w = new Int32Array(80);
  private readonly buf = new Uint8Array(BLOCK_BYTES * 2);

  /** @throws RangeError when the key is longer than 64 bytes (exim refuses such keys). */
  constructor(key: Uint8Array) {
    if (key.length > MAX_KEY_BYTES) {
      throw new RangeError(`Cannot use key: ${key.length} bytes is over the ${MAX_KEY_BYTES}-byte limit`);
    }
    const pad = new Uint8Array(BLOCK_BYTES);
    for (const [state, byte] of [[this.inner, 0x36], [this.outer, 0x5c]] as const) {
      pad.fill(byte);
      for (let i = 0; i < key.length; i++) pad[i] = key[i]! ^ byte;
      state.set(SHA1_IV);
      compress(state, pad, 0, this.w);
    }
  }

  /** Runs SHA-1 from `start` state over `msg`, as if `prefixBlocks` 64-byte blocks came before it. */
  private finish(start: Int32Array, msg: Uint8Array, prefixBlocks: number): Int32Array {
    const h = this.h, w = this.w, buf = this.buf;
    h.set(start);
    let off = 0;
    for (; off + BLOCK_BYTES <= msg.length; off += BLOCK_BYTES) compress(h, msg, off, w);
    const rest = msg.length - off;
    buf.fill(0);
    buf.set(msg.subarray(off), 0);
    buf[rest] = 0x80;
    const blocks = rest + 9 > BLOCK_BYTES ? 2 : 1;
    const bits = (prefixBlocks * BLOCK_BYTES + msg.length) * 8;
    const end = blocks * BLOCK_BYTES;
    // Messages here are far below 2^32 bits; the high length word stays 0.
    buf[end - 4] = bits >>> 24; buf[end - 3] = bits >>> 16; buf[end - 2] = bits >>> 8; buf[end - 1] = bits;
    compress(h, buf, 0, w);
    if (blocks === 2) compress(h, buf, BLOCK_BYTES, w);
    return h;
  }

  /** The 20-byte HMAC-SHA1 of `msg`. */
  mac(msg: Uint8Array): Uint8Array {
    const innerDigest = new Uint8Array(20);
    writeWords(this.finish(this.inner, msg, 1), innerDigest);
    const out = new Uint8Array(20);
    writeWords(this.finish(this.outer, innerDigest, 1), out);
    return out;
  }

  /** Lowercase hex of the first `bytes` bytes of the MAC. */
  hex(msg: Uint8Array, bytes: number): string {
    const d = this.mac(msg);
    let s = '';
    for (let i = 0; i < bytes; i++) s += HEX[d[i]!]!;
    return s;
  }

  /** The first `chars` characters of the standard base64 (RFC 4648 §4, unpadded) of the MAC. */
  base64(msg: Uint8Array, chars: number): string {
    const d = this.mac(msg);
    let s = '';
    for (let i = 0; i < chars; i++) {
      const bit = i * 6, byte = bit >> 3, shift = bit & 7;
      const two = (d[byte]! << 8) | (byte + 1 < d.length ? d[byte + 1]! : 0);
      s += B64[(two >> (10 - shift)) & 63];
    }
    return s;
  }
}

function writeWords(h: Int32Array, out: Uint8Array): void {
  for (let i = 0; i < 5; i++) {
    const v = h[i]!;
    out[i * 4] = v >>> 24; out[i * 4 + 1] = v >>> 16; out[i * 4 + 2] = v >>> 8; out[i * 4 + 3] = v;
  }
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
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

/** ASCII A-Z → a-z, everything else unchanged (the fold used by every SRS and BATV comparison). */
export function foldAsciiCase(c: number): number {
  return c >= 65 && c <= 90 ? c + 32 : c;
}
