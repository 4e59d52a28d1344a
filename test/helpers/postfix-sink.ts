/**
 * Postfix's own `smtp-sink` (.peers/bin/smtp-sink from scripts/install-peers.sh, or /usr/sbin/smtp-sink) as a next hop: a second, independent SMTP implementation.
 * It needs an explicit port, so one below 32768 (outside the ephemeral range) is picked by trying to bind
 * it; as root it runs with `-u nobody`. Each transaction is dumped to a file (`-d`), parsed back here.
 *
 * @example
 *   const pf = await startPostfixSink();
 *   // ... deliver to pf.port ...
 *   const [d] = await pf.waitForDumps(1);
 *   expect(d?.mailArgs).toBe('<a@b.example> SIZE=12');
 *   await pf.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { peerBinary } from './peer-bin.js';

export const SMTP_SINK_PATH = peerBinary('smtp-sink', '/usr/sbin/smtp-sink');

/** One transaction as smtp-sink dumped it. */
export interface PostfixDump {
  heloArgs: string | null;
  mailArgs: string;
  rcptArgs: string[];
  /**
   * The message as smtp-sink stored it: lines split at CRLF only, the leading "." of each line removed,
   * every line ended with a bare LF ("a\r\nb\r\n" is stored as "a\nb\n").
   */
  body: Buffer;
}

export interface PostfixSink {
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  /** Resolves with the first `n` dumps (oldest first) once that many exist. */
  waitForDumps(n: number, timeoutMs?: number): Promise<PostfixDump[]>;
  /** Kills the process by its PID and removes the dump directory. */
  stop(): Promise<void>;
}

async function portIsFree(port: number): Promise<boolean> {
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

function parseDump(raw: Buffer): PostfixDump {
  const text = raw.toString('latin1');
  const received = text.indexOf('\nReceived: ');
  if (received === -1) throw new Error('smtp-sink dump without its Received header');
  const head = text.slice(0, received).split('\n');
  const field = (name: string): string[] => head.filter((l) => l.startsWith(`${name}: `)).map((l) => l.slice(name.length + 2));
  let bodyStart = received + 1;
  for (let i = 0; i < 3; i++) bodyStart = text.indexOf('\n', bodyStart) + 1;
  return {
    heloArgs: field('X-Helo-Args')[0] ?? null,
    mailArgs: field('X-Mail-Args')[0] ?? '',
    rcptArgs: field('X-Rcpt-Args'),
    body: raw.subarray(bodyStart, raw.length - 1), // smtp-sink ends each dump with an empty line
  };
}

export interface PostfixSinkOptions {
  /** Dump each transaction for waitForDumps() (default true); false discards everything (load tests). */
  dump?: boolean;
  /** More smtp-sink flags, e.g. ['-f', 'RCPT'] to refuse every RCPT with 5xx. */
  extraArgs?: string[];
}

/**
 * Starts smtp-sink on a free port below 32768; retries a few ports if another process wins the race.
 *
 * @example
 *   const discard = await startPostfixSink({ dump: false });
 */
export async function startPostfixSink(opts: PostfixSinkOptions = {}): Promise<PostfixSink> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-smtp-sink-'));
  chmodSync(dir, 0o777); // smtp-sink writes as nobody
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (!(await portIsFree(port))) continue;
    const asRoot = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
    const dump = opts.dump === false ? [] : ['-d', `${dir}/%M.`];
    const args = [...asRoot, ...(opts.extraArgs ?? []), ...dump, `127.0.0.1:${port}`, '100'];
    const child: ChildProcess = spawn(SMTP_SINK_PATH, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let exited = false;
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.once('exit', () => { exited = true; });
    const deadline = Date.now() + 3000;
    while (!exited && Date.now() < deadline && !(await accepts(port))) await new Promise((r) => setTimeout(r, 25));
    if (exited || child.pid === undefined) continue;
    if (Date.now() >= deadline) {
      child.kill('SIGKILL');
      throw new Error(`smtp-sink did not listen on ${port}: ${stderr}`);
    }
    const pid = child.pid;
    return {
      host: '127.0.0.1',
      port,
      pid,
      async waitForDumps(n, timeoutMs = 5000) {
        const end = Date.now() + timeoutMs;
        for (;;) {
          const files = readdirSync(dir).map((f) => path.join(dir, f));
          if (files.length >= n) {
            files.sort((a, b) => statSync(a).mtimeMs - statSync(b).mtimeMs);
            return files.slice(0, n).map((f) => parseDump(readFileSync(f)));
          }
          if (Date.now() > end) throw new Error(`smtp-sink: ${files.length} of ${n} dumps within ${timeoutMs} ms`);
          await new Promise((r) => setTimeout(r, 20));
        }
      },
      async stop() {
        if (!exited) {
          const gone = new Promise((r) => child.once('exit', r));
          process.kill(pid, 'SIGTERM');
          await gone;
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error('smtp-sink: no free port found below 32768');
}
