/**
 * The real process for operations tests: builds dist/ when it is missing or older than src/, spawns
 * `node bin/batv-proxy.js ...` with a clean environment (no BATV_PROXY_* leaking in from the test runner),
 * collects its JSON log lines from stdout, and stops it by PID. Also: free ports below the ephemeral range,
 * and a one-shot CLI runner.
 *
 * @example
 *   ensureBuilt();
 *   const p = await startServe({ args: ['--config', file], cwd: dir });
 *   // ... p.outbound.port, p.inbound.port, await p.waitForLine((l) => l.msg === 'reload done') ...
 *   await p.stop();
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const REPO = path.resolve(import.meta.dirname, '..', '..');
export const BIN = path.join(REPO, 'bin', 'batv-proxy.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function isStale(): boolean {
  try {
    return statSync(path.join(REPO, 'dist', 'main.js')).mtimeMs < newestMtime(path.join(REPO, 'src'));
  } catch {
    return true;
  }
}

/**
 * Runs `npm run build` once when dist/main.js is missing or older than any file under src/. Test files run
 * in parallel, so a lock directory keeps two of them from compiling at the same time.
 */
export function ensureBuilt(): void {
  if (!isStale()) return;
  const lock = path.join(os.tmpdir(), `batv-proxy-build-${Buffer.from(REPO).toString('hex').slice(-24)}.lock`);
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`build lock ${lock} held for 2 minutes`);
      try {
        if (Date.now() - statSync(lock).mtimeMs > 120_000) rmSync(lock, { recursive: true, force: true });
      } catch { /* gone meanwhile */ }
      execFileSync('sleep', ['0.2']);
    }
  }
  try {
    if (isStale()) execFileSync('npm', ['run', 'build'], { cwd: REPO, stdio: 'ignore' });
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** process.env without any BATV_PROXY_* variable, plus `extra`. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('BATV_PROXY_')) env[k] = v;
  return { ...env, ...extra };
}

/** Whether 127.0.0.1:port can be bound right now. */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A port on 127.0.0.1 that is free now, from 20000-32767 (below Linux's ephemeral range, so no outgoing socket takes it). */
export async function freePort(avoid: readonly number[] = []): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 12768);
    if (!avoid.includes(p) && await portFree(p)) return p;
  }
  throw new Error('no free port in 20000-32767');
}

/** Whether a TCP connection to 127.0.0.1:port is accepted ("connected") or the error code. */
export function connectOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (never throws on a non-zero exit). */
export function run(file: string, args: readonly string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, [...args], { cwd: opts.cwd ?? REPO, env: opts.env ?? cleanEnv(), timeout: opts.timeoutMs ?? 20_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** `node bin/batv-proxy.js ...args` to completion. */
export function cli(args: readonly string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return run(process.execPath, [BIN, ...args], opts);
}

export type LogLine = Record<string, unknown>;

export interface ServeProcess {
  readonly pid: number;
  readonly child: ChildProcess;
  /** Every JSON line the process wrote on stdout so far, oldest first. */
  readonly lines: LogLine[];
  /** Everything on stderr so far. */
  stderr(): string;
  readonly outbound: { host: string; port: number };
  readonly inbound: { host: string; port: number };
  /** Resolves with the first line at index >= `from` that matches; rejects after `timeoutMs`. */
  waitForLine(match: (l: LogLine) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<LogLine>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  signal(sig: NodeJS.Signals): void;
  /** SIGKILL by PID if it is still running; resolves once it is gone. */
  stop(): Promise<void>;
}

const hostPort = (s: unknown): { host: string; port: number } => {
  const m = /^(.*):(\d+)$/.exec(String(s));
  if (!m) throw new Error(`not host:port: ${String(s)}`);
  return { host: m[1]!, port: Number(m[2]) };
};

/**
 * Spawns `node bin/batv-proxy.js serve ...args` and resolves once both "... listening" lines arrived.
 * Call ensureBuilt() first.
 */
export async function startServe(opts: { args?: readonly string[]; cwd: string; env?: Record<string, string>; timeoutMs?: number }): Promise<ServeProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', ...(opts.args ?? [])], { cwd: opts.cwd, env: cleanEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error('spawn failed');
  const pid = child.pid;
  const lines: LogLine[] = [];
  let err = '';
  let buf = '';
  const waiters = new Set<() => void>();
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { exitInfo = { code, signal }; for (const w of waiters) w(); resolve(exitInfo); });
  });
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.trim()) continue;
      try {
        lines.push(JSON.parse(line) as LogLine);
      } catch {
        lines.push({ unparsed: line });
      }
    }
    for (const w of waiters) w();
  });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString('utf8'); });

  const waitForLine = (match: (l: LogLine) => boolean, o: { from?: number; timeoutMs?: number } = {}): Promise<LogLine> => new Promise((resolve, reject) => {
    const from = o.from ?? 0;
    let timer: NodeJS.Timeout | undefined;
    const check = (): boolean => {
      for (let i = from; i < lines.length; i++) {
        if (match(lines[i]!)) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(lines[i]!);
          return true;
        }
      }
      if (exitInfo) {
        waiters.delete(check);
        clearTimeout(timer);
        reject(new Error(`process ${pid} exited (${JSON.stringify(exitInfo)}) without the awaited log line; stderr: ${err}; stdout: ${JSON.stringify(lines.slice(from))}`));
        return true;
      }
      return false;
    };
    if (check()) return;
    timer = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`no matching log line within ${o.timeoutMs ?? 10_000} ms; lines since ${from}: ${JSON.stringify(lines.slice(from))}; stderr: ${err}`));
    }, o.timeoutMs ?? 10_000);
    waiters.add(check);
  });

  const stop = async (): Promise<void> => {
    if (exitInfo) return;
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    await exited;
  };
  try {
    const out = await waitForLine((l) => l.msg === 'outbound listening', { timeoutMs: opts.timeoutMs ?? 15_000 });
    const inn = await waitForLine((l) => l.msg === 'inbound listening', { timeoutMs: opts.timeoutMs ?? 15_000 });
    return {
      pid,
      child,
      lines,
      stderr: () => err,
      outbound: hostPort(out.outbound),
      inbound: hostPort(inn.inbound),
      waitForLine,
      exited,
      signal: (sig) => { process.kill(pid, sig); },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
