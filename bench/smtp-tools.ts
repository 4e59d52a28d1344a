/**
 * The SMTP pieces of the load benchmark (bench/run.ts), each small and bounded:
 *  - SmtpConn: a client connection with a reply queue (latency probe, idle connections, generator);
 *  - runLoad / generatorRole: the built-in load generator (used when smtp-source is not installed),
 *    run in a child process of its own;
 *  - sinkRole: the built-in next hop (used when smtp-sink is not installed), in a child process too.
 */
import net from 'node:net';

export const HOST = '127.0.0.1';
export const MIB = 1024 * 1024;

// ───────────────────────────────────────────────────────────── a tiny SMTP client (shared by all roles)

export interface Reply {
  code: number;
  text: string;
}

/** One client connection: replies parsed into a queue; one command in flight at a time. */
export class SmtpConn {
  private partial = '';
  private lines: string[] = [];
  private readonly ready: Reply[] = [];
  private readonly waiting: Array<{ resolve: (r: Reply) => void; reject: (e: Error) => void }> = [];
  private failed: Error | null = null;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => this.onData(b));
    socket.on('error', (e: Error) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  static connect(port: number, timeoutMs: number): Promise<SmtpConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: HOST, port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect to ${port} timed out`));
      }, timeoutMs);
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(new SmtpConn(s));
      });
    });
  }

  /** Connects, reads the greeting and says EHLO; rejects unless both are 2xx. */
  static async open(port: number, timeoutMs = 10_000): Promise<SmtpConn> {
    const c = await SmtpConn.connect(port, timeoutMs);
    try {
      const g = await c.reply();
      if (g.code !== 220) throw new Error(`greeting ${g.text}`);
      const e = await c.cmd('EHLO bench.example');
      if (e.code !== 250) throw new Error(`EHLO ${e.text}`);
      return c;
    } catch (err) {
      c.close();
      throw err;
    }
  }

  private onData(b: Buffer): void {
    const text = this.partial + b.toString('latin1');
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
      const line = text.charCodeAt(nl - 1) === 13 ? text.slice(start, nl - 1) : text.slice(start, nl);
      start = nl + 1;
      this.lines.push(line);
      if (line.length >= 4 && line[3] === '-') continue;
      const reply = { code: Number(line.slice(0, 3)) || 0, text: this.lines.join(' | ') };
      this.lines = [];
      const w = this.waiting.shift();
      if (w) w.resolve(reply);
      else this.ready.push(reply);
    }
    this.partial = start < text.length ? text.slice(start) : '';
  }

  reply(): Promise<Reply> {
    const r = this.ready.shift();
    if (r) return Promise.resolve(r);
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  cmd(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  /** Writes a buffer (or a sequence of them) with backpressure. */
  async write(chunks: Buffer | readonly Buffer[]): Promise<void> {
    for (const c of Buffer.isBuffer(chunks) ? [chunks] : chunks) {
      if (this.failed) throw this.failed;
      if (!this.socket.write(c)) await this.drained();
    }
  }

  /** Resolves at the socket's next 'drain' or 'close', whichever comes first; leaves no listener behind. */
  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done).off('close', done);
        resolve();
      };
      this.socket.on('drain', done).on('close', done);
    });
  }

  async quit(): Promise<void> {
    if (!this.failed) {
      this.socket.write('QUIT\r\n');
      await Promise.race([this.reply().catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
    }
    this.close();
  }

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    for (const w of this.waiting.splice(0)) w.reject(e);
  }

  close(): void {
    this.socket.destroy();
  }
}

// ───────────────────────────────────────────────────────────── messages

const FILLER_LINE = `${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2)}ABCDEFGH\r\n`; // 78 bytes, never starts with "."
const FILLER_BLOCK = Buffer.from(FILLER_LINE.repeat(840)); // 65,520 bytes
const messageCache = new Map<string, Buffer[]>();

/**
 * The DATA bytes of a message of about `size` bytes (headers included), ending with CRLF "." CRLF.
 * Returned as chunks; big messages reuse one 64 KiB filler block so that nothing large is allocated.
 */
export function messageChunks(size: number, from: string, to: string): Buffer[] {
  const key = `${size}|${from}|${to}`;
  const hit = messageCache.get(key);
  if (hit) return hit;
  const head = Buffer.from(
    `From: <${from || 'mailer-daemon@example.net'}>\r\nTo: <${to}>\r\nSubject: batv-proxy bench ${size}\r\n`
    + `Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <bench.${size}@example.net>\r\n\r\n`,
  );
  const chunks: Buffer[] = [head];
  let left = Math.max(0, size - head.length);
  while (left >= FILLER_BLOCK.length) {
    chunks.push(FILLER_BLOCK);
    left -= FILLER_BLOCK.length;
  }
  const lines = Math.max(1, Math.round(left / FILLER_LINE.length));
  chunks.push(Buffer.from(`${FILLER_LINE.repeat(lines)}.\r\n`));
  const out = size <= 4 * MIB ? [Buffer.concat(chunks)] : chunks;
  if (size <= 4 * MIB) messageCache.set(key, out);
  return out;
}

// ───────────────────────────────────────────────────────────── child role: built-in load generator

export interface LoadJob {
  port: number;
  sessions: number;
  count: number;
  size: number;
  reuse: boolean;
  from: string;
  to: string;
  timeoutMs: number;
}

export interface LoadResult {
  wallS: number;
  delivered: number;
  refused: number;
  failed: number;
  timedOut: boolean;
  lastError: string | null;
}

export async function runLoad(job: LoadJob): Promise<LoadResult> {
  const st = { started: 0, delivered: 0, refused: 0, failed: 0, stop: false, lastError: null as string | null };
  const open = new Set<SmtpConn>();
  const t0 = performance.now();
  const timer = setTimeout(() => {
    st.stop = true;
    for (const c of open) c.close();
  }, job.timeoutMs);
  const body = messageChunks(job.size, job.from, job.to);
  const session = async (): Promise<void> => {
    let c: SmtpConn | null = null;
    let consecutiveErrors = 0;
    while (!st.stop && st.started < job.count) {
      st.started++;
      try {
        if (!c) {
          c = await SmtpConn.open(job.port);
          open.add(c);
        }
        const m = await c.cmd(`MAIL FROM:<${job.from}>`);
        if (m.code !== 250) {
          st.failed++;
          st.lastError = `MAIL: ${m.text}`;
          await c.cmd('RSET');
        } else {
          const r = await c.cmd(`RCPT TO:<${job.to}>`);
          if (r.code >= 500) {
            st.refused++;
            await c.cmd('RSET');
          } else if (r.code !== 250) {
            st.failed++;
            st.lastError = `RCPT: ${r.text}`;
            await c.cmd('RSET');
          } else {
            const d = await c.cmd('DATA');
            if (d.code !== 354) {
              st.failed++;
              st.lastError = `DATA: ${d.text}`;
              await c.cmd('RSET');
            } else {
              await c.write(body);
              const e = await c.reply();
              if (e.code === 250) st.delivered++;
              else {
                st.failed++;
                st.lastError = `end of data: ${e.text}`;
              }
            }
          }
        }
        if (!job.reuse) {
          open.delete(c);
          await c.quit();
          c = null;
        }
        consecutiveErrors = 0;
      } catch (e) {
        st.failed++;
        st.lastError = (e as Error).message;
        if (c) {
          open.delete(c);
          c.close();
          c = null;
        }
        if (++consecutiveErrors >= 20) break; // the target is down: give up rather than spin
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    if (c) {
      open.delete(c);
      await c.quit();
    }
  };
  await Promise.all(Array.from({ length: Math.min(job.sessions, job.count) }, session));
  clearTimeout(timer);
  return { wallS: (performance.now() - t0) / 1000, delivered: st.delivered, refused: st.refused, failed: st.failed, timedOut: st.stop, lastError: st.lastError };
}

export function generatorRole(): void {
  process.on('message', (msg: { type: string; job?: LoadJob }) => {
    if (msg.type === 'run' && msg.job) {
      runLoad(msg.job).then(
        (result) => process.send?.({ type: 'done', result }),
        (e: Error) => process.send?.({ type: 'done', result: { wallS: 0, delivered: 0, refused: 0, failed: 1, timedOut: false, lastError: e.message } }),
      );
    } else if (msg.type === 'exit') process.exit(0);
  });
  process.on('disconnect', () => process.exit(0));
  process.send?.({ type: 'ready' });
}

// ───────────────────────────────────────────────────────────── child role: built-in sink

const TERMINATOR = Buffer.from('\r\n.\r\n');

/**
 * A minimal next hop: EHLO (PIPELINING, SIZE, 8BITMIME), MAIL, RCPT (250, or 550 in reject mode), DATA
 * scanned for CRLF "." CRLF, RSET, NOOP, QUIT. Counts messages; reports counts over IPC.
 */
export function sinkRole(port: number, reject: boolean): void {
  let messages = 0;
  let sessions = 0;
  const server = net.createServer((sock) => {
    sessions++;
    sock.setNoDelay(true);
    sock.on('error', () => undefined);
    let inData = false;
    let tail = Buffer.from('\r\n');
    let pending = '';
    let quitting = false;
    const onCommands = (text: string): string => {
      let out = '';
      let start = 0;
      for (let nl = text.indexOf('\n'); nl >= 0 && !inData; nl = text.indexOf('\n', start)) {
        const line = text.slice(start, nl).replace(/\r$/, '');
        start = nl + 1;
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') out += '250-bench-sink\r\n250-PIPELINING\r\n250-SIZE 209715200\r\n250 8BITMIME\r\n';
        else if (verb === 'HELO') out += '250 bench-sink\r\n';
        else if (verb === 'MAIL') out += '250 2.1.0 Ok\r\n';
        else if (verb === 'RCPT') out += reject ? '550 5.1.1 Recipient address rejected\r\n' : '250 2.1.5 Ok\r\n';
        else if (verb === 'DATA') {
          out += '354 End data with <CR><LF>.<CR><LF>\r\n';
          inData = true;
          tail = Buffer.from('\r\n');
        } else if (verb === 'RSET' || verb === 'NOOP') out += '250 2.0.0 Ok\r\n';
        else if (verb === 'QUIT') {
          out += '221 2.0.0 Bye\r\n';
          quitting = true;
          break;
        } else out += '502 5.5.2 Error: command not recognized\r\n';
      }
      pending = text.slice(start);
      return out;
    };
    const onChunk = (chunk: Buffer): void => {
      let out = '';
      let rest: Buffer | null = chunk;
      while (rest && rest.length && !quitting) {
        if (!inData) {
          const text: string = pending + rest.toString('latin1');
          rest = null;
          const before = text.length;
          out += onCommands(text);
          if (inData) {
            // bytes after DATA's line belong to the message
            const consumed = before - pending.length;
            rest = Buffer.from(text.slice(consumed), 'latin1');
            pending = '';
          }
        } else {
          const head = Buffer.concat([tail, rest.subarray(0, 4)]);
          const i = head.indexOf(TERMINATOR);
          let end = i >= 0 ? i + TERMINATOR.length - tail.length : -1;
          if (end < 0) {
            const j = rest.indexOf(TERMINATOR);
            end = j < 0 ? -1 : j + TERMINATOR.length;
          }
          if (end < 0) {
            tail = Buffer.from(Buffer.concat([tail, rest]).subarray(-4));
            rest = null;
          } else {
            messages++;
            out += '250 2.0.0 Ok: queued\r\n';
            inData = false;
            rest = rest.subarray(end);
          }
        }
      }
      if (quitting) sock.end(out);
      else if (out) sock.write(out);
    };
    sock.on('data', onChunk);
    sock.write('220 bench-sink ESMTP\r\n');
  });
  server.listen(port, HOST, () => process.send?.({ type: 'ready' }));
  process.on('message', (msg: { type: string }) => {
    if (msg.type === 'count') process.send?.({ type: 'count', messages, sessions });
    else if (msg.type === 'exit') process.exit(0);
  });
  process.on('disconnect', () => process.exit(0));
}
