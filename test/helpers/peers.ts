/**
 * Runners for the real programs our tag core must interoperate with (test/interop/):
 *
 *   exim 4.96 `-be` (BATV ${prvs}/${prvscheck}), unpacked by scripts/install-peers.sh into .peers/exim/root
 *   Perl Mail::SRS 0.31 (Guarded), through test/helpers/mailsrs.pl (one process, line protocol)
 *   postsrsd 1.10 (libsrs2 family), Postfix tcp_table protocol on 127.0.0.1
 *
 * Clocks: exim and postsrsd run with libfaketime preloaded and FAKETIME_TIMESTAMP_FILE + FAKETIME_NO_CACHE,
 * so one long-running process can be moved to any instant between batches of requests (setTime). exim
 * purges its environment at start-up, so its config keeps those variables (keep_environment). Mail::SRS
 * gets the time in each request (CORE::GLOBAL::time is overridden before Mail::SRS is compiled).
 * Times are frozen (absolute libfaketime timestamps do not tick), in UTC (TZ=UTC).
 *
 * Every process is spawned directly (no shell, no faketime wrapper), so the PID we hold is the program's
 * own, and stop() ends it by that PID.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import fc from 'fast-check';
import { peerBinary } from './peer-bin.js';
import { expect } from 'vitest';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DAY_MS = 86_400_000;
const PERL_SCRIPT = join(REPO_ROOT, 'test/helpers/mailsrs.pl');
const POSTSRSD_BIN = process.env.POSTSRSD_BIN ?? peerBinary('postsrsd', '/usr/sbin/postsrsd');

/**
 * BATV_REQUIRE_PEERS=1 (set by .ci/run, where scripts/install-peers.sh installed them; CI=1 too): a
 * missing peer fails its suite instead of skipping it.
 */
const REQUIRE_PEERS = process.env.BATV_REQUIRE_PEERS === '1' || !!process.env.CI;
/** Where skipped peer suites are noted; test/global-setup.ts prints them at the end of the run. */
export const PEER_SKIP_LOG = join(REPO_ROOT, 'test/artifacts/peer-skips.jsonl');

// ---------------------------------------------------------------------------------------------------------
// Small utilities

/** libfaketime's absolute format, UTC (the processes get TZ=UTC). Milliseconds are dropped. */
export function faketimeSpec(ms: number): string {
  const iso = new Date(Math.floor(ms / 1000) * 1000).toISOString(); // 2026-01-01T12:00:00.000Z
  if (!/^\d{4}-/.test(iso)) throw new RangeError(`libfaketime cannot express ${iso}`);
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
}

export function iso(ms: number): string {
  return new Date(ms).toISOString();
}

const decoder = new TextDecoder('utf-8');
/** Bytes to a JS string (UTF-8; invalid sequences become U+FFFD, which then never equals our output). */
export function fromBytes(b: Uint8Array): string {
  return decoder.decode(b);
}

/** ASCII-only case changes, as an MTA that "smashes case" would do it (keeps UTF-8 bytes intact). */
export function lowerAsciiOnly(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}
export function upperAsciiOnly(s: string): string {
  return s.replace(/[a-z]+/g, (m) => m.toUpperCase());
}

export function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** Finds libfaketime.so.1 (Debian: /usr/lib/<triplet>/faketime/). */
export function findLibfaketime(): string | undefined {
  const env = process.env.LIBFAKETIME;
  if (env && existsSync(env)) return env;
  const candidates = ['/usr/lib/faketime/libfaketime.so.1'];
  try {
    for (const d of readdirSync('/usr/lib')) candidates.push(join('/usr/lib', d, 'faketime/libfaketime.so.1'));
  } catch {
    /* no /usr/lib */
  }
  return candidates.find((p) => existsSync(p));
}

/** A file libfaketime re-reads on every time() call (FAKETIME_NO_CACHE=1); written atomically. */
class FaketimeFile {
  readonly path: string;
  private current = '';
  constructor(dir: string) {
    this.path = join(dir, 'faketime.rc');
  }
  set(ms: number): void {
    const spec = faketimeSpec(ms);
    if (spec === this.current) return;
    const tmp = `${this.path}.tmp`;
    writeFileSync(tmp, `${spec}\n`);
    renameSync(tmp, this.path);
    this.current = spec;
  }
  env(lib: string): NodeJS.ProcessEnv {
    return { TZ: 'UTC', LD_PRELOAD: lib, FAKETIME_TIMESTAMP_FILE: this.path, FAKETIME_NO_CACHE: '1' };
  }
}

/** Reads newline-terminated lines from a stream in order; `next()` waits for the next one. */
class LineQueue {
  private buf = '';
  private readonly lines: string[] = [];
  private readonly waiting: { resolve: (l: string) => void; reject: (e: Error) => void }[] = [];
  private ended: Error | null = null;

  constructor(stream: Readable, private readonly describeEnd: () => string) {
    stream.setEncoding('latin1'); // bytes 1:1; callers decode what they need
    stream.on('data', (chunk: string) => {
      this.buf += chunk;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiting.shift();
        if (w) w.resolve(line);
        else this.lines.push(line);
      }
    });
    const end = () => {
      this.ended ??= new Error(this.describeEnd());
      for (const w of this.waiting.splice(0)) w.reject(this.ended);
    };
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', end);
  }

  /** Text received after the last newline (e.g. a prompt). */
  get partial(): string {
    return this.buf;
  }

  next(): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }
}

function latin1ToUtf8(s: string): string {
  return fromBytes(Buffer.from(s, 'latin1'));
}

/** Ends a child process by its PID: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
async function stopChild(child: ChildProcessWithoutNullStreams, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const pid = child.pid;
  if (pid === undefined) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
  if ((await Promise.race([exited, timer])) === 'timeout') {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await exited;
  }
}

// ---------------------------------------------------------------------------------------------------------
// exim

export type EximResult = { ok: true; value: string } | { ok: false; error: string };

/** Escapes a literal for an exim expansion string: \ $ { } get a backslash (nothing else is special). */
export function eximLiteral(s: string): string {
  return s.replace(/[\\${}]/g, '\\$&');
}

/** The exim binary: $EXIM4_BIN, the copy install-peers.sh unpacks, or an installed exim4. */
export function eximBinary(): string | undefined {
  const candidates = [process.env.EXIM4_BIN, join(REPO_ROOT, '.peers/exim/root/usr/sbin/exim4'), '/usr/sbin/exim4'];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

function eximConfig(dir: string): string {
  const conf = join(dir, 'exim.conf');
  // exim clears its environment at start-up; libfaketime reads these on every time() call.
  writeFileSync(conf, 'primary_hostname = test\nkeep_environment = TZ : FAKETIME_TIMESTAMP_FILE : FAKETIME_NO_CACHE\n');
  return conf;
}

/**
 * One expansion per line, prefixed with "[X]" so that a successful result is told apart from exim's
 * "Failed: ..." and so that the line neither starts with an upper-case letter (-be takes that as a macro
 * definition) nor lets exim substitute its built-in macros (_HAVE_..., matched anywhere in a line whose
 * first macro-like word starts with "_"; see readconf.c macros_expand).
 */
function eximLine(expr: string): string {
  const line = `[X]${expr}`;
  if (/[\r\n\0]/.test(line)) throw new RangeError(`exim -be reads lines: no CR, LF or NUL in ${JSON.stringify(expr)}`);
  // fgets() in get_stdinput() reads 1023 bytes at a time and a line ending in "\" continues it.
  if (Buffer.byteLength(line) > 1000) throw new RangeError(`exim -be line too long (${Buffer.byteLength(line)} bytes)`);
  if (/[\\\s]$/.test(line)) throw new RangeError(`exim -be would strip or continue a line ending in ${JSON.stringify(line.slice(-1))}`);
  return line;
}

function parseEximOutput(line: string, expr: string): EximResult {
  // Output lines are "> " (the prompt, printed before reading) followed by the result.
  if (!line.startsWith('> ')) throw new Error(`exim -be: unexpected output ${JSON.stringify(line)} for ${JSON.stringify(expr)}`);
  const body = latin1ToUtf8(line.slice(2));
  if (body.startsWith('[X]')) return { ok: true, value: body.slice(3) };
  if (body.startsWith('Failed: ')) return { ok: false, error: body.slice(8) };
  throw new Error(`exim -be: unexpected result ${JSON.stringify(body)} for ${JSON.stringify(expr)}`);
}

/**
 * A long-running `exim -be` reading expansion strings from stdin, one per line. exim prints "> ", then
 * flushes, before reading each line, so every result is on our side before the next prompt: we can move
 * the clock between batches without restarting exim.
 */
export class EximSession {
  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly out: LineQueue,
    private readonly clock: FaketimeFile,
    private readonly dir: string,
  ) {}

  static async start(): Promise<EximSession> {
    const bin = eximBinary();
    if (!bin) throw new Error('exim not found: run `bash scripts/install-peers.sh` (or set EXIM4_BIN)');
    const lib = findLibfaketime();
    if (!lib) throw new Error('libfaketime not found: run `bash scripts/install-peers.sh`');
    const dir = mkdtempSync(join(tmpdir(), 'batv-exim-'));
    const clock = new FaketimeFile(dir);
    clock.set(Date.UTC(2026, 0, 1, 12));
    const conf = eximConfig(dir);
    const child = spawn(bin, ['-C', conf, '-be'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...clock.env(lib) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const stderr = { text: '' };
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => { stderr.text += d; });
    child.stdin.on('error', () => { /* reported through the line queue */ });
    const out = new LineQueue(child.stdout, () => `exim -be (pid ${child.pid}) ended: ${stderr.text.trim()}`);
    const session = new EximSession(child, out, clock, dir);
    // Prove it works, including the clock (the published example vector).
    const [probe] = await session.expand(['${prvs{user@example.com}{secret}{5}}'], Date.UTC(2026, 0, 1, 12));
    if (!probe?.ok || probe.value !== 'prvs=5461cd18bc=user@example.com') {
      await session.stop();
      throw new Error(`exim -be probe failed: ${JSON.stringify(probe)} ${stderr.text}`);
    }
    return session;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Expands every expression with exim's clock at `nowMs`; one result per expression, in order. */
  async expand(exprs: readonly string[], nowMs: number): Promise<EximResult[]> {
    if (exprs.length === 0) return [];
    this.clock.set(nowMs);
    const lines = exprs.map(eximLine);
    const pending = exprs.map(() => this.out.next());
    this.child.stdin.write(lines.map((l) => `${l}\n`).join(''));
    const raw = await Promise.all(pending);
    return raw.map((line, i) => parseEximOutput(line, exprs[i]!));
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.child.stdin.end();
    const exited = new Promise<void>((r) => (this.child.exitCode !== null ? r() : this.child.once('exit', () => r())));
    const t = new Promise<'t'>((r) => setTimeout(() => r('t'), 2000).unref());
    if ((await Promise.race([exited, t])) === 't') await stopChild(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * One-shot: runs ONE `exim -be` for all expressions (fed on stdin) with the clock frozen at `faketime`
 * (epoch ms; default: 2026-01-01T12:00:00Z).
 */
export async function eximExpand(exprs: readonly string[], opts?: { faketime?: number }): Promise<EximResult[]>;
export async function eximExpand(expr: string, opts?: { faketime?: number }): Promise<EximResult>;
export async function eximExpand(
  e: string | readonly string[],
  opts: { faketime?: number } = {},
): Promise<EximResult | EximResult[]> {
  const exprs = typeof e === 'string' ? [e] : e;
  const bin = eximBinary();
  const lib = findLibfaketime();
  if (!bin || !lib) throw new Error('exim or libfaketime not found: run `bash scripts/install-peers.sh`');
  const dir = mkdtempSync(join(tmpdir(), 'batv-exim1-'));
  try {
    const clock = new FaketimeFile(dir);
    clock.set(opts.faketime ?? Date.UTC(2026, 0, 1, 12));
    const conf = eximConfig(dir);
    const input = exprs.map((x) => `${eximLine(x)}\n`).join('');
    const r = spawnSync(bin, ['-C', conf, '-be'], {
      input: Buffer.from(input, 'utf8'),
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...clock.env(lib) },
      timeout: 20_000,
    });
    if (r.error) throw r.error;
    const text = r.stdout.toString('latin1');
    const lines = text.split('\n');
    // N result lines, then the last prompt ("> ") and a newline at EOF.
    if (lines.length < exprs.length) throw new Error(`exim -be: ${lines.length} lines for ${exprs.length} expressions: ${text} ${r.stderr.toString()}`);
    const results = exprs.map((x, i) => parseEximOutput(lines[i]!, x));
    return typeof e === 'string' ? results[0]! : results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Perl Mail::SRS

export interface SrsPeerConfig {
  /** Raw secret bytes; the first signs, all verify. */
  readonly secrets: readonly Uint8Array[];
  readonly separator: '=' | '+' | '-';
  readonly hashLength: number;
  readonly hashMin: number;
  /** Mail::SRS only (postsrsd 1.x has no option: always 21). Mail::SRS turns 0 into 21. */
  readonly maxAgeDays: number;
  /** The SRS (alias) domain. */
  readonly domain: string;
}

export type PerlSrsResult =
  | { ok: true; value: string; warnings: string }
  | { ok: false; error: string; warnings: string };

const hex = (s: string | Uint8Array) => Buffer.from(s).toString('hex');

/**
 * ONE perl process running test/helpers/mailsrs.pl. Requests are pipelined (written at once, answered
 * in order), each with its own configuration and clock.
 */
export class MailSrs {
  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly out: LineQueue,
    readonly version: string,
  ) {}

  static async start(): Promise<MailSrs> {
    const child = spawn('perl', [PERL_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PERL_UNICODE: '' } });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => { stderr += d; });
    child.stdin.on('error', () => { /* reported through the line queue */ });
    const out = new LineQueue(child.stdout, () => `mailsrs.pl (pid ${child.pid}) ended: ${stderr.trim()}`);
    const ready = await out.next();
    const [tag, v] = ready.split('\t');
    if (tag !== 'READY') throw new Error(`mailsrs.pl: unexpected greeting ${ready}`);
    return new MailSrs(child, out, Buffer.from(v ?? '', 'hex').toString());
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private line(op: 'forward' | 'reverse', address: string, cfg: SrsPeerConfig, nowMs: number): string {
    return [
      op,
      String(Math.floor(nowMs / 1000)),
      cfg.secrets.map((s) => hex(s)).join(','),
      cfg.separator,
      String(cfg.hashLength),
      String(cfg.hashMin),
      String(cfg.maxAgeDays),
      hex(cfg.domain),
      hex(address),
    ].join('\t');
  }

  /** Runs many requests in one round trip. */
  async run(reqs: readonly { op: 'forward' | 'reverse'; address: string; cfg: SrsPeerConfig; nowMs: number }[]): Promise<PerlSrsResult[]> {
    if (reqs.length === 0) return [];
    const pending = reqs.map(() => this.out.next());
    this.child.stdin.write(reqs.map((r) => `${this.line(r.op, r.address, r.cfg, r.nowMs)}\n`).join(''));
    return (await Promise.all(pending)).map((l) => {
      const [status, body, warn] = l.split('\t');
      const text = fromBytes(Buffer.from(body ?? '', 'hex'));
      const warnings = Buffer.from(warn ?? '', 'hex').toString('utf8');
      if (status === 'OK') return { ok: true, value: text, warnings };
      if (status === 'ERR') return { ok: false, error: text, warnings };
      throw new Error(`mailsrs.pl: unexpected reply ${l}`);
    });
  }

  forward(address: string, cfg: SrsPeerConfig, nowMs: number): Promise<PerlSrsResult> {
    return this.run([{ op: 'forward', address, cfg, nowMs }]).then((r) => r[0]!);
  }

  reverse(address: string, cfg: SrsPeerConfig, nowMs: number): Promise<PerlSrsResult> {
    return this.run([{ op: 'reverse', address, cfg, nowMs }]).then((r) => r[0]!);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.child.stdin.end();
    const exited = new Promise<void>((r) => (this.child.exitCode !== null ? r() : this.child.once('exit', () => r())));
    const t = new Promise<'t'>((r) => setTimeout(() => r('t'), 2000).unref());
    if ((await Promise.race([exited, t])) === 't') await stopChild(this.child);
  }
}

/** Starts the one Mail::SRS process (see MailSrs). */
export function mailSrs(): Promise<MailSrs> {
  return MailSrs.start();
}

// ---------------------------------------------------------------------------------------------------------
// postsrsd 1.x (tcp_table)

export type TableReply = { code: 200; value: string } | { code: 500; text: string } | { code: number; text: string };

/** %XX-encodes every byte except a conservative set (postsrsd url-decodes the key). */
export function tcpTableEncode(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9@._=+-]/.test(c) ? c : `%${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

export function tcpTableDecode(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '%' && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(s.charCodeAt(i) & 0xff);
  }
  return fromBytes(Uint8Array.from(bytes));
}

/** One persistent tcp_table connection: `get <key>` → `200 <value>` / `500 <text>`. */
class TableConnection {
  private constructor(private readonly sock: net.Socket, private readonly out: LineQueue) {}

  static connect(port: number): Promise<TableConnection> {
    return new Promise((resolveConn, reject) => {
      const sock = net.createConnection({ host: '127.0.0.1', port });
      sock.once('error', reject);
      sock.once('connect', () => {
        sock.off('error', reject);
        sock.on('error', () => { /* surfaces as a closed line queue */ });
        sock.setNoDelay(true);
        resolveConn(new TableConnection(sock, new LineQueue(sock, () => `tcp_table connection to port ${port} closed`)));
      });
    });
  }

  async get(keys: readonly string[]): Promise<TableReply[]> {
    if (keys.length === 0) return [];
    for (const k of keys) if (k === '') throw new RangeError('postsrsd closes the connection on an empty key');
    // postsrsd writes each reply separately and Nagle holds the second one until our (delayed, ~40 ms)
    // ACK: a pipelined batch costs ~40 ms however small. Lock-step (our next request carries the ACK)
    // costs one round trip (~0.5 ms) per key, so small batches go lock-step, large ones pipelined.
    let lines: string[];
    if (keys.length <= 64) {
      lines = [];
      for (const k of keys) {
        const next = this.out.next();
        this.sock.write(`get ${tcpTableEncode(k)}\n`);
        lines.push(await next);
      }
    } else {
      const pending = keys.map(() => this.out.next());
      this.sock.write(keys.map((k) => `get ${tcpTableEncode(k)}\n`).join(''));
      lines = await Promise.all(pending);
    }
    return lines.map((l) => {
      const m = /^(\d{3}) (.*)$/s.exec(l.replace(/\r$/, ''));
      if (!m) throw new Error(`tcp_table: malformed reply ${JSON.stringify(l)}`);
      const code = Number(m[1]);
      return code === 200 ? { code: 200, value: tcpTableDecode(m[2]!) } : { code, text: latin1ToUtf8(m[2]!) };
    });
  }

  close(): Promise<void> {
    return new Promise((r) => {
      if (this.sock.destroyed) return r();
      this.sock.once('close', () => r());
      this.sock.end();
      setTimeout(() => { this.sock.destroy(); r(); }, 1000).unref();
    });
  }
}

/** Is a TCP port on 127.0.0.1 free right now? */
function portFree(port: number): Promise<boolean> {
  return new Promise((r) => {
    const srv = net.createServer();
    srv.once('error', () => r(false));
    srv.listen({ host: '127.0.0.1', port, exclusive: true }, () => srv.close(() => r(true)));
  });
}

/** Ports below 32768 (Linux's ephemeral range starts there, so outgoing connections never take them). */
async function pickPorts(n: number): Promise<number[]> {
  const out: number[] = [];
  for (let tries = 0; out.length < n && tries < 200; tries++) {
    const p = 20000 + Math.floor(Math.random() * 12767);
    if (!out.includes(p) && (await portFree(p))) out.push(p);
  }
  if (out.length < n) throw new Error('no free TCP ports below 32768 on 127.0.0.1');
  return out;
}

export interface PostsrsdOptions extends Omit<SrsPeerConfig, 'maxAgeDays'> {
  readonly alwaysRewrite?: boolean;
}

/**
 * postsrsd in the foreground (no -D, no -c chroot, no -u user, no -p pidfile: we hold its PID), on
 * 127.0.0.1 with two free ports, its clock in a libfaketime timestamp file. It forks one child per
 * connection; we keep one persistent connection per port and close them before stopping the parent.
 */
export class Postsrsd {
  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly dir: string,
    private readonly clock: FaketimeFile,
    private readonly fwd: TableConnection,
    private readonly rev: TableConnection,
    readonly options: PostsrsdOptions,
    readonly ports: { forward: number; reverse: number },
  ) {}

  static async start(options: PostsrsdOptions): Promise<Postsrsd> {
    const lib = findLibfaketime();
    if (!lib) throw new Error('libfaketime not found: run `bash scripts/install-peers.sh`');
    if (!existsSync(POSTSRSD_BIN)) throw new Error(`${POSTSRSD_BIN} not found: run \`bash scripts/install-peers.sh\``);
    for (const s of options.secrets) {
      if (s.length === 0 || s.includes(10) || s.includes(13) || s.includes(0)) {
        throw new RangeError('postsrsd reads one secret per line: secrets must be non-empty, without CR, LF or NUL');
      }
    }
    const dir = mkdtempSync(join(tmpdir(), 'batv-postsrsd-'));
    const secretsFile = join(dir, 'secrets');
    writeFileSync(secretsFile, Buffer.concat(options.secrets.flatMap((s) => [Buffer.from(s), Buffer.from('\n')])), { mode: 0o600 });
    const clock = new FaketimeFile(dir);
    clock.set(Date.UTC(2026, 0, 1, 12));
    let lastError = '';
    for (let attempt = 0; attempt < 5; attempt++) {
      const [fport, rport] = (await pickPorts(2)) as [number, number];
      const args = [
        `-s${secretsFile}`, `-d${options.domain}`, `-a${options.separator}`,
        `-n${options.hashLength}`, `-N${options.hashMin}`,
        `-f${fport}`, `-r${rport}`, '-l127.0.0.1', '-4',
        ...(options.alwaysRewrite ? ['-A'] : []),
      ];
      const child = spawn(POSTSRSD_BIN, args, {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...clock.env(lib) },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (d: string) => { stderr += d; });
      child.stdout.resume();
      const fwd = await connectWhenUp(fport, child);
      if (fwd) {
        const rev = await TableConnection.connect(rport);
        return new Postsrsd(child, dir, clock, fwd, rev, options, { forward: fport, reverse: rport });
      }
      lastError = `postsrsd ${args.join(' ')}: ${stderr.trim() || `exit ${child.exitCode}`}`;
      await stopChild(child);
    }
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`postsrsd did not start: ${lastError}`);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Forward lookups with postsrsd's clock at `nowMs`. */
  forward(addresses: readonly string[], nowMs: number): Promise<TableReply[]> {
    this.clock.set(nowMs);
    return this.fwd.get(addresses);
  }

  /** Reverse lookups with postsrsd's clock at `nowMs`. */
  reverse(addresses: readonly string[], nowMs: number): Promise<TableReply[]> {
    this.clock.set(nowMs);
    return this.rev.get(addresses);
  }

  /**
   * Closes our connections (their postsrsd children then exit), waits until postsrsd has reaped them (it
   * calls waitpid once per poll loop, at least once a second; children of a killed parent would be left
   * to PID 1, which in some containers never reaps them), then ends postsrsd by its PID.
   */
  async stop(): Promise<void> {
    await Promise.all([this.fwd.close(), this.rev.close()]);
    const pid = this.child.pid;
    const deadline = Date.now() + 5000;
    while (pid !== undefined && this.child.exitCode === null && childrenOf(pid).length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await stopChild(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Connects once postsrsd listens (the connection is kept: every probe would fork a postsrsd child). */
async function connectWhenUp(port: number, child: ChildProcessWithoutNullStreams): Promise<TableConnection | null> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null || child.signalCode !== null) return null;
    try {
      return await TableConnection.connect(port);
    } catch {
      await new Promise((r) => setTimeout(r, 30));
    }
  }
  return null;
}

/** PIDs whose parent is `pid` (from /proc/N/stat), zombies included. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Starts postsrsd (see Postsrsd). */
export function postsrsd(options: PostsrsdOptions): Promise<Postsrsd> {
  return Postsrsd.start(options);
}

// ---------------------------------------------------------------------------------------------------------
// Availability (synchronous, for it.skipIf at collection time)

export interface PeerCheck {
  readonly available: boolean;
  readonly reason: string;
}

let eximCheck: PeerCheck | undefined;
let perlCheck: PeerCheck | undefined;
let postsrsdCheck: PeerCheck | undefined;

/** exim unpacked (or installed), runnable, and libfaketime moves its clock. */
export function checkExim(): PeerCheck {
  if (eximCheck) return eximCheck;
  const bin = eximBinary();
  const lib = findLibfaketime();
  if (!bin) return (eximCheck = { available: false, reason: 'exim4 binary not found (.peers/exim/root/usr/sbin/exim4, /usr/sbin/exim4, $EXIM4_BIN)' });
  if (!lib) return (eximCheck = { available: false, reason: 'libfaketime.so.1 not found' });
  const dir = mkdtempSync(join(tmpdir(), 'batv-eximchk-'));
  try {
    const clock = new FaketimeFile(dir);
    clock.set(Date.UTC(2026, 0, 1, 12));
    const r = spawnSync(bin, ['-C', eximConfig(dir), '-be', '${prvs{user@example.com}{secret}{5}}'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...clock.env(lib) },
      timeout: 10_000,
    });
    const out = r.stdout?.toString().trim() ?? '';
    eximCheck = out === 'prvs=5461cd18bc=user@example.com'
      ? { available: true, reason: bin }
      : { available: false, reason: `${bin} -be probe gave ${JSON.stringify(out)} ${r.stderr?.toString().trim() ?? ''} ${r.error?.message ?? ''}` };
    return eximCheck;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function checkPerlSrs(): PeerCheck {
  if (perlCheck) return perlCheck;
  const r = spawnSync('perl', ['-MMail::SRS', '-MDigest::HMAC_SHA1', '-e', 'print $Mail::SRS::VERSION'], { timeout: 10_000 });
  perlCheck = r.status === 0
    ? { available: true, reason: `Mail::SRS ${r.stdout.toString()}` }
    : { available: false, reason: `perl Mail::SRS not usable: ${r.stderr?.toString().trim() ?? r.error?.message}` };
  return perlCheck;
}

export function checkPostsrsd(): PeerCheck {
  if (postsrsdCheck) return postsrsdCheck;
  if (!existsSync(POSTSRSD_BIN)) return (postsrsdCheck = { available: false, reason: `${POSTSRSD_BIN} not found` });
  if (!findLibfaketime()) return (postsrsdCheck = { available: false, reason: 'libfaketime.so.1 not found' });
  const r = spawnSync(POSTSRSD_BIN, ['-v'], { timeout: 10_000 });
  postsrsdCheck = r.status === 0
    ? { available: true, reason: `postsrsd ${r.stdout.toString().trim()}` }
    : { available: false, reason: `postsrsd -v failed: ${r.stderr?.toString().trim()}` };
  return postsrsdCheck;
}

export const haveExim = (): boolean => checkExim().available;
export const havePerlSrs = (): boolean => checkPerlSrs().available;
export const havePostsrsd = (): boolean => checkPostsrsd().available;

/**
 * Whether a suite runs: always in CI (a missing peer then fails loudly), locally only when the peer is
 * there (else a one-line notice says how to install it).
 */
export function shouldRun(name: string, check: PeerCheck): boolean {
  if (check.available || REQUIRE_PEERS) return true;
  console.warn(`[peers] skipping ${name}: ${check.reason}. Install the peers with: bash scripts/install-peers.sh`);
  try {
    mkdirSync(dirname(PEER_SKIP_LOG), { recursive: true });
    appendFileSync(PEER_SKIP_LOG, `${JSON.stringify({ name, reason: check.reason })}\n`);
  } catch {
    // the notice above still says it
  }
  return false;
}

/** For beforeAll: a missing peer is an error (in CI, or whenever the suite runs). */
export function requirePeer(name: string, check: PeerCheck): void {
  if (!check.available) throw new Error(`${name} is not available: ${check.reason}. Run: bash scripts/install-peers.sh`);
}

// ---------------------------------------------------------------------------------------------------------
// Shared case generators (addresses, secrets)

const UTF8_CHARS = ['é', 'ü', 'ß', 'ø', 'ж', 'λ', '中', '文', 'ñ', 'É', 'Ö', '😀', 'ı', 'K'];
const ATEXT_ASCII = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&\'*+-/=?^_`{|}~';

/** A dot-atom local part: ASCII atext (upper case, + = . - digits ...) with some UTF-8. */
export function localPartArb(opts: { utf8?: boolean; maxAtoms?: number } = {}): fc.Arbitrary<string> {
  const chars = [...ATEXT_ASCII, ...(opts.utf8 === false ? [] : UTF8_CHARS)];
  const plainish = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=-_');
  const ch = fc.oneof({ weight: 3, arbitrary: plainish }, { weight: 1, arbitrary: fc.constantFrom(...chars) });
  const atom = fc.array(ch, { minLength: 1, maxLength: 10 }).map((a) => a.join(''));
  return fc.array(atom, { minLength: 1, maxLength: opts.maxAtoms ?? 3 }).map((a) => a.join('.'));
}

/** A quoted local part ("john doe", "a.b c"), never with a backslash; with "@" only if asked. */
export function quotedLocalArb(opts: { at?: boolean } = {}): fc.Arbitrary<string> {
  const ch = fc.constantFrom(...'abcXYZ019 .,;:()<>[]=+-', ...(opts.at ? ['@'] : []), 'é', '中');
  return fc.array(ch, { minLength: 1, maxLength: 12 }).map((a) => `"${a.join('')}"`);
}

/** A domain: 1-4 labels of letters (mixed case), digits and hyphens, sometimes a UTF-8 (U-label) label. */
export function domainArb(): fc.Arbitrary<string> {
  const ldh = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789');
  const asciiLabel = fc
    .tuple(ldh, fc.array(fc.oneof({ weight: 6, arbitrary: ldh }, { weight: 1, arbitrary: fc.constant('-') }), { maxLength: 12 }), ldh)
    .map(([a, mid, z]) => `${a}${mid.join('')}${z}`);
  const utfLabel = fc.array(fc.constantFrom(...'abcxyz', 'ü', 'é', 'ñ', 'ж', '中', '文'), { minLength: 1, maxLength: 8 }).map((a) => a.join(''));
  const label = fc.oneof({ weight: 5, arbitrary: asciiLabel }, { weight: 1, arbitrary: utfLabel });
  const tld = fc.constantFrom('com', 'org', 'NET', 'De', 'example', 'xn--p1ai', 'рф');
  return fc.tuple(fc.array(label, { minLength: 1, maxLength: 3 }), tld).map(([ls, t]) => [...ls, t].join('.'));
}

/** Printable ASCII (0x20-0x7e), 0..max chars. */
export function asciiSecretArb(minLength: number, maxLength: number): fc.Arbitrary<string> {
  return fc.array(fc.integer({ min: 0x20, max: 0x7e }), { minLength, maxLength }).map((a) => String.fromCharCode(...a));
}

/** Mixed ASCII and UTF-8 text of at most `maxBytes` UTF-8 bytes (no control characters). */
export function utf8SecretArb(minBytes: number, maxBytes: number): fc.Arbitrary<string> {
  const ch = fc.oneof(
    fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    fc.constantFrom(...UTF8_CHARS, '€', '✓', 'Ω', '𝄞', 'ÿ', 'ā'),
  );
  return fc.array(ch, { minLength: minBytes, maxLength: maxBytes }).map((a) => {
    let s = '';
    for (const c of a) {
      if (utf8Length(s + c) > maxBytes) break;
      s += c;
    }
    while (utf8Length(s) < minBytes) s += 'x';
    return s;
  });
}

export const B32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
export const B64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

// ---------------------------------------------------------------------------------------------------------
// Assertions

export interface Mismatch {
  /** Everything needed to reproduce: secret(s), date, address, options. */
  readonly input: string;
  readonly ours: unknown;
  readonly theirs: unknown;
}

/**
 * Fails on the first mismatch with an exact assertion (expect(ours).toBe(theirs)) after printing every
 * mismatch (up to 25) with its full input.
 */
export function expectNoMismatches(title: string, mismatches: readonly Mismatch[]): void {
  if (mismatches.length === 0) return;
  const show = mismatches.slice(0, 25).map((m) => `${m.input}\n  ours:   ${JSON.stringify(m.ours)}\n  theirs: ${JSON.stringify(m.theirs)}`);
  console.error(`${title}: ${mismatches.length} mismatch(es)\n${show.join('\n')}${mismatches.length > 25 ? `\n... and ${mismatches.length - 25} more` : ''}`);
  const first = mismatches[0]!;
  expect(first.ours, `${title}: ${first.input}`).toStrictEqual(first.theirs);
}

// ---------------------------------------------------------------------------------------------------------
// SRS case generators (shared by srs-perl and srs-postsrsd)

export type Sep = '=' | '+' | '-';
export const sepArb: fc.Arbitrary<Sep> = fc.constantFrom('=', '+', '-');

/** An SRS secret: 1..64 bytes of printable ASCII or UTF-8 (postsrsd reads secrets as lines). */
export const srsSecretArb: fc.Arbitrary<string> = fc.oneof(asciiSecretArb(1, 64), utf8SecretArb(1, 64));

/** A random-case copy of an ASCII string (domains compare case-insensitively). */
export function randomCaseArb(s: string): fc.Arbitrary<string> {
  return fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length })
    .map((flips) => [...s].map((c, i) => (flips[i] ? c.toUpperCase() : c.toLowerCase())).join(''));
}

const b64HashArb = fc.array(fc.constantFrom(...B64_ALPHABET), { minLength: 4, maxLength: 8 }).map((a) => a.join(''));
const b32StampArb = fc.array(fc.constantFrom(...B32_ALPHABET, ...B32_ALPHABET.toLowerCase()), { minLength: 2, maxLength: 2 }).map((a) => a.join(''));

/**
 * Senders to forward: plain (upper case, + = - . digits, UTF-8), quoted, SRS0 and SRS1 senders of some
 * other forwarder (all three separators, lower-case tags), senders in the SRS domain itself, and
 * "SRS0xyz" local parts that are not SRS at all.
 */
export function srsSenderArb(alias: string): fc.Arbitrary<string> {
  const local = localPartArb();
  const dom = domainArb();
  const srs0Local = fc
    .tuple(fc.constantFrom('SRS0', 'srs0', 'Srs0'), sepArb, b64HashArb, b32StampArb, dom, local)
    .map(([t, sep, h, tt, host, user]) => `${t}${sep}${h}=${tt}=${host}=${user}`);
  const srs1Local = fc
    .tuple(fc.constantFrom('SRS1', 'srs1'), sepArb, b64HashArb, dom, srs0Local)
    .map(([t, sep, h, h1, s0]) => `${t}${sep}${h}=${h1}=${s0.slice(4)}`);
  return fc.oneof(
    { weight: 10, arbitrary: fc.tuple(local, dom).map(([l, d]) => `${l}@${d}`) },
    { weight: 1, arbitrary: fc.tuple(quotedLocalArb(), dom).map(([l, d]) => `${l}@${d}`) },
    { weight: 3, arbitrary: fc.tuple(srs0Local, dom).map(([l, d]) => `${l}@${d}`) },
    { weight: 3, arbitrary: fc.tuple(srs1Local, dom).map(([l, d]) => `${l}@${d}`) },
    { weight: 1, arbitrary: fc.tuple(local, randomCaseArb(alias)).map(([l, d]) => `${l}@${d}`) },
    { weight: 1, arbitrary: fc.tuple(srs0Local, randomCaseArb(alias)).map(([l, d]) => `${l}@${d}`) },
    { weight: 1, arbitrary: fc.tuple(local, dom).map(([l, d]) => `SRS0${l.replace(/^[=+-]+/, '') || 'x'}@${d}`) },
  ).filter((a) => utf8Length(a) < 240);
}

/** An SRS domain (lower case, ASCII). */
export const aliasDomainArb: fc.Arbitrary<string> = fc
  .tuple(fc.constantFrom('fwd', 'srs', 'mx1', 'forwarder', 'lists'), fc.constantFrom('example.net', 'example.org', 'example.com', 'b.example'))
  .map(([a, b]) => `${a}.${b}`);

/** Days around a wrap of the 10-bit base32 stamp (day mod 1024 = 1023 -> 0), in three different cycles. */
export const stampWrapDayArb: fc.Arbitrary<number> = fc.oneof(
  fc.integer({ min: 20_479 - 25, max: 20_479 + 3 }), // 2026-01-26 is slot 1023
  fc.integer({ min: 19_455 - 25, max: 19_455 + 3 }),
  fc.integer({ min: 46_079 - 25, max: 46_079 + 3 }),
);

/** A sign day: spread over 1971..2099, or close to a stamp wrap. */
export const srsDayArb: fc.Arbitrary<number> = fc.oneof(
  { weight: 1, arbitrary: fc.integer({ min: 366, max: 47_481 }) },
  { weight: 1, arbitrary: stampWrapDayArb },
);

/** The SRS hash our core would compute for arbitrary fields (to craft validly signed odd addresses). */
export function craftSrsHash(secret: string, fields: readonly string[], chars = 4): string {
  // Independent of src/: node:crypto HMAC-SHA1 over the ASCII-lower-cased fields, standard base64.
  const mac = createHmac('sha1', Buffer.from(secret, 'utf8'));
  for (const f of fields) mac.update(Buffer.from(f.replace(/[A-Z]+/g, (m) => m.toLowerCase()), 'utf8'));
  return mac.digest('base64').slice(0, chars);
}
