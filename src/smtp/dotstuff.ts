/**
 * SMTP DATA transparency (RFC 5321 §4.5.2), sending side, and the line-end policy against SMTP smuggling
 * (CVE-2023-51764/51765/51766; docs/smuggling.md).
 *
 * What smtp-server 3.21 yields from its onData stream (lib/smtp-stream.js, `_feedDataStream`):
 *   - every byte between the 354 reply and the terminating CR LF "." CR LF, without normalising anything:
 *     bare LF, bare CR, NUL and 8-bit bytes pass as they are;
 *   - the CR LF in front of the terminating "." is kept, so a message ends with CR LF (or is empty);
 *   - only CR LF "." CR LF ends the data ("\n.\n", "\r.\r", "\r\n.\n" and "\n.\r\n" are content);
 *   - a "." at the start of the data or right after any LF (CR LF or bare LF) is removed when another
 *     "." follows it; a lone leading dot (".x") is kept, not removed as RFC 5321 would.
 *
 * Receivers disagree about what ends a line: CRLF only (RFC 5321), a bare LF too, a bare CR too, and
 * some drop NUL bytes before they look. A body that is one message for the proxy must be one message for
 * every one of them, so the encoder sends only lines ending in CR LF (as Postfix 3.9 does with
 * smtpd_forbid_bare_newline = normalize):
 *   - a bare CR and a bare LF each become CR LF;
 *   - a NUL is dropped (RFC 5321 allows none in DATA; a receiver that drops it would otherwise see the
 *     "." after it at the start of a line);
 *   - a "." at the start of a line (of the normalised text) is doubled.
 * A body that already has only CR LF line ends and no NUL goes out byte for byte apart from the dots.
 */
import type { Readable, Writable } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const NUL = 0x00;
const END_AFTER_CRLF = Buffer.from('.\r\n');
const END_WITH_CRLF = Buffer.from('\r\n.\r\n');
const LF_BYTE = Buffer.from('\n');

/**
 * True when `chunk` has a bare CR, a bare LF or a NUL. `afterCR`: the byte before the chunk was a CR (a
 * CR LF split between chunks). A CR as the chunk's last byte counts as bare only once the next chunk
 * shows it (pass `chunk[last] === CR` as `afterCR` then).
 */
export function hasBareLineEnd(chunk: Buffer, afterCR: boolean): boolean {
  const len = chunk.length;
  if (len === 0) return false;
  if (afterCR && chunk[0] !== LF) return true;
  if (chunk.indexOf(NUL) !== -1) return true;
  for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) {
    if (i === 0 ? !afterCR : chunk[i - 1] !== CR) return true;
  }
  for (let i = chunk.indexOf(CR); i !== -1 && i < len - 1; i = chunk.indexOf(CR, i + 1)) {
    if (chunk[i + 1] !== LF) return true;
  }
  return false;
}

/**
 * Encodes a message body chunk by chunk: line ends normalised to CR LF, NUL dropped, line-leading dots
 * doubled, with the state carried across chunk boundaries (a CR LF split between chunks, a "." opening a
 * chunk). Scans with `indexOf`; a chunk that needs no change is returned as it is, without copying; one
 * with only dots to stuff is copied once; anything else goes through a byte loop.
 *
 * @example
 *   const s = new DotStuffer();
 *   socket.write(s.push(Buffer.from('a\r\n.')));   // "a\r\n.."
 *   socket.write(s.push(Buffer.from('b\r.\r\n'))); // "b\r\n..\r\n"
 *   socket.write(s.end());                         // ".\r\n"
 */
export class DotStuffer {
  /** The last byte pushed was a CR whose LF is still to come (or to be added). */
  private pendingCR = false;
  /** The next byte out starts a line (at the start of the body, or after CR LF). */
  private lineStart = true;
  private bodyBytesIn = 0;

  /** Body bytes pushed so far, before encoding. */
  get bodyBytes(): number {
    return this.bodyBytesIn;
  }

  /** Returns the encoded chunk. Never mutates `chunk`. */
  push(chunk: Buffer): Buffer {
    const len = chunk.length;
    if (len === 0) return chunk;
    this.bodyBytesIn += len;
    if (hasBareLineEnd(chunk, this.pendingCR)) return this.slow(chunk);
    // Only CR LF line ends (a CR at the very end has its LF in the next chunk): stuff dots after LF.
    const at: number[] = [];
    if (chunk[0] === DOT && this.lineStart) at.push(0);
    for (let i = chunk.indexOf(LF); i !== -1 && i < len - 1; i = chunk.indexOf(LF, i + 1)) {
      if (chunk[i + 1] === DOT) at.push(i + 1);
    }
    const last = chunk[len - 1] as number;
    this.pendingCR = last === CR;
    this.lineStart = last === LF;
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

  /** The byte loop for a chunk with a bare CR, a bare LF or a NUL (at most two bytes out per byte in). */
  private slow(chunk: Buffer): Buffer {
    const out = Buffer.allocUnsafe(chunk.length * 2 + 1);
    let pos = 0;
    let { pendingCR, lineStart } = this;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] as number;
      if (pendingCR) {
        pendingCR = false;
        out[pos++] = LF;
        lineStart = true;
        if (b === LF) continue;
      }
      if (b === CR) {
        out[pos++] = CR;
        pendingCR = true;
        lineStart = false;
      } else if (b === LF) {
        out[pos++] = CR;
        out[pos++] = LF;
        lineStart = true;
      } else if (b === NUL) {
        // dropped; the line-start state is unchanged
      } else {
        if (b === DOT && lineStart) out[pos++] = DOT;
        out[pos++] = b;
        lineStart = false;
      }
    }
    this.pendingCR = pendingCR;
    this.lineStart = lineStart;
    return out.subarray(0, pos);
  }

  /**
   * The end-of-data bytes: "." CR LF after a body that ended in CR LF (or was empty: smtp-server yields
   * an empty body for a bare terminator), else CR LF "." CR LF; a trailing bare CR gets its LF first.
   */
  end(): Buffer {
    if (this.pendingCR) {
      this.pendingCR = false;
      this.lineStart = true;
      return Buffer.from('\n.\r\n');
    }
    return this.lineStart ? END_AFTER_CRLF : END_WITH_CRLF;
  }
}

/**
 * The message as the encoder will send it, without the dot-stuffing: bare CR and bare LF become CR LF,
 * NUL is dropped, chunk by chunk. What reads a message's header block (the rewriter that strips forged
 * verdict fields, the bounce classifier) reads it through this, so it sees the same lines, and the same
 * field names, that the next hop will (a field after a bare CR, or a name cut by a NUL, is no way past
 * it). A chunk with CR LF line ends only and no NUL is returned as it is.
 *
 * @example
 *   const n = new LineEndNormaliser();
 *   n.push(Buffer.from('A: 1\rX-V\0: 2\r')); // "A: 1\r\nX-V: 2\r\n"
 *   n.push(Buffer.from('\nbody'));             // "body" (the LF of the CR LF split between chunks)
 */
export class LineEndNormaliser {
  /** The last byte was a CR, already sent as CR LF: an LF that follows is its own. */
  private skipLF = false;

  /** True while a CR at the end of the last chunk may still have its LF to come. */
  get pending(): boolean {
    return this.skipLF;
  }

  push(chunk: Buffer): Buffer {
    let c = chunk;
    if (this.skipLF && c.length > 0) {
      this.skipLF = false;
      if (c[0] === LF) c = c.subarray(1);
    }
    const len = c.length;
    if (len === 0) return c;
    if (!hasBareLineEnd(c, false)) {
      if (c[len - 1] !== CR) return c;
      this.skipLF = true;
      return Buffer.concat([c, LF_BYTE]);
    }
    const out = Buffer.allocUnsafe(len * 2);
    let pos = 0;
    let skip = false;
    for (let i = 0; i < len; i++) {
      const b = c[i] as number;
      if (b === LF && skip) {
        skip = false;
        continue;
      }
      skip = false;
      if (b === CR || b === LF) {
        out[pos++] = CR;
        out[pos++] = LF;
        skip = b === CR;
      } else if (b !== NUL) {
        out[pos++] = b;
      }
    }
    this.skipLF = skip;
    return out.subarray(0, pos);
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

/**
 * How {@link writeStuffed} ended: the body ended (`last` is its final encoded bytes, not yet written), or
 * `stop` settled first.
 */
export type StuffedOutcome = { readonly outcome: 'ended'; readonly last: Buffer } | { readonly outcome: 'stopped' };

/**
 * Writes `body` dot-stuffed to `out` with backpressure (the body is paused while `out` is full), without
 * its last chunk and the terminator and without ending `out`. The last chunk is held back and handed to
 * the caller at the end, so that it and the terminator go out in one write: for a message that arrives in
 * one chunk, one system call instead of two. A chunk is held only until the event loop turns. Resolves `ended` at the body's end, `stopped` as soon as
 * `stop` settles (the held chunk is then dropped: the session is being failed); rejects with the body's
 * error, or when it closes before its end. Calls `onStuck` when `out` stays full for `idleTimeoutMs`.
 * Leaves `body` without its listeners (and paused, or flowing) either way.
 *
 * @example
 *   const st = new DotStuffer();
 *   const r = await writeStuffed(body, socket, st, { idleTimeoutMs: 30_000, onStuck, stop });
 *   if (r.outcome === 'ended') socket.write(Buffer.concat([r.last, st.end()]));
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
    // The latest encoded chunk, not yet written: written when the next one comes or when the event loop
    // turns (setImmediate runs after the 'end' that follows the last chunk in the same turn), so a slow
    // body still reaches the next hop as it arrives.
    let held: Buffer | null = null;
    let flushTimer: NodeJS.Immediate | undefined;
    const write = (chunk: Buffer): void => {
      if (!out.write(chunk) && !stuck) {
        body.pause();
        stuck = setTimeout(o.onStuck, o.idleTimeoutMs);
      }
    };
    const flush = (): void => {
      flushTimer = undefined;
      const chunk = held;
      held = null;
      if (chunk && !done) write(chunk);
    };
    const finish = (outcome: StuffedOutcome, err?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(stuck);
      if (flushTimer) clearImmediate(flushTimer);
      body.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      out.off('drain', onDrain);
      if (err) reject(err);
      else resolve(outcome);
    };
    const onData = (chunk: Buffer | string): void => {
      const encoded = stuffer.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      if (encoded.length === 0) return;
      const previous = held;
      held = encoded;
      if (previous) write(previous);
      flushTimer ??= setImmediate(flush);
    };
    const onDrain = (): void => {
      clearTimeout(stuck);
      stuck = undefined;
      body.resume();
    };
    const onEnd = (): void => {
      const last = held ?? EMPTY;
      held = null;
      finish({ outcome: 'ended', last });
    };
    const onError = (err: Error): void => finish(STOPPED, err);
    const onClose = (): void => finish(STOPPED, new Error('Cannot relay message: body closed before its end'));
    o.stop.then(() => finish(STOPPED), () => finish(STOPPED));
    body.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose).resume();
    out.on('drain', onDrain);
  });
}

const EMPTY = Buffer.alloc(0);
const STOPPED: StuffedOutcome = Object.freeze({ outcome: 'stopped' });
