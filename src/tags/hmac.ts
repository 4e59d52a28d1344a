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

/**
 * One SHA-1 compression (FIPS 180-4 §6.1.2) of the 16 big-endian words already in w[0..15], updating
 * state `h`. The four round groups are separate loops so the hot loop has no per-round branch.
 */
function compress(h: Int32Array, w: Int32Array): void {
  for (let i = 16; i < 80; i++) {
    const x = w[i - 3]! ^ w[i - 8]! ^ w[i - 14]! ^ w[i - 16]!;
    w[i] = (x << 1) | (x >>> 31);
  }
  let a = h[0]!, b = h[1]!, c = h[2]!, d = h[3]!, e = h[4]!, t = 0, i = 0;
  for (; i < 20; i++) {
    t = (((a << 5) | (a >>> 27)) + ((b & c) | (~b & d)) + e + 0x5a827999 + w[i]!) | 0;
    e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
  }
  for (; i < 40; i++) {
    t = (((a << 5) | (a >>> 27)) + (b ^ c ^ d) + e + 0x6ed9eba1 + w[i]!) | 0;
    e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
  }
  for (; i < 60; i++) {
    t = (((a << 5) | (a >>> 27)) + ((b & c) | (b & d) | (c & d)) + e + 0x8f1bbcdc + w[i]!) | 0;
    e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
  }
  for (; i < 80; i++) {
    t = (((a << 5) | (a >>> 27)) + (b ^ c ^ d) + e + 0xca62c1d6 + w[i]!) | 0;
    e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
  }
  h[0] = (h[0]! + a) | 0; h[1] = (h[1]! + b) | 0; h[2] = (h[2]! + c) | 0;
  h[3] = (h[3]! + d) | 0; h[4] = (h[4]! + e) | 0;
}

/** Loads 16 big-endian words from `bytes` at `off` into w[0..15]. */
function load(w: Int32Array, bytes: Uint8Array, off: number): void {
  for (let i = 0; i < 16; i++) {
    const j = off + i * 4;
    w[i] = (bytes[j]! << 24) | (bytes[j + 1]! << 16) | (bytes[j + 2]! << 8) | bytes[j + 3]!;
  }
}

const SHA1_IV = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0 | 0];

// Scratch space shared by every key: JavaScript runs one MAC at a time, and no MAC calls another.
const W = new Int32Array(80);
const H = new Int32Array(5);
const OUT = new Int32Array(5);
let scratch = new Uint8Array(256);

/** Writes `s` as UTF-8 into the scratch buffer (grown as needed); returns the byte length. */
function writeUtf8(s: string): number {
  const n = s.length;
  if (scratch.length < n * 3 + BLOCK_BYTES) scratch = new Uint8Array(n * 3 + BLOCK_BYTES * 2);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return encoder.encodeInto(s, scratch).written;
    scratch[i] = c;
  }
  return n;
}

/**
 * A key ready for HMAC-SHA1. Construct once per secret; each MAC then costs two or three SHA-1
 * compressions (plus one per further 64 bytes of message) and allocates nothing but its result.
 *
 * @example
 *   const k = new HmacSha1Key(utf8('secret'));
 *   k.hex('5461user@example.com', 3); // 'cd18bc'
 */
export class HmacSha1Key {
  private readonly inner = new Int32Array(5);
  private readonly outer = new Int32Array(5);

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
      load(W, pad, 0);
      compress(state, W);
    }
  }

  /** Computes the MAC of the first `len` scratch bytes into OUT. */
  private run(len: number): void {
    const buf = scratch;
    // Inner hash: the ipad block is already absorbed; absorb the message and pad it.
    H.set(this.inner);
    let off = 0;
    for (; off + BLOCK_BYTES <= len; off += BLOCK_BYTES) { load(W, buf, off); compress(H, W); }
    const rest = len - off;
    // Final block(s): message tail, 0x80, zeros, 64-bit bit length of (64 + len) bytes.
    W.fill(0, 0, 16);
    for (let i = 0; i < rest; i++) W[i >> 2] = W[i >> 2]! | (buf[off + i]! << (24 - (i & 3) * 8));
    W[rest >> 2] = W[rest >> 2]! | (0x80 << (24 - (rest & 3) * 8));
    const bits = (BLOCK_BYTES + len) * 8;
    if (rest >= 56) { compress(H, W); W.fill(0, 0, 16); }
    W[14] = Math.floor(bits / 0x100000000) | 0;
    W[15] = bits | 0;
    compress(H, W);
    this.outerFromH();
  }

  /** The 20-byte HMAC-SHA1 of `msg` (bytes, or a string taken as UTF-8). */
  mac(msg: Uint8Array | string): Uint8Array {
    this.runOn(msg);
    const out = new Uint8Array(20);
    for (let i = 0; i < 5; i++) {
      const v = OUT[i]!;
      out[i * 4] = v >>> 24; out[i * 4 + 1] = v >>> 16; out[i * 4 + 2] = v >>> 8; out[i * 4 + 3] = v;
    }
    return out;
  }

  /**
   * The common case, an ASCII string of at most 55 bytes (every BATV hash source of a normal address):
   * one padded block, loaded straight into the schedule words, no byte buffer.
   */
  private runShortAscii(s: string, s2 = ''): boolean {
    const n1 = s.length;
    const n = n1 + s2.length;
    if (n > 55) return false;
    for (let i = 0; i < 16; i++) W[i] = 0;
    for (let i = 0; i < n1; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) return false;
      W[i >> 2] = W[i >> 2]! | (c << (24 - (i & 3) * 8));
    }
    for (let i = n1; i < n; i++) {
      const c = s2.charCodeAt(i - n1);
      if (c >= 0x80) return false;
      W[i >> 2] = W[i >> 2]! | (c << (24 - (i & 3) * 8));
    }
    W[n >> 2] = W[n >> 2]! | (0x80 << (24 - (n & 3) * 8));
    W[15] = (BLOCK_BYTES + n) * 8;
    const inner = this.inner;
    H[0] = inner[0]!; H[1] = inner[1]!; H[2] = inner[2]!; H[3] = inner[3]!; H[4] = inner[4]!;
    compress(H, W);
    this.outerFromH();
    return true;
  }

  /** Outer hash over the 20-byte inner digest in H: one block, words copied straight across. */
  private outerFromH(): void {
    W[0] = H[0]!; W[1] = H[1]!; W[2] = H[2]!; W[3] = H[3]!; W[4] = H[4]!;
    W[5] = 0x80000000 | 0;
    for (let i = 6; i < 15; i++) W[i] = 0;
    W[15] = (BLOCK_BYTES + 20) * 8;
    const outer = this.outer;
    OUT[0] = outer[0]!; OUT[1] = outer[1]!; OUT[2] = outer[2]!; OUT[3] = outer[3]!; OUT[4] = outer[4]!;
    compress(OUT, W);
  }

  private runOn(msg: Uint8Array | string): void {
    if (typeof msg === 'string') {
      if (this.runShortAscii(msg)) return;
      return this.run(writeUtf8(msg));
    }
    if (scratch.length < msg.length + BLOCK_BYTES) scratch = new Uint8Array(msg.length + BLOCK_BYTES * 2);
    scratch.set(msg);
    this.run(msg.length);
  }

  /** Lowercase hex of the first `bytes` (0-20) bytes of the MAC of `msg` (then `more`, if given). */
  hex(msg: Uint8Array | string, bytes: number, more?: string): string {
    if (!(bytes >= 0 && bytes <= 20)) throw new RangeError(`Cannot take ${bytes} bytes of a 20-byte MAC`);
    if (more === undefined) this.runOn(msg);
    else if (typeof msg !== 'string' || !this.runShortAscii(msg, more)) this.runOn(typeof msg === 'string' ? msg + more : msg);
    let s = '';
    for (let i = 0; i < bytes; i++) s += HEX[(OUT[i >> 2]! >>> (24 - (i & 3) * 8)) & 0xff]!;
    return s;
  }

  /** The first `chars` (1-27) characters of the standard base64 (RFC 4648 §4, unpadded) of the MAC. */
  base64(msg: Uint8Array | string, chars: number): string {
    if (!(chars >= 0 && chars <= 27)) throw new RangeError(`Cannot take ${chars} base64 characters of a 20-byte MAC`);
    this.runOn(msg);
    let s = '';
    for (let i = 0; i < chars; i++) {
      const bit = i * 6;
      const byte = bit >> 3;
      const b0 = (OUT[byte >> 2]! >>> (24 - (byte & 3) * 8)) & 0xff;
      const b1 = byte + 1 < 20 ? (OUT[(byte + 1) >> 2]! >>> (24 - ((byte + 1) & 3) * 8)) & 0xff : 0;
      s += B64[(((b0 << 8) | b1) >> (10 - (bit & 7))) & 63];
    }
    return s;
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
