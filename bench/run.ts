/**
 * Load benchmark of the whole proxy on one machine (never part of `npm test`). Four sides, run back to
 * back for every scenario and repetition (medians over repetitions):
 *
 *   direct  load generator ─────────────────────────────────▶ next-hop sink    (the limit)
 *   bare    load generator ──▶ bare.js (smtp-server alone: accepts and discards / refuses null-sender RCPT)
 *   naive   load generator ──▶ relay.js (smtp-server + nodemailer pool) ──▶ next-hop sink
 *   proxy   load generator ──▶ batv-proxy (child process) ──▶ next-hop sink
 *
 * bare.js and relay.js are the yardsticks of ../shared/bench/calibration, run from there (started once
 * each, NODE_PATH=<repo>/node_modules). The targets are ratios of the proxy to them, measured in the
 * same sitting, because absolute rates on shared machines drift by 2x within minutes.
 *
 * Tools: Postfix's smtp-source / smtp-sink when installed (the same ones ../shared/bench/run.sh uses),
 * else a built-in bounded load generator and a minimal built-in sink, each in its own child process.
 * Also measured: latency per transaction with a small built-in client (p50/p99 per side), RSS rise
 * while relaying one 50 MiB message (bare, naive, proxy), proxy RSS with 1,000 idle connections.
 *
 *   npm run bench                        # full run, 3 repetitions, ~15-25 minutes
 *   npm run bench -- --quick             # short counts, one repetition, ~4 minutes
 *   npm run bench -- --quick --scale 0.1 # smoke run: counts x0.1 (also BENCH_SCALE=0.1), ~1-2 minutes
 *   npm run bench -- --json out.json     # also write the results as JSON
 *   npm run bench -- --builtin           # use the built-in sink and generator even if Postfix is installed
 *   npm run bench -- --harness           # afterwards also run ../shared/bench/run.sh (limit + proxy)
 *   npm run bench -- --only 'out_4k|lat' # only the parts whose names match
 *   npm run bench -- --calibration DIR   # where bare.js, relay.js, batv.js are (also BENCH_CALIBRATION)
 *
 * Everything listens on 127.0.0.1 on ports below 32768 found free; every run is bounded in count and
 * in time; every process started here is stopped by its PID (also on errors and Ctrl-C).
 */
import { spawn, spawnSync, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { generatorRole, HOST, messageChunks, MIB, sinkRole, SmtpConn, type LoadJob, type LoadResult } from './smtp-tools.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const SELF = fileURLToPath(import.meta.url);
const SENDER = 'sender@example.com';
const RCPT = 'rcpt@example.org';
const PLAIN_RCPT = 'user@example.org';
const FORGED_RCPT = 'prvs=0000000000=user@example.org';

// ───────────────────────────────────────────────────────────── orchestrator: processes

const started = new Set<ChildProcess>();

function track(child: ChildProcess): ChildProcess {
  started.add(child);
  child.once('exit', () => started.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`; by PID only. */
async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = once(child, 'exit');
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

function killAllNow(): void {
  for (const c of started) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch { /* gone */ }
    }
  }
}

function findTool(name: string): string | null {
  // .peers/bin first: scripts/install-peers.sh unpacks Postfix there without installing it.
  const dirs = [path.join(ROOT, '.peers/bin'), ...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/lib/postfix/sbin', '/usr/libexec/postfix'];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      if (statSync(p).isFile()) return p;
    } catch { /* next */ }
  }
  return null;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, HOST, () => s.close(() => resolve(true)));
  });
}

/** `n` consecutive free ports in 20000..32000 (below the ephemeral range), starting at a random place. */
async function freePorts(n: number, avoid: ReadonlySet<number> = new Set()): Promise<number[]> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20000 + Math.floor(Math.random() * (12000 - n));
    const ports = Array.from({ length: n }, (_, i) => base + i);
    if (ports.some((p) => avoid.has(p))) continue;
    let ok = true;
    for (const p of ports) if (!(await portFree(p))) { ok = false; break; }
    if (ok) return ports;
  }
  throw new Error('no free ports found below 32768');
}

async function waitListening(port: number, timeoutMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) throw new Error(`process exited before listening on ${port}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: HOST, port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on ${HOST}:${port} after ${timeoutMs} ms`);
}

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  return Number(r.stdout?.trim()) || 100;
})();

/** CPU seconds (user+system) of a process, from /proc (Linux); null elsewhere. */
function cpuSeconds(pid: number): number | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return null;
  }
}

/** Resident set size in KiB, from /proc (Linux) or ps. */
function rssKb(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    const r = spawnSync('ps', ['-o', 'rss=', '-p', String(pid)], { encoding: 'utf8' });
    return Number(r.stdout?.trim()) || null;
  }
}

/** Samples RSS every 50 ms until stopped; resolves with the peak in KiB. */
function rssSampler(pid: number): { stop(): number } {
  let peak = rssKb(pid) ?? 0;
  const timer = setInterval(() => {
    const r = rssKb(pid);
    if (r !== null && r > peak) peak = r;
  }, 50);
  return {
    stop() {
      clearInterval(timer);
      const r = rssKb(pid);
      if (r !== null && r > peak) peak = r;
      return peak;
    },
  };
}

// ───────────────────────────────────────────────────────────── orchestrator: sinks, generator, proxy

interface Sink {
  readonly port: number;
  readonly pid: number;
  readonly what: string;
  /** Messages received so far. */
  count(): Promise<number>;
  stop(): Promise<void>;
}

function ipcRequest<T>(child: ChildProcess, msg: object, type: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.off('message', on); reject(new Error(`no ${type} from child ${child.pid} in ${timeoutMs} ms`)); }, timeoutMs);
    const on = (m: { type: string }): void => {
      if (m.type !== type) return;
      clearTimeout(timer);
      child.off('message', on);
      resolve(m as T);
    };
    child.on('message', on);
    child.send(msg);
  });
}

async function forkRole(args: string[]): Promise<ChildProcess> {
  const child = track(fork(SELF, ['--role', ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  await ipcRequest(child, { type: 'hello' }, 'ready', 20_000).catch(async (e: Error) => {
    await stopChild(child);
    throw e;
  });
  return child;
}

async function startSink(port: number, smtpSink: string | null, reject: boolean): Promise<Sink> {
  if (smtpSink) {
    const user = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
    const args = reject
      ? [...user, '-C', '-m', '1024', '-f', 'RCPT', '-B', '550 5.1.1 Recipient address rejected', `${HOST}:${port}`, '1024']
      : [...user, '-c', '-C', '-m', '1024', `${HOST}:${port}`, '1024'];
    const child = track(spawn(smtpSink, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let tail = '';
    let err = '';
    child.stdout?.on('data', (b: Buffer) => { tail = (tail + b.toString('latin1')).slice(-400); });
    child.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-2000); });
    await waitListening(port, 10_000, child).catch((e: Error) => { throw new Error(`smtp-sink did not start: ${e.message} ${err}`); });
    return {
      port, pid: child.pid!, what: 'smtp-sink',
      async count() {
        const all = [...tail.matchAll(/mesg=(\d+)/g)];
        return all.length ? Number(all[all.length - 1]![1]) : 0;
      },
      stop: () => stopChild(child),
    };
  }
  const child = await forkRole(['sink', String(port), reject ? 'reject' : 'accept']);
  return {
    port, pid: child.pid!, what: 'built-in sink',
    async count() {
      const r = await ipcRequest<{ messages: number }>(child, { type: 'count' }, 'count', 5000);
      return r.messages;
    },
    stop: () => stopChild(child),
  };
}

/** A load run's result; `fatal`: smtp-source gave up (a `fatal:` line or a non-zero exit), so what it sent is unknown. */
type GenResult = LoadResult & { fatal?: boolean };

interface Generator {
  readonly what: string;
  /** True when `delivered` is counted by the generator itself (the built-in one); smtp-source does not count. */
  readonly countsDelivered: boolean;
  run(job: LoadJob): Promise<GenResult>;
  stop(): Promise<void>;
}

async function startGenerator(smtpSource: string | null): Promise<Generator> {
  if (smtpSource) {
    return {
      what: 'smtp-source',
      countsDelivered: false,
      run(job) {
        // -A: go on after a refusal; -d: reuse the session; -f '': MAIL FROM:<> ('<>' would give <<>>)
        const args = ['-A', '-s', String(job.sessions), '-m', String(job.count), '-f', job.from, '-t', job.to];
        if (job.size > 0) args.push('-l', String(job.size));
        if (job.reuse) args.push('-d');
        args.push(`${HOST}:${job.port}`);
        return new Promise((resolve) => {
          const t0 = performance.now();
          const child = track(spawn(smtpSource, args, { stdio: ['ignore', 'ignore', 'pipe'] }));
          let refused = 0;
          let warnings = 0;
          let lastError: string | null = null;
          let fatal = false;
          let partial = '';
          const scan = (lines: string[]): void => {
            for (const l of lines) {
              if (l.includes('recipient rejected')) refused++;
              else if (l.includes('warning:') || l.includes('fatal:')) {
                warnings++;
                lastError = l.slice(0, 200);
                if (l.includes('fatal:')) fatal = true;
              }
            }
          };
          child.stderr?.on('data', (b: Buffer) => {
            const lines = (partial + b.toString('latin1')).split('\n');
            partial = lines.pop() ?? '';
            scan(lines);
          });
          let timedOut = false;
          const timer = setTimeout(() => { timedOut = true; void stopChild(child, 2000); }, job.timeoutMs);
          child.once('exit', (code) => {
            clearTimeout(timer);
            scan([partial]);
            if (code !== 0 && !timedOut) fatal = true;
            const delivered = -1; // smtp-source does not count: the caller takes the sink's count (or sent - failures)
            resolve({ wallS: (performance.now() - t0) / 1000, delivered, refused, failed: warnings, timedOut, lastError, fatal });
          });
        });
      },
      async stop() { /* one process per run */ },
    };
  }
  const child = await forkRole(['gen']);
  return {
    what: 'built-in generator',
    countsDelivered: true,
    async run(job) {
      const r = await ipcRequest<{ result: LoadResult }>(child, { type: 'run', job }, 'done', job.timeoutMs + 30_000);
      return r.result;
    },
    stop: () => stopChild(child),
  };
}

interface ProxyProc {
  readonly pid: number;
  readonly outPort: number;
  readonly inPort: number;
  readonly how: string;
  stop(): Promise<void>;
}

/** dist/ is usable when it exists and is newer than every file under src/. */
function distIsFresh(): boolean {
  const distMain = path.join(ROOT, 'dist', 'main.js');
  if (!existsSync(distMain)) return false;
  const built = statSync(distMain).mtimeMs;
  const newest = (dir: string): number => readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
    const p = path.join(dir, e.name);
    return Math.max(m, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }, 0);
  return newest(path.join(ROOT, 'src')) <= built;
}

async function startProxyProcess(configFile: string, outPort: number, inPort: number, mode: 'dist' | 'src'): Promise<ProxyProc> {
  const args = mode === 'dist'
    ? [path.join(ROOT, 'bin', 'batv-proxy.js'), 'serve', '--config', configFile]
    : ['--import', 'tsx', '--input-type=module', '-e',
      `const { main } = await import(${JSON.stringify(pathToFileURL(path.join(ROOT, 'src', 'main.ts')).href)});`
      + `process.exitCode = await main(['serve', '--config', ${JSON.stringify(configFile)}]);`];
  // BENCH_PROXY_NODE_ARGS: node options for the proxy only, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.BENCH_PROXY_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const child = track(spawn(process.execPath, [...nodeArgs, ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] }));
  let err = '';
  child.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000); });
  try {
    await waitListening(outPort, 30_000, child);
    await waitListening(inPort, 10_000, child);
  } catch (e) {
    await stopChild(child);
    throw new Error(`the proxy did not start: ${(e as Error).message}\n${err}`);
  }
  return { pid: child.pid!, outPort, inPort, how: mode === 'dist' ? 'node bin/batv-proxy.js (dist/)' : 'node --import tsx src/main.ts', stop: () => stopChild(child, 8000) };
}

/**
 * One of the yardsticks of ../shared/bench/calibration (bare.js, relay.js), run from there as it is with
 * NODE_PATH pointing at this checkout's node_modules; settings through its environment (OUT_PORT, IN_PORT,
 * HOST, and for relay.js NEXT_HOP and BATV_KEY).
 */
async function startCalibration(what: string, script: string, outPort: number, inPort: number, extraEnv: Record<string, string>): Promise<ProxyProc> {
  const env = { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules'), HOST, OUT_PORT: String(outPort), IN_PORT: String(inPort), ...extraEnv };
  const child = track(spawn(process.execPath, [script], { cwd: path.dirname(script), env, stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  child.stdout?.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-2000); });
  child.stderr?.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-2000); });
  try {
    await waitListening(outPort, 20_000, child);
    await waitListening(inPort, 10_000, child);
  } catch (e) {
    await stopChild(child);
    throw new Error(`${what} (${script}) did not start: ${(e as Error).message}\n${out}`);
  }
  return { pid: child.pid!, outPort, inPort, how: `node ${script}`, stop: () => stopChild(child) };
}

// ───────────────────────────────────────────────────────────── scenarios

type Kind = 'out' | 'reject' | 'rejecttag' | 'bounce';
/** direct: generator → sink; bare: smtp-server alone; naive: smtp-server + nodemailer relay → sink; proxy: batv-proxy → sink. */
type Side = 'direct' | 'bare' | 'naive' | 'proxy';
const SIDES: readonly Side[] = ['direct', 'bare', 'naive', 'proxy'];

interface Scenario {
  readonly name: string;
  readonly kind: Kind;
  readonly size: number;
  readonly sessions: number;
  readonly count: number;
  readonly reuse: boolean;
  readonly unit: string;
}

/** Sides a scenario runs: bare.js refuses every null-sender RCPT, so it has no valid-bounce side. */
const sidesOf = (sc: Scenario): readonly Side[] => (sc.kind === 'bounce' ? SIDES.filter((s) => s !== 'bare') : SIDES);

function scenarios(quick: boolean, scale: number): Scenario[] {
  const sc = (name: string, kind: Kind, size: number, sessions: number, full: number, q: number, reuse: boolean, unit: string): Scenario =>
    ({ name, kind, size, sessions, count: Math.max(10, sessions, Math.round((quick ? q : full) * scale)), reuse, unit });
  return [
    sc('out_4k_c1', 'out', 4096, 1, 3000, 500, true, 'msg/s'),
    sc('out_4k_c10', 'out', 4096, 10, 20000, 3000, true, 'msg/s'),
    sc('out_4k_c50', 'out', 4096, 50, 20000, 3000, true, 'msg/s'),
    sc('out_100k_c1', 'out', 102400, 1, 1000, 200, true, 'msg/s'),
    sc('out_100k_c10', 'out', 102400, 10, 5000, 800, true, 'msg/s'),
    sc('out_100k_c50', 'out', 102400, 50, 5000, 800, true, 'msg/s'),
    sc('out_4k_c50_newconn', 'out', 4096, 50, 5000, 1000, false, 'msg/s'),
    sc('in_reject_c10', 'reject', 0, 10, 20000, 3000, true, 'refusals/s'),
    sc('in_reject_c50_newconn', 'reject', 0, 50, 3000, 600, false, 'conn/s'),
    sc('in_reject_forgedtag_c10', 'rejecttag', 0, 10, 20000, 3000, true, 'refusals/s'),
    sc('in_bounce_4k_c10', 'bounce', 4096, 10, 5000, 1000, true, 'msg/s'),
  ];
}

/** A target: the proxy's `metric` `op` `factor` × the `against` side's, in one scenario (medians over reps). */
interface Check {
  readonly scenario: string;
  readonly metric: 'rate' | 'cpuMs';
  readonly against: Side;
  readonly op: '>=' | '<=';
  readonly factor: number;
  readonly text: string;
}

const CHECKS: readonly Check[] = [
  { scenario: 'out_4k_c10', metric: 'rate', against: 'naive', op: '>=', factor: 2, text: 'proxy rate >= 2 x naive rate' },
  { scenario: 'out_4k_c10', metric: 'cpuMs', against: 'bare', op: '<=', factor: 3, text: 'proxy CPU/msg <= 3 x bare CPU/msg' },
  { scenario: 'out_100k_c10', metric: 'rate', against: 'direct', op: '>=', factor: 0.5, text: 'proxy rate >= 0.5 x direct rate' },
  { scenario: 'in_reject_c10', metric: 'rate', against: 'bare', op: '>=', factor: 0.9, text: 'proxy rate >= 0.9 x bare rate' },
  { scenario: 'in_reject_c50_newconn', metric: 'cpuMs', against: 'bare', op: '<=', factor: 2, text: 'proxy CPU/connection <= 2 x bare' },
];
const BIG_MARGIN_MIB = 10;
const LATENCY_P99_ADDED_MS = 1;

interface RunRecord {
  rep: number;
  side: Side;
  wallS: number;
  done: number;
  rate: number;
  status: string;
  /** CPU seconds of the process under test: the sink for direct, bare.js, relay.js, the proxy. */
  cpuS: number | null;
  /** CPU seconds of the (accepting) next-hop sink during the run, whatever the side. */
  sinkCpuS: number | null;
  sinkDelta: number;
  failed: number;
  lastError: string | null;
}

const median = (xs: readonly number[]): number | null => {
  const a = xs.filter((x) => Number.isFinite(x)).sort((p, q) => p - q);
  if (!a.length) return null;
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
};

const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;

const delta = (a: number | null, b: number | null): number | null => (a !== null && b !== null ? b - a : null);

// ───────────────────────────────────────────────────────────── main

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      scale: { type: 'string' },
      json: { type: 'string' },
      reps: { type: 'string' },
      only: { type: 'string' },
      builtin: { type: 'boolean', default: false },
      harness: { type: 'boolean', default: false },
      proxy: { type: 'string' },
      calibration: { type: 'string' },
      budget: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(readFileSync(SELF, 'utf8').split('*/')[0]!.replace(/^\/\*\*?|^ \* ?/gm, '') + '\n');
    return 0;
  }
  const quick = values.quick;
  const scaleRaw = Number(values.scale ?? process.env.BENCH_SCALE ?? 1);
  const scale = Number.isFinite(scaleRaw) && scaleRaw > 0 ? Math.min(10, Math.max(0.001, scaleRaw)) : 1;
  const reps = Math.max(1, Math.min(10, Number(values.reps ?? (quick ? 1 : 3)) || 1));
  const budgetS = Number(values.budget ?? (quick ? 600 : 2400)) || 2400;
  const only = values.only ? new RegExp(values.only) : null;
  const wanted = (name: string) => !only || only.test(name);
  const runTimeoutMs = quick ? 30_000 : 60_000;
  const tStart = Date.now();
  const overBudget = () => (Date.now() - tStart) / 1000 > budgetS;
  const scaled = (n: number, min = 10) => Math.max(min, Math.round(n * scale));

  const calDir = path.resolve(values.calibration ?? process.env.BENCH_CALIBRATION ?? path.resolve(ROOT, '..', 'shared', 'bench', 'calibration'));
  const bareJs = path.join(calDir, 'bare.js');
  const relayJs = path.join(calDir, 'relay.js');
  for (const f of [bareJs, relayJs, path.join(calDir, 'batv.js')]) {
    if (!existsSync(f)) throw new Error(`calibration server ${f} not found (--calibration DIR or BENCH_CALIBRATION)`);
  }
  // relay.js checks inbound tags with its own minimal BATV (batv.js) and this key
  const naiveKey = 'bench-secret';
  const naiveBatv = createRequire(import.meta.url)(path.join(calDir, 'batv.js')) as { sign(key: string, addr: string): string };
  const naiveValidRcpt = naiveBatv.sign(naiveKey, PLAIN_RCPT);

  const smtpSource = values.builtin ? null : findTool('smtp-source');
  const smtpSink = values.builtin ? null : findTool('smtp-sink');
  const proxyMode: 'dist' | 'src' = values.proxy === 'src' || values.proxy === 'dist' ? values.proxy : distIsFresh() ? 'dist' : 'src';

  const work = mkdtempSync(path.join(os.tmpdir(), 'batv-bench-'));
  chmodSync(work, 0o755);
  const keysDir = path.join(work, 'keys');
  // sink, reject sink (sink+1, as run.sh expects), proxy outbound/inbound, bare outbound/inbound, naive outbound/inbound
  const ports = await freePorts(8);
  const [sinkPort, rejectPort, outPort, inPort, bareOut, bareIn, naiveOut, naiveIn] = ports as [number, number, number, number, number, number, number, number];
  if (ports.length !== 8) throw new Error('ports');

  // keys and a validly tagged recipient, through the project's own code
  const { initKeys, loadKeyring } = await import('../src/keys.js');
  const { batvSign } = await import('../src/tags/batv.js');
  await initKeys(keysDir, Date.now());
  const { ring } = await loadKeyring(keysDir);
  const signed = batvSign(PLAIN_RCPT, ring.signing, Date.now());
  if (signed.kind !== 'signed') throw new Error(`cannot sign ${PLAIN_RCPT}`);
  const validRcpt = signed.address;

  const config = {
    domains: ['example.com', 'example.org'],
    srs: { domain: 'srs.example.net' },
    outbound: { listen: `${HOST}:${outPort}`, relay: `smtp://${HOST}:${sinkPort}` },
    inbound: {
      listen: `${HOST}:${inPort}`, mailbox: `smtp://${HOST}:${sinkPort}`,
      // the harness's in_reject scenarios expect refusals at RCPT (the default, classify, refuses at DATA)
      untaggedBounces: 'reject',
      // the abuse limiter would cool the one benchmark client off; the tag limiter would stop the valid bounces
      limits: { refusedPerClient: 1_000_000, bouncesPerTag: 1_000_000 },
    },
    keys: { dir: keysDir },
    // every load comes from 127.0.0.1: the per-IP cap (default 20) would refuse the c50 and idle rows
    limits: { maxClients: 1200, maxClientsPerIp: 1200, maxMessageBytes: 100 * MIB },
    // info, as in production: one log line per transaction is part of the cost (stdout goes to /dev/null).
    // BENCH_LOG_LEVEL=warn measures without it.
    log: { level: process.env.BENCH_LOG_LEVEL ?? 'info' },
  };
  const configFile = path.join(work, 'config.json');
  writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);

  const meta = {
    date: new Date().toISOString(),
    host: { nproc: os.availableParallelism(), cpu: os.cpus()[0]?.model ?? 'unknown', memGiB: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), loadavgStart: os.loadavg().map((x) => Number(x.toFixed(2))) },
    node: process.version,
    quick, reps, scale,
    generator: smtpSource ?? 'built-in',
    sink: smtpSink ?? 'built-in',
    proxy: proxyMode,
    calibration: { dir: calDir, bare: bareJs, naive: relayJs, naiveKey },
    ports: { sink: sinkPort, rejectSink: rejectPort, outbound: outPort, inbound: inPort, bareOutbound: bareOut, bareInbound: bareIn, naiveOutbound: naiveOut, naiveInbound: naiveIn },
  };
  const log = (s: string) => process.stdout.write(`${s}\n`);
  log(`== batv-proxy bench: ${meta.host.nproc} cpus (${meta.host.cpu}), load ${meta.host.loadavgStart.join(' ')}, node ${meta.node}`);
  log(`   generator ${meta.generator}, sink ${meta.sink}, proxy ${proxyMode}, ${reps} rep(s)${quick ? ', quick' : ''}${scale !== 1 ? `, counts x${scale}` : ''}, work dir ${work}`);
  log(`   sides: direct (-> sink), bare (${bareJs}), naive (${relayJs} -> sink), proxy (-> sink)`);

  let sink: Sink | null = null;
  let rejectSink: Sink | null = null;
  let gen: Generator | null = null;
  let proxy: ProxyProc | null = null;
  let bare: ProxyProc | null = null;
  let naive: ProxyProc | null = null;
  const results: Record<string, unknown> = { meta };
  let correctnessOk = true;
  try {
    sink = await startSink(sinkPort, smtpSink, false);
    rejectSink = await startSink(rejectPort, smtpSink, true);
    proxy = await startProxyProcess(configFile, outPort, inPort, proxyMode);
    bare = await startCalibration('bare', bareJs, bareOut, bareIn, {});
    naive = await startCalibration('naive', relayJs, naiveOut, naiveIn, { NEXT_HOP: `${HOST}:${sinkPort}`, BATV_KEY: naiveKey });
    gen = await startGenerator(smtpSource);
    let P = proxy;
    const B = bare;
    const N = naive;
    const S = sink;
    const RS = rejectSink;
    const G = gen;
    Object.assign(meta, { pids: { proxy: P.pid, bare: B.pid, naive: N.pid, sink: S.pid, rejectSink: RS.pid } });
    const server = (side: Side): ProxyProc | null => (side === 'bare' ? B : side === 'naive' ? N : side === 'proxy' ? P : null);
    const validRcptOf = (side: Side): string => (side === 'proxy' ? validRcpt : side === 'naive' ? naiveValidRcpt : PLAIN_RCPT);

    // ── preflight: per server one message out, one forged bounce, one valid bounce (functional, not timed)
    {
      const one = async (conn: SmtpConn, from: string, to: string): Promise<string> => {
        const m = await conn.cmd(`MAIL FROM:<${from}>`);
        if (m.code !== 250) return m.text;
        const r = await conn.cmd(`RCPT TO:<${to}>`);
        if (r.code !== 250) { await conn.cmd('RSET'); return r.text; }
        await conn.cmd('DATA');
        await conn.write(messageChunks(1024, from, to));
        return (await conn.reply()).text;
      };
      for (const side of ['bare', 'naive', 'proxy'] as const) {
        const srv = server(side)!;
        const c = await SmtpConn.open(srv.outPort);
        const outbound = await one(c, SENDER, RCPT);
        await c.quit();
        const i = await SmtpConn.open(srv.inPort);
        const forged = await one(i, '', PLAIN_RCPT);
        const valid = side === 'bare' ? null : await one(i, '', validRcptOf(side));
        await i.quit();
        log(`   preflight ${side}: outbound: ${outbound}; forged bounce: ${forged}${valid === null ? '' : `; valid bounce: ${valid}`}`);
        if (!outbound.startsWith('250') || !forged.startsWith('550') || (valid !== null && !valid.startsWith('250'))) {
          log(`   preflight ${side} FAILED: the numbers below would not mean anything`);
          correctnessOk = false;
        }
      }
    }

    // ── warm-up, the same for the three servers (code compiled, next-hop sessions pooled)
    const warmUp = async (srv: ProxyProc): Promise<void> => {
      await G.run({ port: srv.outPort, sessions: 10, count: scaled(500, 50), size: 4096, reuse: true, from: SENDER, to: RCPT, timeoutMs: 30_000 });
    };
    for (const side of ['bare', 'naive', 'proxy'] as const) await warmUp(server(side)!);
    await new Promise((res) => setTimeout(res, 1000));

    // ── RSS rise while relaying one 50 MiB message: first, while bare, naive and proxy are equally fresh
    if (wanted('out_big_50m') && !overBudget()) {
      const size = 50 * MIB;
      const runs: Array<{ rep: number; side: Side; wallS: number; rssBeforeKb: number | null; rssPeakKb: number | null; riseMiB: number | null; status: string }> = [];
      for (let rep = 1; rep <= (quick ? 1 : 2); rep++) {
        for (const side of SIDES) {
          const srv = server(side);
          const before = srv ? rssKb(srv.pid) ?? 0 : null;
          const sampler = srv ? rssSampler(srv.pid) : null;
          const s0 = await S.count();
          const r = await G.run({ port: srv ? srv.outPort : sinkPort, sessions: 1, count: 1, size, reuse: true, from: SENDER, to: RCPT, timeoutMs: 120_000 });
          const peak = sampler ? sampler.stop() : null;
          await new Promise((res) => setTimeout(res, 150));
          let delivered = (await S.count()) - s0;
          if (side === 'bare') delivered = r.timedOut || r.fatal || r.failed > 0 ? 0 : G.countsDelivered ? r.delivered : 1;
          const status = r.timedOut ? 'timeout' : delivered >= 1 ? 'ok' : `not delivered (${r.lastError ?? ''})`;
          if (status !== 'ok') correctnessOk = false;
          const rise = before !== null && peak !== null ? (peak - before) / 1024 : null;
          runs.push({ rep, side, wallS: r.wallS, rssBeforeKb: before, rssPeakKb: peak, riseMiB: rise, status });
          log(`   rep ${rep} out_big_50m              ${side.padEnd(6)} ${r.wallS.toFixed(2).padStart(6)}s${before !== null && peak !== null ? `  RSS ${(before / 1024).toFixed(0)} -> ${(peak / 1024).toFixed(0)} MiB` : ''}  ${status}`);
        }
      }
      const maxRise = (side: Side): number | null => {
        const xs = runs.filter((r) => r.side === side && r.riseMiB !== null).map((r) => r.riseMiB!);
        return xs.length ? Math.max(...xs) : null;
      };
      const riseMiB = { bare: maxRise('bare'), naive: maxRise('naive'), proxy: maxRise('proxy') };
      const peakMiB = (side: Side): number | null => {
        const xs = runs.filter((r) => r.side === side && r.rssPeakKb !== null).map((r) => r.rssPeakKb! / 1024);
        return xs.length ? Math.max(...xs) : null;
      };
      results.bigMessage = {
        sizeMiB: 50, riseMiB, peakMiB: { bare: peakMiB('bare'), naive: peakMiB('naive'), proxy: peakMiB('proxy') },
        wallS: Object.fromEntries(SIDES.map((s) => [s, median(runs.filter((r) => r.side === s).map((r) => r.wallS))])),
        target: `proxy rise <= bare rise + ${BIG_MARGIN_MIB} MiB`,
        pass: riseMiB.proxy !== null && riseMiB.bare !== null ? riseMiB.proxy <= riseMiB.bare + BIG_MARGIN_MIB : null,
        runs,
      };
    }

    // ── throughput scenarios: rep-major; direct, bare, naive and proxy back to back
    const scs = scenarios(quick, scale).filter((s) => wanted(s.name));
    const records = new Map<string, RunRecord[]>(scs.map((s) => [s.name, []]));
    const runOne = async (sc: Scenario, side: Side, rep: number): Promise<RunRecord> => {
      const inbound = sc.kind !== 'out';
      const refusal = sc.kind === 'reject' || sc.kind === 'rejecttag';
      const srv = server(side);
      const port = srv ? (inbound ? srv.inPort : srv.outPort) : refusal ? rejectPort : sinkPort;
      const from = inbound ? '' : SENDER;
      const to = sc.kind === 'out' ? RCPT : sc.kind === 'bounce' ? validRcptOf(side) : sc.kind === 'rejecttag' ? FORGED_RCPT : PLAIN_RCPT;
      // bare.js discards what it accepts: the sink gets nothing, delivered = sent - failures
      const discards = side === 'bare' && !refusal;
      const cpuPid = srv ? srv.pid : refusal ? RS.pid : S.pid;
      const s0 = await S.count();
      const cpu0 = cpuSeconds(cpuPid);
      const sink0 = cpuSeconds(S.pid);
      const r = await G.run({ port, sessions: sc.sessions, count: sc.count, size: sc.size, reuse: sc.reuse, from, to, timeoutMs: runTimeoutMs });
      const cpu1 = cpuSeconds(cpuPid);
      await new Promise((res) => setTimeout(res, 150));
      let s1 = await S.count();
      if (!refusal && !discards) {
        const deadline = Date.now() + 3000;
        while (s1 - s0 < sc.count && Date.now() < deadline) {
          await new Promise((res) => setTimeout(res, 50));
          s1 = await S.count();
        }
      }
      const sink1 = cpuSeconds(S.pid);
      const sinkDelta = s1 - s0;
      let done: number;
      if (refusal) done = r.refused;
      else if (!discards) done = sinkDelta;
      else if (G.countsDelivered) done = r.delivered;
      else done = r.fatal || r.timedOut ? 0 : Math.max(0, sc.count - r.failed - r.refused); // smtp-source: unknown after a fatal error or a kill
      let status = 'ok';
      if (r.timedOut) status = 'timeout';
      else if (refusal && side !== 'direct' && sinkDelta > 0) status = 'leaked';
      else if (discards && r.fatal) status = 'failed';
      else if (done < sc.count) status = refusal ? 'accepted_some' : 'incomplete';
      if (status !== 'ok' && status !== 'timeout') correctnessOk = false;
      return {
        rep, side, wallS: r.wallS, done, rate: r.wallS > 0 ? done / r.wallS : 0, status,
        cpuS: delta(cpu0, cpu1), sinkCpuS: delta(sink0, sink1), sinkDelta, failed: r.failed, lastError: r.lastError,
      };
    };
    for (let rep = 1; rep <= reps; rep++) {
      for (const sc of scs) {
        if (overBudget()) { log(`   budget of ${budgetS}s spent: skipping ${sc.name} rep ${rep}`); continue; }
        for (const side of sidesOf(sc)) {
          const rec = await runOne(sc, side, rep);
          records.get(sc.name)!.push(rec);
          const cpuMs = rec.cpuS !== null && rec.done > 0 ? ((1000 * rec.cpuS) / rec.done).toFixed(3) : '-';
          log(`   rep ${rep} ${sc.name.padEnd(24)} ${side.padEnd(6)} ${rec.wallS.toFixed(2).padStart(6)}s ${String(rec.done).padStart(6)} done ${rec.rate.toFixed(0).padStart(7)}/s ${cpuMs.padStart(7)} cpu ms  ${rec.status}${rec.status !== 'ok' && rec.lastError ? ` (${rec.lastError})` : ''}`);
        }
      }
    }
    const table: Record<string, ScenarioResult> = {};
    for (const sc of scs) {
      const rs = records.get(sc.name)!;
      if (!rs.length) continue;
      const sides: Partial<Record<Side, SideResult>> = {};
      for (const side of sidesOf(sc)) {
        const mine = rs.filter((r) => r.side === side);
        sides[side] = {
          rate: median(mine.map((r) => r.rate)),
          cpuMsPerUnit: median(mine.filter((r) => r.cpuS !== null && r.done > 0).map((r) => (1000 * r.cpuS!) / r.done)),
          sinkCpuMsPerUnit: median(mine.filter((r) => r.sinkCpuS !== null && r.done > 0).map((r) => (1000 * r.sinkCpuS!) / r.done)),
          statuses: [...new Set(mine.map((r) => r.status))],
        };
      }
      const ratio = (against: Side, metric: 'rate' | 'cpuMsPerUnit'): number | null => {
        const p = sides.proxy?.[metric];
        const a = sides[against]?.[metric];
        return p != null && a != null && a > 0 ? p / a : null;
      };
      table[sc.name] = {
        kind: sc.kind, unit: sc.unit, size: sc.size, sessions: sc.sessions, count: sc.count, reuse: sc.reuse,
        sides,
        rateRatio: { direct: ratio('direct', 'rate'), bare: ratio('bare', 'rate'), naive: ratio('naive', 'rate') },
        cpuRatio: { bare: ratio('bare', 'cpuMsPerUnit'), naive: ratio('naive', 'cpuMsPerUnit') },
        runs: rs,
      };
    }
    results.throughput = table;

    // ── latency per transaction: one session to each side, single 4 KiB transactions, blocks rotated
    if (wanted('latency') && !overBudget()) {
      const n = scaled(quick ? 300 : 1500, 100);
      const block = 50;
      const body = messageChunks(4096, SENDER, RCPT);
      const conns = new Map<Side, SmtpConn>();
      for (const side of SIDES) conns.set(side, await SmtpConn.open(server(side)?.outPort ?? sinkPort));
      const samples = new Map<Side, number[]>(SIDES.map((s) => [s, []]));
      const txn = async (c: SmtpConn): Promise<number> => {
        const t0 = performance.now();
        const m = await c.cmd(`MAIL FROM:<${SENDER}>`);
        const r = await c.cmd(`RCPT TO:<${RCPT}>`);
        const d = await c.cmd('DATA');
        if (m.code !== 250 || r.code !== 250 || d.code !== 354) throw new Error(`latency transaction refused: ${m.text} / ${r.text} / ${d.text}`);
        await c.write(body);
        const e = await c.reply();
        if (e.code !== 250) throw new Error(`latency transaction refused: ${e.text}`);
        return performance.now() - t0;
      };
      for (let i = 0; i < 50; i++) for (const side of SIDES) await txn(conns.get(side)!); // warm-up
      const deadline = Date.now() + (quick ? 30_000 : 120_000);
      while (samples.get('proxy')!.length < n && Date.now() < deadline) {
        for (const side of SIDES) for (let i = 0; i < block; i++) samples.get(side)!.push(await txn(conns.get(side)!));
      }
      for (const c of conns.values()) await c.quit();
      const pct = Object.fromEntries(SIDES.map((side) => {
        const xs = [...samples.get(side)!].sort((a, b) => a - b);
        return [side, { p50: percentile(xs, 50), p99: percentile(xs, 99) }];
      })) as Record<Side, { p50: number; p99: number }>;
      const addedP99VsBare = pct.proxy.p99 - pct.bare.p99;
      results.latency = {
        transactions: samples.get('proxy')!.length, size: 4096, ms: pct,
        addedMs: {
          vsDirect: { p50: pct.proxy.p50 - pct.direct.p50, p99: pct.proxy.p99 - pct.direct.p99 },
          vsBare: { p50: pct.proxy.p50 - pct.bare.p50, p99: addedP99VsBare },
        },
        target: `proxy p99 - bare p99 < ${LATENCY_P99_ADDED_MS} ms`,
        pass: Number.isFinite(addedP99VsBare) ? addedP99VsBare < LATENCY_P99_ADDED_MS : null,
      };
    }

    // ── the targets, on the medians above
    const checks: Array<{ target: string; measured: string; ratio: number | null; pass: boolean | null }> = [];
    for (const c of CHECKS) {
      const t = table[c.scenario];
      const ratio = !t ? null : c.metric === 'rate' ? t.rateRatio[c.against as 'direct' | 'bare' | 'naive'] ?? null : t.cpuRatio[c.against as 'bare' | 'naive'] ?? null;
      checks.push({
        target: `${c.scenario}: ${c.text}`, ratio,
        measured: ratio === null ? 'not measured' : `${ratio.toFixed(2)} x`,
        pass: ratio === null ? null : c.op === '>=' ? ratio >= c.factor : ratio <= c.factor,
      });
    }
    const big = results.bigMessage as { riseMiB: Record<string, number | null>; pass: boolean | null } | undefined;
    checks.push({
      target: `out_big_50m: proxy RSS rise <= bare RSS rise + ${BIG_MARGIN_MIB} MiB`, ratio: null,
      measured: big?.riseMiB.proxy != null && big.riseMiB.bare != null ? `${big.riseMiB.proxy.toFixed(1)} vs ${big.riseMiB.bare.toFixed(1)} MiB` : 'not measured',
      pass: big?.pass ?? null,
    });
    const lat = results.latency as { addedMs: { vsBare: { p99: number } }; pass: boolean | null } | undefined;
    checks.push({
      target: `latency: proxy p99 added vs bare < ${LATENCY_P99_ADDED_MS} ms`, ratio: null,
      measured: lat ? `${lat.addedMs.vsBare.p99.toFixed(3)} ms` : 'not measured',
      pass: lat?.pass ?? null,
    });
    results.checks = checks;

    // ── RSS with 1,000 idle connections (greeted, EHLO said, then silent), on a fresh, warmed-up proxy
    if (wanted('idle') && !overBudget()) {
      const want = 1000;
      await P.stop();
      proxy = await startProxyProcess(configFile, outPort, inPort, proxyMode);
      P = proxy;
      await warmUp(P);
      await new Promise((res) => setTimeout(res, 1000));
      const before = rssKb(P.pid) ?? 0;
      const conns: SmtpConn[] = [];
      let failed = 0;
      const deadline = Date.now() + 60_000;
      while (conns.length + failed < want && Date.now() < deadline) {
        const batch = Math.min(100, want - conns.length - failed);
        const got = await Promise.allSettled(Array.from({ length: batch }, () => SmtpConn.open(P.outPort, 15_000)));
        for (const g of got) if (g.status === 'fulfilled') conns.push(g.value); else failed++;
      }
      await new Promise((res) => setTimeout(res, 1500));
      const samples: number[] = [];
      for (let i = 0; i < 5; i++) { samples.push(rssKb(P.pid) ?? 0); await new Promise((res) => setTimeout(res, 200)); }
      const after = median(samples) ?? 0;
      for (const c of conns) c.close();
      results.idle = { connections: conns.length, failed, rssBeforeKb: before, rssKb: after, riseMiB: (after - before) / 1024, kibPerConnection: conns.length ? (after - before) / conns.length : null };
      log(`   idle: ${conns.length} connections open (${failed} failed), RSS ${(before / 1024).toFixed(0)} -> ${(after / 1024).toFixed(0)} MiB`);
      await new Promise((res) => setTimeout(res, 1000));
    }

    // ── the shared harness, when present (it starts its own smtp-sink on our sink port)
    const harness = path.resolve(ROOT, '..', 'shared', 'bench', 'run.sh');
    if (values.harness) {
      if (!existsSync(harness) || !findTool('smtp-source')) log(`   --harness: ${harness} or smtp-source not found; skipped`);
      else {
        await S.stop();
        await RS.stop();
        sink = null;
        rejectSink = null;
        const limitJson = path.join(work, 'harness-limit.json');
        const proxyJson = path.join(work, 'harness-proxy.json');
        const q = quick ? ['--quick'] : [];
        const sh = (args: string[]) => new Promise<number>((resolve) => {
          const c = track(spawn('bash', [harness, ...args], { stdio: ['ignore', 'inherit', 'inherit'] }));
          c.once('exit', (code) => resolve(code ?? 1));
        });
        await sh(['--outbound', 'sink', '--inbound', 'sink-reject', '--label', 'limit', '--json', limitJson, '--sink-port', String(sinkPort), ...q]);
        await sh(['--outbound', `${HOST}:${P.outPort}`, '--inbound', `${HOST}:${P.inPort}`, '--pids', String(P.pid), '--valid-rcpt', validRcpt,
          '--label', 'proxy', '--compare', limitJson, '--json', proxyJson, '--sink-port', String(sinkPort), '--budget', '1500', ...q]);
        results.harness = Object.fromEntries([['limit', limitJson], ['proxy', proxyJson]].map(([k, f]) => [k, existsSync(f!) ? JSON.parse(readFileSync(f!, 'utf8')) : null]));
      }
    }
  } finally {
    await gen?.stop();
    await proxy?.stop();
    await naive?.stop();
    await bare?.stop();
    await sink?.stop();
    await rejectSink?.stop();
    if (!values.keep) rmSync(work, { recursive: true, force: true });
  }

  (results.meta as { loadavgEnd?: number[]; elapsedS?: number }).loadavgEnd = os.loadavg().map((x) => Number(x.toFixed(2)));
  (results.meta as { elapsedS?: number }).elapsedS = Math.round((Date.now() - tStart) / 1000);
  printReport(results);
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(results, null, 2)}\n`);
    log(`results: ${values.json}`);
  }
  return correctnessOk ? 0 : 1;
}

interface SideResult {
  rate: number | null;
  cpuMsPerUnit: number | null;
  sinkCpuMsPerUnit: number | null;
  statuses: string[];
}

interface ScenarioResult {
  kind: Kind;
  unit: string;
  size: number;
  sessions: number;
  count: number;
  reuse: boolean;
  sides: Partial<Record<Side, SideResult>>;
  rateRatio: { direct: number | null; bare: number | null; naive: number | null };
  cpuRatio: { bare: number | null; naive: number | null };
  runs: RunRecord[];
}

function printReport(results: Record<string, unknown>): void {
  const f = (x: number | null | undefined, d = 0) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
  const out: string[] = [''];
  const t = results.throughput as Record<string, ScenarioResult> | undefined;
  if (t && Object.keys(t).length) {
    out.push(`${''.padEnd(24)} ${''.padEnd(10)} ${'rate /s'.padEnd(35)} ${'CPU ms per msg/refusal/conn'.padEnd(31)} proxy rate vs    proxy CPU vs`);
    out.push(`${'scenario'.padEnd(24)} ${'unit'.padEnd(10)} ${SIDES.map((s) => s.padStart(8)).join('')}   ${['sink', 'bare', 'naive', 'proxy'].map((s) => s.padStart(7)).join('')}   ${['direct', 'bare', 'naive'].map((s) => s.padStart(6)).join('')}  ${['bare', 'naive'].map((s) => s.padStart(6)).join('')}  runs`);
    for (const [name, s] of Object.entries(t)) {
      const bad = SIDES.flatMap((side) => (s.sides[side]?.statuses ?? []).filter((x) => x !== 'ok').map((x) => `${side}:${x}`));
      out.push(`${name.padEnd(24)} ${s.unit.padEnd(10)} ${SIDES.map((side) => f(s.sides[side]?.rate).padStart(8)).join('')}   ${SIDES.map((side) => f(s.sides[side]?.cpuMsPerUnit, 3).padStart(7)).join('')}   ${[s.rateRatio.direct, s.rateRatio.bare, s.rateRatio.naive].map((x) => f(x, 2).padStart(6)).join('')}  ${[s.cpuRatio.bare, s.cpuRatio.naive].map((x) => f(x, 2).padStart(6)).join('')}  ${bad.join(',') || 'ok'}`);
    }
    out.push('(the CPU of the direct side is the sink\'s; newconn rows are per connection)');
  }
  const lat = results.latency as { transactions: number; ms: Record<Side, { p50: number; p99: number }>; addedMs: { vsDirect: { p50: number; p99: number }; vsBare: { p50: number; p99: number } } } | undefined;
  if (lat) {
    out.push(`latency, 4 KiB, one session each, ${lat.transactions} transactions per side, p50/p99 ms: ${SIDES.map((s) => `${s} ${f(lat.ms[s].p50, 3)}/${f(lat.ms[s].p99, 3)}`).join('; ')}; proxy added vs bare ${f(lat.addedMs.vsBare.p50, 3)}/${f(lat.addedMs.vsBare.p99, 3)}, vs direct ${f(lat.addedMs.vsDirect.p50, 3)}/${f(lat.addedMs.vsDirect.p99, 3)}`);
  }
  const big = results.bigMessage as { riseMiB: Record<string, number | null>; peakMiB: Record<string, number | null> } | undefined;
  if (big) out.push(`50 MiB message, RSS rise (peak) MiB: ${(['bare', 'naive', 'proxy'] as const).map((s) => `${s} ${f(big.riseMiB[s], 1)} (${f(big.peakMiB[s])})`).join('; ')}`);
  const idle = results.idle as { connections: number; rssKb: number; riseMiB: number; kibPerConnection: number | null } | undefined;
  if (idle) out.push(`${idle.connections} idle connections: proxy RSS ${f(idle.rssKb / 1024)} MiB, rise ${f(idle.riseMiB, 1)} MiB (${f(idle.kibPerConnection, 1)} KiB per connection)`);
  const checks = results.checks as Array<{ target: string; measured: string; pass: boolean | null }> | undefined;
  if (checks) {
    out.push('', `${'target'.padEnd(62)} ${'measured'.padEnd(22)} verdict`);
    for (const c of checks) out.push(`${c.target.padEnd(62)} ${c.measured.padEnd(22)} ${c.pass === null ? '-' : c.pass ? 'PASS' : 'FAIL'}`);
  }
  const meta = results.meta as { host: { loadavgStart: number[] }; loadavgEnd?: number[]; elapsedS?: number };
  out.push(`(load average at start ${meta.host.loadavgStart.join(' ')}, at end ${meta.loadavgEnd?.join(' ') ?? '-'}; ${meta.elapsedS ?? '-'} s; rates and CPU are medians of interleaved runs)`);
  process.stdout.write(`${out.join('\n')}\n`);
}

// ───────────────────────────────────────────────────────────── entry

const roleAt = process.argv.indexOf('--role');
if (roleAt >= 0) {
  const [role, a, b] = process.argv.slice(roleAt + 1);
  if (role === 'gen') generatorRole();
  else if (role === 'sink') sinkRole(Number(a), b === 'reject');
  else process.exit(2);
  // ready is sent by the role; ignore the parent's hello
} else {
  const bail = (sig: string) => {
    process.stderr.write(`bench: ${sig}, stopping what it started\n`);
    killAllNow();
    // reap them (so that none is left a zombie), but exit within 2 s whatever happens
    const deadline = Date.now() + 2000;
    const wait = (): void => {
      if (started.size === 0 || Date.now() > deadline) process.exit(130);
      else setTimeout(wait, 20);
    };
    wait();
  };
  process.once('SIGINT', () => bail('interrupted'));
  process.once('SIGTERM', () => bail('terminated'));
  process.once('exit', killAllNow);
  main().then(
    (code) => { process.exitCode = code; },
    (e: unknown) => {
      process.stderr.write(`bench: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
      killAllNow();
      process.exitCode = 2;
    },
  );
}
