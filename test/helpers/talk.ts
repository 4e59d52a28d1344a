/**
 * A minimal raw SMTP client for end-to-end tests: sends exactly the bytes given and returns each reply
 * exactly as received (all lines, CRLF stripped), so tests can assert the precise reply line. Independent
 * of src/ on purpose.
 */
import net from 'node:net';

export interface Talk {
  /** The greeting, once it has arrived. */
  readonly greeting: Promise<string>;
  /** Sends one line (CRLF added) and resolves with the complete reply (multi-line joined by "\n"). */
  cmd(line: string): Promise<string>;
  /** Sends raw bytes without waiting for anything. */
  write(bytes: string | Buffer): void;
  /** Resolves with the next complete reply. */
  reply(): Promise<string>;
  /** DATA, the body (dot-stuffed by the caller if needed) and ".": resolves with the 354 and the final reply. */
  data(body: string | Buffer): Promise<{ start: string; end: string }>;
  /** QUIT and close. */
  quit(): Promise<void>;
  /** Destroys the socket at once (a client vanishing). */
  destroy(): void;
  readonly closed: Promise<void>;
}

export function talk(port: number, host = '127.0.0.1'): Talk {
  const socket = net.connect(port, host);
  socket.setNoDelay(true);
  let buf = '';
  const replies: string[] = [];
  const waiting: Array<(r: string) => void> = [];
  let current: string[] = [];
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  socket.on('error', () => undefined);
  socket.on('data', (d) => {
    buf += d.toString('latin1');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      current.push(line);
      if (/^\d{3}(?: |$)/.test(line)) {
        const r = current.join('\n');
        current = [];
        const w = waiting.shift();
        if (w) w(r);
        else replies.push(r);
      }
    }
  });
  const reply = () => new Promise<string>((resolve, reject) => {
    const r = replies.shift();
    if (r !== undefined) return resolve(r);
    const timer = setTimeout(() => reject(new Error('no reply within 10 s')), 10_000);
    waiting.push((x) => { clearTimeout(timer); resolve(x); });
    closed.then(() => setTimeout(() => reject(new Error('connection closed without a reply')), 50));
  });
  const greeting = reply();
  return {
    greeting,
    cmd: (line) => { socket.write(`${line}\r\n`); return reply(); },
    write: (b) => void socket.write(b),
    reply,
    async data(body) {
      socket.write('DATA\r\n');
      const start = await reply();
      if (!start.startsWith('354')) return { start, end: '' };
      socket.write(body);
      socket.write('.\r\n');
      return { start, end: await reply() };
    },
    async quit() {
      socket.write('QUIT\r\n');
      await Promise.race([closed, new Promise((r) => setTimeout(r, 500))]);
      socket.destroy();
    },
    destroy: () => socket.destroy(),
    closed,
  };
}
