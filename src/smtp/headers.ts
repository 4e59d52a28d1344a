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

/**
 * Where the header block ends in `buf` (index just past the empty line), or -1. `atStart` says `buf`
 * begins the message (where a first empty line means there is no header at all).
 */
function headerEnd(buf: Buffer, atStart: boolean): number {
  if (atStart && buf.length >= 2 && buf[0] === 0x0d && buf[1] === 0x0a) return 0;
  if (atStart && buf.length >= 1 && buf[0] === 0x0a) return 0;
  const crlf = buf.indexOf('\r\n\r\n');
  const lf = buf.indexOf('\n\n');
  if (crlf < 0 && lf < 0) return -1;
  if (crlf >= 0 && (lf < 0 || crlf + 2 <= lf)) return crlf + 4;
  return lf + 2;
}

/**
 * A Transform that writes `prepend` first, then the message with the `strip` fields removed from its
 * header block. Fails with a 552 SmtpReply when the header block exceeds `maxHeaderBytes`. Each chunk
 * is searched once (with the last 3 bytes before it), and the block is joined once: linear work.
 */
export class HeaderRewriter extends Transform {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private tail = Buffer.alloc(0);
  private inHeader: boolean;

  constructor(
    private readonly prepend: Buffer,
    private readonly strip: ReadonlySet<string>,
    private readonly maxHeaderBytes = MAX_HEADER_BYTES,
  ) {
    super();
    this.inHeader = strip.size > 0;
    if (!this.inHeader && prepend.length) this.push(prepend);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (!this.inHeader) return cb(null, chunk);
    // Until two bytes have arrived the message may still begin with an empty line (no header at all),
    // and that first CRLF may itself arrive split across chunks.
    const atStart = this.pendingBytes < 2;
    const probe = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    const found = headerEnd(probe, atStart);
    const before = this.pendingBytes;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (found < 0) {
      if (this.pendingBytes > this.maxHeaderBytes) return cb(transportReplies.headerTooLarge());
      const keep = Math.min(3, this.pendingBytes);
      this.tail = Buffer.from(probe.subarray(probe.length - keep));
      return cb();
    }
    // `found` is counted from the start of probe, which begins tail.length bytes before this chunk.
    const end = before - this.tail.length + found;
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
