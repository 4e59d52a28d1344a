/**
 * A client that half-closes its socket (sends FIN) the way exim does: it writes a group of commands in
 * one packet, shuts down its sending side, and keeps reading every reply it is owed until the server
 * closes. Independent of src/ on purpose.
 *
 * @example
 *   // exim's end of a message: ".", "QUIT" and FIN in one go, then wait for 250 and 221
 *   const r = await halfClose(port, [
 *     { send: 'EHLO exim.test\r\n', replies: 1 },
 *     { send: 'MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n', replies: 3 },
 *     { send: 'Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n', fin: true },
 *   ]);
 *   r.replies; // [..., '250 2.0.0 Ok', '221 Bye']
 */
import net from 'node:net';

export interface Step {
  /** Bytes written in one write() call. */
  readonly send: string | Buffer;
  /** Replies to wait for before the next step (default 0). */
  readonly replies?: number;
  /** Half-close (FIN) right after this step's bytes. */
  readonly fin?: boolean;
}

export interface HalfCloseResult {
  /** The greeting and every reply, in order; multi-line replies joined by "\n". */
  readonly replies: string[];
  /** Replies that arrived after the FIN. */
  readonly afterFin: string[];
  /** Whether the server closed the connection (rather than the timeout ending the wait). */
  readonly serverClosed: boolean;
  /** Milliseconds from the FIN to the server's close. */
  readonly closeMs: number;
}

/** Runs `steps` (the greeting is awaited first) and collects replies until the server closes or `timeoutMs`. */
export function halfClose(port: number, steps: readonly Step[], timeoutMs = 10_000, host = '127.0.0.1'): Promise<HalfCloseResult> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host, allowHalfOpen: true });
    socket.setNoDelay(true);
    const replies: string[] = [];
    let finAt = -1;
    let finMs = 0;
    let current: string[] = [];
    let buf = '';
    let waiting: { count: number; go: () => void } | null = null;
    let stepIndex = 0;
    const timer = setTimeout(() => finish(false), timeoutMs);
    const finish = (serverClosed: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({
        replies,
        afterFin: finAt < 0 ? [] : replies.slice(finAt),
        serverClosed,
        closeMs: finAt < 0 ? 0 : Date.now() - finMs,
      });
    };
    const check = () => {
      const w = waiting;
      if (w && replies.length >= w.count) {
        waiting = null;
        w.go();
      }
    };
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        current.push(line);
        if (/^\d{3}(?: |$)/.test(line)) {
          replies.push(current.join('\n'));
          current = [];
        }
      }
      check();
    });
    socket.on('end', () => finish(true));
    socket.on('error', (e) => { clearTimeout(timer); reject(e); });
    let expected = 1; // the greeting
    const next = () => {
      const step = steps[stepIndex++];
      if (!step) return;
      socket.write(step.send);
      if (step.fin) {
        finAt = expected;
        finMs = Date.now();
        socket.end();
      }
      expected += step.replies ?? 0;
      waiting = { count: expected, go: next };
      check();
    };
    waiting = { count: 1, go: next };
  });
}
