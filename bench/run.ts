/**
 * Load benchmark of the whole proxy on one machine (never part of `npm test`):
 *
 *   load generator ──▶ batv-proxy (child process) ──▶ next-hop sink          "proxy" rate
 *   load generator ─────────────────────────────────▶ next-hop sink          "direct" rate (the limit)
 *
 * Every rate is reported as a ratio to the direct rate measured in the same run, direct and proxy
 * runs interleaved, because absolute rates on shared machines drift by 2x within minutes.
 *
 * Tools: Postfix's smtp-source / smtp-sink when installed (the same ones ../shared/bench/run.sh uses),
 * else a built-in bounded load generator and a minimal built-in sink, each in its own child process.
 * Also measured with a small built-in client: added latency per transaction (p50/p99, direct vs
 * through the proxy), peak RSS while relaying one 50 MiB message, RSS with 1,000 idle connections.
 *
 *   npm run bench                        # full run, ~6-12 minutes
 *   npm run bench -- --quick             # short counts, one repetition, ~2 minutes
 *   npm run bench -- --json out.json     # also write the results as JSON
 *   npm run bench -- --builtin           # use the built-in sink and generator even if Postfix is installed
 *   npm run bench -- --harness           # afterwards also run ../shared/bench/run.sh (limit + proxy)
 *   npm run bench -- --only 'out_4k|lat' # only the parts whose names match
 *
 * Everything listens on 127.0.0.1 on ports below 32768 found free; every run is bounded in count and
 * in time; every process started here is stopped by its PID (also on Ctrl-C).
 */
import { spawn, spawnSync, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
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
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/lib/postfix/sbin', '/usr/libexec/postfix'];
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

interface Generator {
  readonly what: string;
  run(job: LoadJob): Promise<LoadResult>;
  stop(): Promise<void>;
}

async function startGenerator(smtpSource: string | null): Promise<Generator> {
  if (smtpSource) {
    return {
      what: 'smtp-source',
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
          let partial = '';
          child.stderr?.on('data', (b: Buffer) => {
            const lines = (partial + b.toString('latin1')).split('\n');
            partial = lines.pop() ?? '';
            for (const l of lines) {
              if (l.includes('recipient rejected')) refused++;
              else if (l.includes('warning:') || l.includes('fatal:')) { warnings++; lastError = l.slice(0, 200); }
            }
          });
          let timedOut = false;
          const timer = setTimeout(() => { timedOut = true; void stopChild(child, 2000); }, job.timeoutMs);
          child.once('exit', () => {
            clearTimeout(timer);
            const delivered = job.to === '' ? 0 : -1; // filled in from the sink's count by the caller
            resolve({ wallS: (performance.now() - t0) / 1000, delivered, refused, failed: warnings, timedOut, lastError });
          });
        });
      },
      async stop() { /* one process per run */ },
    };
  }
  const child = await forkRole(['gen']);
  return {
    what: 'built-in generator',
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
  const child = track(spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] }));
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

// ───────────────────────────────────────────────────────────── scenarios

type Kind = 'out' | 'reject' | 'rejecttag' | 'bounce';

interface Scenario {
  readonly name: string;
  readonly kind: Kind;
  readonly size: number;
  readonly sessions: number;
  readonly count: number;
  readonly reuse: boolean;
  /** What the ratio is held against (the brief's targets); null: reported only. */
  readonly target: number | null;
  readonly unit: string;
}

function scenarios(quick: boolean): Scenario[] {
  const n = (full: number, q: number) => (quick ? q : full);
  const out = (name: string, size: number, sessions: number, count: number, reuse: boolean, target: number | null): Scenario =>
    ({ name, kind: 'out', size, sessions, count, reuse, target, unit: 'msg/s' });
  return [
    out('out_4k_c1', 4096, 1, n(3000, 500), true, null),
    out('out_4k_c10', 4096, 10, n(20000, 3000), true, 0.5),
    out('out_4k_c50', 4096, 50, n(20000, 3000), true, null),
    out('out_100k_c1', 102400, 1, n(1000, 200), true, null),
    out('out_100k_c10', 102400, 10, n(5000, 800), true, 0.7),
    out('out_100k_c50', 102400, 50, n(5000, 800), true, null),
    out('out_4k_c50_newconn', 4096, 50, n(5000, 1000), false, null),
    { name: 'in_reject_c10', kind: 'reject', size: 0, sessions: 10, count: n(20000, 3000), reuse: true, target: 0.6, unit: 'refusals/s' },
    { name: 'in_reject_forgedtag_c10', kind: 'rejecttag', size: 0, sessions: 10, count: n(20000, 3000), reuse: true, target: null, unit: 'refusals/s' },
    { name: 'in_bounce_4k_c10', kind: 'bounce', size: 4096, sessions: 10, count: n(5000, 1000), reuse: true, target: 0.5, unit: 'msg/s' },
  ];
}

interface RunRecord {
  rep: number;
  side: 'direct' | 'proxy';
  wallS: number;
  done: number;
  rate: number;
  status: string;
  proxyCpuS: number | null;
  sinkDelta: number;
  lastError: string | null;
}

const median = (xs: readonly number[]): number | null => {
  const a = xs.filter((x) => Number.isFinite(x)).sort((p, q) => p - q);
  if (!a.length) return null;
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
};

const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;

// ───────────────────────────────────────────────────────────── main

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'string' },
      reps: { type: 'string' },
      only: { type: 'string' },
      builtin: { type: 'boolean', default: false },
      harness: { type: 'boolean', default: false },
      proxy: { type: 'string' },
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
  const reps = Math.max(1, Math.min(10, Number(values.reps ?? (quick ? 1 : 3)) || 1));
  const budgetS = Number(values.budget ?? (quick ? 300 : 1200)) || 1200;
  const only = values.only ? new RegExp(values.only) : null;
  const wanted = (name: string) => !only || only.test(name);
  const runTimeoutMs = quick ? 30_000 : 60_000;
  const tStart = Date.now();
  const overBudget = () => (Date.now() - tStart) / 1000 > budgetS;

  const smtpSource = values.builtin ? null : findTool('smtp-source');
  const smtpSink = values.builtin ? null : findTool('smtp-sink');
  const proxyMode: 'dist' | 'src' = values.proxy === 'src' || values.proxy === 'dist' ? values.proxy : distIsFresh() ? 'dist' : 'src';

  const work = mkdtempSync(path.join(os.tmpdir(), 'batv-bench-'));
  chmodSync(work, 0o755);
  const keysDir = path.join(work, 'keys');
  // sink, reject sink (sink+1, as run.sh expects), outbound, inbound
  const [sinkPort, rejectPort, outPort, inPort] = await freePorts(4);
  if (sinkPort === undefined || rejectPort === undefined || outPort === undefined || inPort === undefined) throw new Error('ports');

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
    limits: { maxClients: 1200, maxMessageBytes: 100 * MIB },
    log: { level: 'warn' },
  };
  const configFile = path.join(work, 'config.json');
  writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);

  const meta = {
    date: new Date().toISOString(),
    host: { nproc: os.availableParallelism(), cpu: os.cpus()[0]?.model ?? 'unknown', memGiB: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), loadavgStart: os.loadavg().map((x) => Number(x.toFixed(2))) },
    node: process.version,
    quick, reps,
    generator: smtpSource ?? 'built-in',
    sink: smtpSink ?? 'built-in',
    proxy: proxyMode,
    ports: { sink: sinkPort, rejectSink: rejectPort, outbound: outPort, inbound: inPort },
  };
  const log = (s: string) => process.stdout.write(`${s}\n`);
  log(`== batv-proxy bench: ${meta.host.nproc} cpus (${meta.host.cpu}), load ${meta.host.loadavgStart.join(' ')}, node ${meta.node}`);
  log(`   generator ${meta.generator}, sink ${meta.sink}, proxy ${proxyMode}, ${reps} rep(s)${quick ? ', quick' : ''}, work dir ${work}`);

  let sink: Sink | null = null;
  let rejectSink: Sink | null = null;
  let gen: Generator | null = null;
  let proxy: ProxyProc | null = null;
  const results: Record<string, unknown> = { meta };
  let correctnessOk = true;
  try {
    sink = await startSink(sinkPort, smtpSink, false);
    rejectSink = await startSink(rejectPort, smtpSink, true);
    proxy = await startProxyProcess(configFile, outPort, inPort, proxyMode);
    gen = await startGenerator(smtpSource);
    let P = proxy;
    const S = sink;
    const G = gen;

    // ── preflight: one message out, one forged bounce, one valid bounce (functional, not timed)
    {
      const pf: string[] = [];
      const c = await SmtpConn.open(P.outPort);
      const one = async (conn: SmtpConn, from: string, to: string): Promise<string> => {
        const m = await conn.cmd(`MAIL FROM:<${from}>`);
        if (m.code !== 250) return m.text;
        const r = await conn.cmd(`RCPT TO:<${to}>`);
        if (r.code !== 250) { await conn.cmd('RSET'); return r.text; }
        await conn.cmd('DATA');
        await conn.write(messageChunks(1024, from, to));
        return (await conn.reply()).text;
      };
      pf.push(`outbound: ${await one(c, SENDER, RCPT)}`);
      await c.quit();
      const i = await SmtpConn.open(P.inPort);
      const forged = await one(i, '', PLAIN_RCPT);
      const valid = await one(i, '', validRcpt);
      await i.quit();
      pf.push(`forged bounce: ${forged}`, `valid bounce: ${valid}`);
      log(`   preflight: ${pf.join('; ')}`);
      if (!pf[0]!.includes('250') || !forged.startsWith('550') || !valid.startsWith('250')) {
        log('   preflight FAILED: the numbers below would not mean anything');
        correctnessOk = false;
      }
    }

    // ── throughput scenarios: rep-major, direct and proxy back to back
    const scs = scenarios(quick).filter((s) => wanted(s.name));
    const records = new Map<string, RunRecord[]>(scs.map((s) => [s.name, []]));
    const runOne = async (sc: Scenario, side: 'direct' | 'proxy', rep: number): Promise<RunRecord> => {
      const inbound = sc.kind !== 'out';
      const refusal = sc.kind === 'reject' || sc.kind === 'rejecttag';
      const port = side === 'proxy' ? (inbound ? P.inPort : P.outPort) : refusal ? rejectPort : sinkPort;
      const from = inbound ? '' : SENDER;
      const to = sc.kind === 'out' ? RCPT : sc.kind === 'bounce' ? (side === 'proxy' ? validRcpt : PLAIN_RCPT) : sc.kind === 'rejecttag' ? FORGED_RCPT : PLAIN_RCPT;
      const s0 = await S.count();
      const cpu0 = side === 'proxy' ? cpuSeconds(P.pid) : null;
      const r = await G.run({ port, sessions: sc.sessions, count: sc.count, size: sc.size, reuse: sc.reuse, from, to, timeoutMs: runTimeoutMs });
      const cpu1 = side === 'proxy' ? cpuSeconds(P.pid) : null;
      await new Promise((res) => setTimeout(res, 150));
      let s1 = await S.count();
      if (!refusal) {
        const deadline = Date.now() + 3000;
        while (s1 - s0 < sc.count && Date.now() < deadline) {
          await new Promise((res) => setTimeout(res, 50));
          s1 = await S.count();
        }
      }
      const sinkDelta = s1 - s0;
      const done = refusal ? r.refused : sinkDelta;
      let status = 'ok';
      if (r.timedOut) status = 'timeout';
      else if (refusal && side === 'proxy' && sinkDelta > 0) status = 'leaked';
      else if (done < sc.count) status = refusal ? 'accepted_some' : 'incomplete';
      if (status !== 'ok' && status !== 'timeout') correctnessOk = false;
      return {
        rep, side, wallS: r.wallS, done, rate: r.wallS > 0 ? done / r.wallS : 0, status,
        proxyCpuS: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null, sinkDelta, lastError: r.lastError,
      };
    };
    for (let rep = 1; rep <= reps; rep++) {
      for (const sc of scs) {
        if (overBudget()) { log(`   budget of ${budgetS}s spent: skipping ${sc.name} rep ${rep}`); continue; }
        for (const side of ['direct', 'proxy'] as const) {
          const rec = await runOne(sc, side, rep);
          records.get(sc.name)!.push(rec);
          log(`   rep ${rep} ${sc.name.padEnd(24)} ${side.padEnd(6)} ${rec.wallS.toFixed(2).padStart(6)}s ${String(rec.done).padStart(6)} done ${rec.rate.toFixed(0).padStart(7)}/s  ${rec.status}${rec.status !== 'ok' && rec.lastError ? ` (${rec.lastError})` : ''}`);
        }
      }
    }
    const table: Record<string, unknown> = {};
    for (const sc of scs) {
      const rs = records.get(sc.name)!;
      const d = median(rs.filter((r) => r.side === 'direct').map((r) => r.rate));
      const p = median(rs.filter((r) => r.side === 'proxy').map((r) => r.rate));
      const cpuMs = median(rs.filter((r) => r.side === 'proxy' && r.proxyCpuS !== null && r.done > 0).map((r) => (1000 * r.proxyCpuS!) / r.done));
      const ratio = d && p !== null ? p / d : null;
      table[sc.name] = {
        kind: sc.kind, unit: sc.unit, size: sc.size, sessions: sc.sessions, count: sc.count, reuse: sc.reuse,
        directRate: d, proxyRate: p, ratio, target: sc.target,
        pass: sc.target === null || ratio === null ? null : ratio >= sc.target,
        proxyCpuMsPerMsg: cpuMs,
        statuses: [...new Set(rs.map((r) => `${r.side}:${r.status}`))],
        runs: rs,
      };
    }
    // connection-per-message CPU against a reused session's message (same size and concurrency)
    const nc = table.out_4k_c50_newconn as { proxyCpuMsPerMsg: number | null } | undefined;
    const re = table.out_4k_c50 as { proxyCpuMsPerMsg: number | null } | undefined;
    if (nc?.proxyCpuMsPerMsg != null && re?.proxyCpuMsPerMsg != null) {
      const overhead = nc.proxyCpuMsPerMsg - re.proxyCpuMsPerMsg;
      table.newconn_cpu = {
        cpuMsPerConnection: nc.proxyCpuMsPerMsg, cpuMsPerReusedMessage: re.proxyCpuMsPerMsg,
        connectionOverheadMs: overhead, pass: overhead <= re.proxyCpuMsPerMsg,
      };
    }
    results.throughput = table;

    // ── added latency per transaction: one session each, single 4 KiB transactions, blocks alternated
    if (wanted('latency') && !overBudget()) {
      const n = quick ? 300 : 1500;
      const block = 50;
      const body = messageChunks(4096, SENDER, RCPT);
      const direct = await SmtpConn.open(sinkPort);
      const via = await SmtpConn.open(P.outPort);
      const samples = { direct: [] as number[], proxy: [] as number[] };
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
      for (let i = 0; i < 50; i++) { await txn(direct); await txn(via); } // warm-up
      const deadline = Date.now() + (quick ? 30_000 : 90_000);
      while (samples.proxy.length < n && Date.now() < deadline) {
        for (let i = 0; i < block; i++) samples.direct.push(await txn(direct));
        for (let i = 0; i < block; i++) samples.proxy.push(await txn(via));
      }
      await direct.quit();
      await via.quit();
      const d = [...samples.direct].sort((a, b) => a - b);
      const p = [...samples.proxy].sort((a, b) => a - b);
      results.latency = {
        transactions: p.length, size: 4096,
        directMs: { p50: percentile(d, 50), p99: percentile(d, 99) },
        proxyMs: { p50: percentile(p, 50), p99: percentile(p, 99) },
        addedMs: { p50: percentile(p, 50) - percentile(d, 50), p99: percentile(p, 99) - percentile(d, 99) },
      };
    }

    // RSS depends on what the heap went through before; the memory rows each get a fresh proxy,
    // warmed up with a few hundred small messages (code compiled, next-hop sessions pooled).
    const freshProxy = async (): Promise<ProxyProc> => {
      await P.stop();
      proxy = await startProxyProcess(configFile, outPort, inPort, proxyMode);
      await G.run({ port: proxy.outPort, sessions: 10, count: 500, size: 4096, reuse: true, from: SENDER, to: RCPT, timeoutMs: 30_000 });
      await new Promise((res) => setTimeout(res, 1000));
      return proxy;
    };

    // ── peak RSS while relaying one 50 MiB message
    if (wanted('out_big_50m') && !overBudget()) {
      P = await freshProxy();
      const size = 50 * MIB;
      const runs: unknown[] = [];
      for (let rep = 1; rep <= (quick ? 1 : 2); rep++) {
        const d = await G.run({ port: sinkPort, sessions: 1, count: 1, size, reuse: true, from: SENDER, to: RCPT, timeoutMs: 120_000 });
        const before = rssKb(P.pid) ?? 0;
        const sampler = rssSampler(P.pid);
        const s0 = await S.count();
        const r = await G.run({ port: P.outPort, sessions: 1, count: 1, size, reuse: true, from: SENDER, to: RCPT, timeoutMs: 120_000 });
        const peak = sampler.stop();
        await new Promise((res) => setTimeout(res, 150));
        const delivered = (await S.count()) - s0;
        if (delivered < 1) correctnessOk = false;
        runs.push({ rep, directS: d.wallS, proxyS: r.wallS, rssBeforeKb: before, rssPeakKb: peak, riseMiB: (peak - before) / 1024, status: delivered >= 1 ? 'ok' : `not delivered (${r.lastError ?? ''})` });
        log(`   rep ${rep} out_big_50m             direct ${d.wallS.toFixed(2)}s proxy ${r.wallS.toFixed(2)}s  RSS ${(before / 1024).toFixed(0)} -> ${(peak / 1024).toFixed(0)} MiB  ${delivered >= 1 ? 'ok' : 'NOT DELIVERED'}`);
      }
      const rises = runs.map((r) => (r as { riseMiB: number }).riseMiB);
      results.bigMessage = { sizeMiB: 50, maxRiseMiB: Math.max(...rises), target: 30, pass: Math.max(...rises) < 30, runs };
    }

    // ── RSS with 1,000 idle connections (greeted, EHLO said, then silent)
    if (wanted('idle') && !overBudget()) {
      const want = 1000;
      P = await freshProxy();
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
        await rejectSink.stop();
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
    await sink?.stop();
    await rejectSink?.stop();
    if (!values.keep) rmSync(work, { recursive: true, force: true });
  }

  (results.meta as { loadavgEnd?: number[] }).loadavgEnd = os.loadavg().map((x) => Number(x.toFixed(2)));
  printReport(results);
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(results, null, 2)}\n`);
    log(`results: ${values.json}`);
  }
  return correctnessOk ? 0 : 1;
}

function printReport(results: Record<string, unknown>): void {
  const f = (x: number | null | undefined, d = 0) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
  const out: string[] = [''];
  const t = results.throughput as Record<string, Record<string, unknown>> | undefined;
  if (t) {
    out.push(`${'scenario'.padEnd(24)} ${'unit'.padEnd(10)} ${'direct/s'.padStart(9)} ${'proxy/s'.padStart(9)} ${'ratio'.padStart(6)} ${'target'.padStart(7)} ${'cpu ms/msg'.padStart(10)}  verdict  runs`);
    for (const [name, s] of Object.entries(t)) {
      if (name === 'newconn_cpu') continue;
      const target = s.target as number | null;
      const pass = s.pass as boolean | null;
      out.push(`${name.padEnd(24)} ${String(s.unit).padEnd(10)} ${f(s.directRate as number).padStart(9)} ${f(s.proxyRate as number).padStart(9)} ${f(s.ratio as number, 3).padStart(6)} ${(target === null ? '-' : `>=${target.toFixed(2)}`).padStart(7)} ${f(s.proxyCpuMsPerMsg as number, 3).padStart(10)}  ${(pass === null ? '-' : pass ? 'PASS' : 'FAIL').padEnd(7)}  ${(s.statuses as string[]).filter((x) => !x.endsWith(':ok')).join(',') || 'ok'}`);
    }
    const nc = t.newconn_cpu as Record<string, number | boolean> | undefined;
    if (nc) {
      out.push(`connection per message: proxy CPU ${f(nc.cpuMsPerConnection as number, 3)} ms/connection vs ${f(nc.cpuMsPerReusedMessage as number, 3)} ms per reused-session message (overhead ${f(nc.connectionOverheadMs as number, 3)} ms): ${nc.pass ? 'PASS' : 'FAIL'} (target: overhead <= a reused message)`);
    }
  }
  const lat = results.latency as { transactions: number; directMs: Record<string, number>; proxyMs: Record<string, number>; addedMs: Record<string, number> } | undefined;
  if (lat) {
    out.push(`latency, 4 KiB, one session, ${lat.transactions} transactions each: direct p50 ${f(lat.directMs.p50, 3)} / p99 ${f(lat.directMs.p99, 3)} ms; proxy p50 ${f(lat.proxyMs.p50, 3)} / p99 ${f(lat.proxyMs.p99, 3)} ms; added p50 ${f(lat.addedMs.p50, 3)} / p99 ${f(lat.addedMs.p99, 3)} ms`);
  }
  const big = results.bigMessage as { maxRiseMiB: number; pass: boolean; runs: Array<{ rssPeakKb: number }> } | undefined;
  if (big) out.push(`50 MiB message: peak RSS ${f(Math.max(...big.runs.map((r) => r.rssPeakKb)) / 1024)} MiB, rise ${f(big.maxRiseMiB, 1)} MiB: ${big.pass ? 'PASS' : 'FAIL'} (target < 30 MiB)`);
  const idle = results.idle as { connections: number; rssKb: number; riseMiB: number; kibPerConnection: number | null } | undefined;
  if (idle) out.push(`${idle.connections} idle connections: RSS ${f(idle.rssKb / 1024)} MiB, rise ${f(idle.riseMiB, 1)} MiB (${f(idle.kibPerConnection, 1)} KiB per connection)`);
  const meta = results.meta as { host: { loadavgStart: number[] }; loadavgEnd?: number[] };
  out.push(`(load average at start ${meta.host.loadavgStart.join(' ')}, at end ${meta.loadavgEnd?.join(' ') ?? '-'}; ratios are medians of interleaved runs)`);
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
    process.exit(130);
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
