/**
 * What the proxy does to a message: prepend its own header lines (one Received:, and inbound its verdict)
 * and, when asked, remove header fields of given names that arrived from outside (so nobody can forge a
 * verdict). Everything else passes byte for byte. Streaming: only the header block is held, up to a limit.
 *
 *   message = header-block ( CRLF body )?          header-block ends at the first empty line
 *   field   = name ":" value *( CRLF WSP continuation )
 */
import { Transform, type TransformCallback } from 'node:stream';
import { transportReplies } from '../reply.js';
import { LineEndNormaliser } from './dotstuff.js';

export const MAX_HEADER_BYTES = 1024 * 1024;

/** RFC 5322 date-time in UTC, e.g. "Sun, 22 Nov 2026 19:50:00 +0000". */
export function rfc5322Date(ms: number): string {
  const d = new Date(ms);
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getUTCDay()];
  const mon = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getUTCMonth()];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${day}, ${d.getUTCDate()} ${mon} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

export interface ReceivedInfo {
  readonly helo: string;
  readonly clientHostname?: string;
  readonly clientIp: string;
  readonly by: string;
  /** ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTPS... (RFC 3848, RFC 6531) */
  readonly protocol: string;
  readonly id: string;
  /** Named only when the message has exactly one recipient (as Postfix does). */
  readonly recipient?: string;
  readonly nowMs: number;
}

/** One Received: field, folded, ending in CRLF. */
export function receivedHeader(r: ReceivedInfo): string {
  const clean = (s: string) => s.replace(/[\x00-\x20()\\\x7f]+/g, '_').slice(0, 255) || 'unknown';
  const from = `from ${clean(r.helo)} (${r.clientHostname ? `${clean(r.clientHostname)} ` : ''}[${r.clientIp}])`;
  const forPart = r.recipient !== undefined ? `\r\n\tfor <${r.recipient.replace(/[\x00-\x1f<>]/g, '')}>` : '';
  return `Received: ${from}\r\n\tby ${clean(r.by)} (batv-proxy) with ${r.protocol} id ${r.id}${forPart};\r\n\t${rfc5322Date(r.nowMs)}\r\n`;
}

/** The transmission type for Received: (RFC 3848 / RFC 6531). */
export function protocolName(o: { secure: boolean; authenticated: boolean; utf8: boolean }): string {
  return `${o.utf8 ? 'UTF8SMTP' : 'ESMTP'}${o.secure ? 'S' : ''}${o.authenticated ? 'A' : ''}`;
}

/**
 * Removes fields named in `strip` (lowercase names) from a complete header block. Returns the block
 * unchanged (same Buffer) when nothing matched.
 */
export function stripFields(block: Buffer, strip: ReadonlySet<string>): Buffer {
  const text = block.toString('latin1');
  const out: string[] = [];
  let dropping = false;
  let changed = false;
  let pos = 0;
  while (pos < text.length) {
    const nl = text.indexOf('\n', pos);
    const end = nl < 0 ? text.length : nl + 1;
    const line = text.slice(pos, end);
    pos = end;
    const continuation = line.startsWith(' ') || line.startsWith('\t');
    if (!continuation) {
      const colon = line.indexOf(':');
      dropping = colon > 0 && strip.has(line.slice(0, colon).trim().toLowerCase());
    }
    if (dropping) changed = true;
    else out.push(line);
  }
  return changed ? Buffer.from(out.join(''), 'latin1') : block;
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * Where a header block ends: the index just past its first empty line, or -1. An empty line is a line
 * start (the message start when `atStart`, else just after an LF) followed by LF or CRLF, so "CRLF CRLF",
 * "LF LF", "LF CRLF" and "CRLF LF" all end it, as lenient receivers read them. Positions from `from` to
 * `len` are looked at (position `from` needs the byte before it in `buf` unless `atStart` and from is 0);
 * when nothing is found, scan again from `len - 1` once more bytes are there (a CR may wait for its LF).
 * The one header-block parser: the rewriter here and the bounce classifier (src/inbound/classify.ts).
 *
 * @example
 *   headerBlockEnd(Buffer.from('A: 1\n\r\nbody'), 0, 11, true); // 7
 */
export function headerBlockEnd(buf: Uint8Array, from: number, len: number, atStart: boolean): number {
  for (let i = from; i < len; i++) {
    if (i === 0 ? !atStart : buf[i - 1] !== LF) continue;
    if (buf[i] === LF) return i + 1;
    if (buf[i] === CR && i + 1 < len && buf[i + 1] === LF) return i + 2;
  }
  return -1;
}

/**
 * A Transform that writes `prepend` first, then the message with the `strip` fields removed from its
 * header block. Fails with a 552 SmtpReply when the header block exceeds `maxHeaderBytes`. The header
 * block is read, and sent on, with its line ends normalised as the next-hop encoder would (so what is
 * stripped is what the next hop would see as a field). Each chunk is searched once (with the 2 bytes
 * before it), and the block is joined once: linear work.
 */
export class HeaderRewriter extends Transform {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private tail = Buffer.alloc(0);
  private inHeader: boolean;
  /** The header block is read as the next hop will get it (docs/smuggling.md): see LineEndNormaliser. */
  private readonly lineEnds = new LineEndNormaliser();

  constructor(
    private readonly prepend: Buffer,
    private readonly strip: ReadonlySet<string>,
    private readonly maxHeaderBytes = MAX_HEADER_BYTES,
  ) {
    super();
    this.inHeader = strip.size > 0;
    if (!this.inHeader && prepend.length) this.push(prepend);
  }

  override _transform(raw: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    // After the header block, bytes pass as they came (the encoder normalises them), except the LF of a
    // CR LF split across the end of the header block, which the normaliser already sent.
    if (!this.inHeader) return cb(null, this.lineEnds.pending ? this.lineEnds.push(raw) : raw);
    const chunk = this.lineEnds.push(raw);
    if (chunk.length === 0) return cb();
    // probe = the last (up to) 2 bytes before this chunk, then the chunk. When it begins the message, every
    // position is looked at (an empty first line means no header at all); else the first byte of probe was
    // looked at last time, with its successor, and is there only as the predecessor of the second.
    const atStart = this.pendingBytes === this.tail.length;
    const probe = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    const found = headerBlockEnd(probe, atStart ? 0 : 1, probe.length, atStart);
    const before = this.pendingBytes;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (found < 0) {
      if (this.pendingBytes > this.maxHeaderBytes) return cb(transportReplies.headerTooLarge());
      const keep = Math.min(2, this.pendingBytes);
      this.tail = Buffer.from(probe.subarray(probe.length - keep));
      return cb();
    }
    // `found` is counted from the start of probe, which begins tail.length bytes before this chunk.
    const end = before - this.tail.length + found;
    // The same limit whether the empty line came in this chunk or a later one (however TCP cut it).
    if (end > this.maxHeaderBytes) return cb(transportReplies.headerTooLarge());
    const all = Buffer.concat(this.pending, this.pendingBytes);
    this.emitHeader(all.subarray(0, end));
    this.inHeader = false;
    this.pending = [];
    this.pendingBytes = 0;
    this.tail = Buffer.alloc(0);
    cb(null, all.length > end ? all.subarray(end) : undefined);
  }

  override _flush(cb: TransformCallback): void {
    if (this.inHeader) {
      // Headers only (no empty line): the whole message is the header block.
      this.emitHeader(Buffer.concat(this.pending, this.pendingBytes));
      this.inHeader = false;
    }
    cb();
  }

  private emitHeader(block: Buffer): void {
    if (this.prepend.length) this.push(this.prepend);
    this.push(stripFields(block, this.strip));
  }
}
