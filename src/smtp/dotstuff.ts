/**
 * SMTP DATA transparency (RFC 5321 §4.5.2), sending side: the exact inverse of what smtp-server's
 * SMTPStream does to a message on the receiving side, so that the bytes a listener hands the proxy reach
 * the next hop unchanged.
 *
 * What smtp-server 3.21 yields from its onData stream (lib/smtp-stream.js, `_feedDataStream`):
 *   - every byte between the 354 reply and the terminating CR LF "." CR LF, without normalising anything:
 *     bare LF, bare CR, NUL and 8-bit bytes pass as they are;
 *   - the CR LF in front of the terminating "." is kept, so a message ends with CR LF (or is empty);
 *   - only CR LF "." CR LF ends the data ("\n.\n", "\r\n.\n" and "\n.\r\n" are content);
 *   - a "." at the start of the data or right after any LF (CR LF or bare LF) is removed when another
 *     "." follows it; a lone leading dot (".x") is kept, not removed as RFC 5321 would;
 *   - quirk: its scan starts at offset 2, so data that begins with a bare LF and ".." keeps both dots.
 *
 * So the sender doubles every "." at the start of the data or after any LF. Stuffing after a bare LF as
 * well is what keeps "\n.\r\n" from reading as end-of-data at a next hop that ends lines at a bare LF
 * (SMTP smuggling). The one message this does not carry byte-identically to an smtp-server next hop is
 * one whose first byte is a bare LF followed by "."; it gains a dot (the receiver's quirk above).
 */
import type { Readable, Writable } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const END_AFTER_CRLF = Buffer.from('.\r\n');
const END_WITH_CRLF = Buffer.from('\r\n.\r\n');

/**
 * Dot-stuffs a message body chunk by chunk, carrying the line-start state across chunk boundaries
 * (a "." opening a chunk after one that ended in LF, a CR LF split between chunks). Scans for LF with
 * `indexOf`; a chunk without a line-leading dot is returned as it is, without copying, and one with dots
 * is copied once into a buffer of exactly the stuffed size.
 *
 * @example
 *   const s = new DotStuffer();
 *   socket.write(s.push(Buffer.from('a\r\n.')));   // "a\r\n.."
 *   socket.write(s.push(Buffer.from('b\r\n')));    // "b\r\n"
 *   socket.write(s.end());                         // ".\r\n"
 */
export class DotStuffer {
  private lastByte = -1;
  private secondLastByte = -1;
  private bodyBytesIn = 0;

  /** Body bytes pushed so far, before stuffing. */
  get bodyBytes(): number {
    return this.bodyBytesIn;
  }

  /** Returns the chunk with every line-leading "." doubled. Never mutates `chunk`. */
  push(chunk: Buffer): Buffer {
    const len = chunk.length;
    if (len === 0) return chunk;
    // offsets in `chunk` that get a "." inserted before them; a one-byte indexOf is a memchr
    const at: number[] = [];
    if (chunk[0] === DOT && (this.lastByte === LF || this.bodyBytesIn === 0)) at.push(0);
    for (let i = chunk.indexOf(LF); i !== -1 && i < len - 1; i = chunk.indexOf(LF, i + 1)) {
      if (chunk[i + 1] === DOT) at.push(i + 1);
    }
    this.secondLastByte = len >= 2 ? (chunk[len - 2] as number) : this.lastByte;
    this.lastByte = chunk[len - 1] as number;
    this.bodyBytesIn += len;
    if (at.length === 0) return chunk;
    const out = Buffer.allocUnsafe(len + at.length);
    let from = 0;
    let pos = 0;
    for (const i of at) {
      pos += chunk.copy(out, pos, from, i);
      out[pos++] = DOT;
      from = i;
    }
    chunk.copy(out, pos, from);
    return out;
  }

  /**
   * The end-of-data bytes: "." CR LF after a body that ended in CR LF (or was empty: smtp-server yields
   * an empty body for a bare terminator), else CR LF "." CR LF.
   */
  end(): Buffer {
    const endsWithCrlf = this.secondLastByte === CR && this.lastByte === LF;
    return this.bodyBytesIn === 0 || endsWithCrlf ? END_AFTER_CRLF : END_WITH_CRLF;
  }
}

/**
 * Dot-stuffs a whole body in one go and appends the end-of-data terminator: what goes on the wire after
 * a 354. For tests and small bodies; stream large ones through {@link DotStuffer}.
 *
 * @example
 *   dotStuff(Buffer.from('.\r\n..x\r\n')).toString(); // "..\r\n...x\r\n.\r\n"
 */
export function dotStuff(body: Buffer): Buffer {
  const s = new DotStuffer();
  return Buffer.concat([s.push(body), s.end()]);
}

/** How {@link writeStuffed} ended: the body ended, or `stop` settled first. */
export type StuffedOutcome = 'ended' | 'stopped';

/**
 * Writes `body` dot-stuffed to `out` with backpressure (the body is paused while `out` is full), without
 * the terminator and without ending `out`. Resolves 'ended' at the body's end, 'stopped' as soon as `stop`
 * settles; rejects with the body's error, or when it closes before its end. Calls `onStuck` when `out`
 * stays full for `idleTimeoutMs`. Leaves `body` without its listeners (and paused, or flowing) either way.
 *
 * @example
 *   const st = new DotStuffer();
 *   if ((await writeStuffed(body, socket, st, { idleTimeoutMs: 30_000, onStuck, stop })) === 'ended') socket.write(st.end());
 */
export function writeStuffed(
  body: Readable,
  out: Writable,
  stuffer: DotStuffer,
  o: { idleTimeoutMs: number; onStuck: () => void; stop: Promise<unknown> },
): Promise<StuffedOutcome> {
  return new Promise<StuffedOutcome>((resolve, reject) => {
    let stuck: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (outcome: StuffedOutcome, err?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(stuck);
      body.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      out.off('drain', onDrain);
      if (err) reject(err);
      else resolve(outcome);
    };
    const onData = (chunk: Buffer | string): void => {
      if (!out.write(stuffer.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)) && !stuck) {
        body.pause();
        stuck = setTimeout(o.onStuck, o.idleTimeoutMs);
      }
    };
    const onDrain = (): void => {
      clearTimeout(stuck);
      stuck = undefined;
      body.resume();
    };
    const onEnd = (): void => finish('ended');
    const onError = (err: Error): void => finish('stopped', err);
    const onClose = (): void => finish('stopped', new Error('Cannot relay message: body closed before its end'));
    o.stop.then(() => finish('stopped'), () => finish('stopped'));
    body.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose).resume();
    out.on('drain', onDrain);
  });
}
