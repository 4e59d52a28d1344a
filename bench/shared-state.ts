/**
 * What shared limits (state.redis, issue 12) cost on the refusal path, measured in one sitting with one
 * proxy process at a time (never part of `npm test`):
 *
 *   local   inbound.limits in the process (state.redis null, the default)
 *   redis   the same limits in a local redis-server (test/helpers/redis.ts), state.timeoutMs as configured
 *
 * For each side: forged-bounce refusals per second through the inbound listener (10 sessions reusing their
 * connections, `MAIL FROM:<>` + `RCPT TO:<forged tag>` refused 550 + RSET), and the RCPT reply time of
 * one session alone (p50/p99 over a fixed count). Each refused bounce costs the redis side three round
 * trips (cooling-off check at MAIL and at RCPT, the refusal count), so the difference is Redis's.
 * refusedPerClient is set to its maximum so the one client is never cooled off (every RCPT is refused
 * the same way on both sides). The proxy logs at info, as in production (BENCH_LOG_LEVEL to change),
 * into a file that is searched afterwards for fallbacks to local limits.
 *
 *   npm run bench:shared                    # ~40 s: 2 repetitions of both sides, 6 s of load each
 *   npm run bench:shared -- --seconds 3 --reps 1 --latency 500
 *   npm run bench:shared -- --timeout-ms 5  # state.timeoutMs for the redis side (default: the config default)
 *
 * Bounded: every load run stops after --seconds (or 200,000 refusals); every process started here is
 * stopped by its PID, also on errors and Ctrl-C.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runLoad, SmtpConn } from './smtp-tools.js';
import { ensureBuilt, freePort, portFree } from '../test/helpers/proc.js';
import { startRedis, type RedisProcess } from '../test/helpers/redis.js';
import { startCountingSink, type CountingSink } from '../test/helpers/counting-sink.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FORGED = 'prvs=0000000000=user@example.com';
const FELL_BACK = 'shared state unavailable; using local limits';

const { values: opts } = parseArgs({
  options: {
    seconds: { type: 'string', default: '6' },
    reps: { type: 'string', default: '2' },
    latency: { type: 'string', default: '2000' },
    sessions: { type: 'string', default: '10' },
    'timeout-ms': { type: 'string' },
  },
});
const SECONDS = Number(opts.seconds);
const REPS = Number(opts.reps);
const LATENCY_N = Number(opts.latency);
const SESSIONS = Number(opts.sessions);
const TIMEOUT_MS = opts['timeout-ms'] === undefined ? undefined : Number(opts['timeout-ms']);

interface Side { name: 'local' | 'redis'; rate: number[]; p50: number[]; p99: number[]; fallbacks: number; refusedOk: boolean }

const children = new Set<ChildProcess>();
const stopChild = (c: ChildProcess): Promise<void> => new Promise((resolve) => {
  if (c.exitCode !== null || c.signalCode !== null) return resolve();
  c.once('exit', () => resolve());
  try { process.kill(c.pid!, 'SIGTERM'); } catch { resolve(); }
  setTimeout(() => { try { process.kill(c.pid!, 'SIGKILL'); } catch { /* gone */ } }, 5000).unref();
});

async function waitListening(port: number, child: ChildProcess, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (await portFree(port)) {
    if (child.exitCode !== null) throw new Error(`the proxy exited with ${child.exitCode}`);
    if (Date.now() > end) throw new Error(`nothing listens on ${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One proxy process for a side; its stdout (JSON log lines) goes to a file. */
async function startProxy(work: string, side: Side['name'], sink: CountingSink, redis: RedisProcess): Promise<{ inPort: number; logFile: string; stop: () => Promise<void> }> {
  const outPort = await freePort([redis.port]);
  const inPort = await freePort([redis.port, outPort]);
  const config = {
    domains: ['example.com'],
    keys: { dir: path.join(work, 'keys') },
    outbound: { listen: `127.0.0.1:${outPort}`, relay: `smtp://127.0.0.1:${sink.port}` },
    inbound: { listen: `127.0.0.1:${inPort}`, mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject', limits: { refusedPerClient: 1_000_000 } },
    metrics: { listen: null },
    log: { level: process.env.BENCH_LOG_LEVEL ?? 'info' },
    state: side === 'redis' ? { redis: redis.url, prefix: `bench${Date.now()}:`, ...(TIMEOUT_MS !== undefined ? { timeoutMs: TIMEOUT_MS } : {}) } : {},
  };
  const file = path.join(work, `${side}.json`);
  writeFileSync(file, JSON.stringify(config));
  const logFile = path.join(work, `${side}-${Date.now()}.log`);
  const fd = openSync(logFile, 'w');
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'batv-proxy.js'), 'serve', '--config', file], { cwd: work, stdio: ['ignore', fd, 'inherit'] });
  closeSync(fd);
  children.add(child);
  child.once('exit', () => children.delete(child));
  try {
    await waitListening(inPort, child);
  } catch (e) {
    await stopChild(child);
    throw e;
  }
  return { inPort, logFile, stop: () => stopChild(child) };
}

async function rcptLatency(port: number, n: number): Promise<{ p50: number; p99: number; ok: boolean }> {
  const c = await SmtpConn.open(port);
  const times: number[] = [];
  let ok = true;
  try {
    for (let i = 0; i < n; i++) {
      if ((await c.cmd('MAIL FROM:<>')).code !== 250) ok = false;
      const t0 = performance.now();
      const r = await c.cmd(`RCPT TO:<${FORGED}>`);
      times.push(performance.now() - t0);
      if (r.code !== 550) ok = false;
      await c.cmd('RSET');
    }
  } finally {
    await c.quit();
  }
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!;
  return { p50: q(0.5), p99: q(0.99), ok };
}

async function measure(work: string, side: Side, sink: CountingSink, redis: RedisProcess): Promise<void> {
  const p = await startProxy(work, side.name, sink, redis);
  try {
    // Warm-up (JIT, the Redis connection, the next-hop pool), not counted.
    await runLoad({ port: p.inPort, sessions: SESSIONS, count: 500, size: 200, reuse: true, from: '', to: FORGED, timeoutMs: 10_000 });
    const r = await runLoad({ port: p.inPort, sessions: SESSIONS, count: 200_000, size: 200, reuse: true, from: '', to: FORGED, timeoutMs: SECONDS * 1000 });
    // At the time limit the generator closes its connections: the commands then in flight count as failed.
    if (r.delivered > 0 || r.failed > (r.timedOut ? SESSIONS : 0)) side.refusedOk = false;
    side.rate.push(r.refused / r.wallS);
    const l = await rcptLatency(p.inPort, LATENCY_N);
    if (!l.ok) side.refusedOk = false;
    side.p50.push(l.p50);
    side.p99.push(l.p99);
  } finally {
    await p.stop();
  }
  side.fallbacks += readFileSync(p.logFile, 'utf8').split('\n').filter((l) => l.includes(FELL_BACK)).length;
}

const signed = (x: number): string => `${x >= 0 ? '+' : ''}${x.toFixed(3)}`;
const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };

async function main(): Promise<void> {
  ensureBuilt();
  const work = mkdtempSync(path.join(os.tmpdir(), 'batv-bench-shared-'));
  let redis: RedisProcess | null = null;
  let sink: CountingSink | null = null;
  const stopAll = async () => {
    await Promise.all([...children].map(stopChild));
    await redis?.stop();
    await sink?.close();
    rmSync(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => { stopAll().finally(() => process.exit(130)); });
  try {
    redis = await startRedis();
    sink = await startCountingSink();
    const sides: Side[] = [
      { name: 'local', rate: [], p50: [], p99: [], fallbacks: 0, refusedOk: true },
      { name: 'redis', rate: [], p50: [], p99: [], fallbacks: 0, refusedOk: true },
    ];
    const out = (s: string) => process.stdout.write(`${s}\n`);
    out(`== shared-state bench: ${os.availableParallelism()} cpus, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}, node ${process.version}, ${SESSIONS} sessions x ${SECONDS} s, latency over ${LATENCY_N} RCPTs, ${REPS} rep(s), redis state.timeoutMs ${TIMEOUT_MS ?? 'default (5)'}`);
    for (let rep = 0; rep < REPS; rep++) for (const side of sides) await measure(work, side, sink, redis);
    const [local, shared] = sides as [Side, Side];
    const row = (c: string[]) => out(c.map((x, i) => (i === 0 ? x.padEnd(8) : x.padStart(14))).join(''));
    row(['side', 'refusals/s', 'RCPT p50 ms', 'RCPT p99 ms', 'fallbacks', 'replies ok']);
    for (const s of sides) row([s.name, median(s.rate).toFixed(0), median(s.p50).toFixed(3), median(s.p99).toFixed(3), String(s.fallbacks), String(s.refusedOk)]);
    row(['redis-local', `${(100 * (median(shared.rate) / median(local.rate) - 1)).toFixed(1)} %`, signed(median(shared.p50) - median(local.p50)), signed(median(shared.p99) - median(local.p99)), '', '']);
    if (shared.fallbacks > 0) out(`   note: the redis side fell back to local limits ${shared.fallbacks} time(s) (a Redis reply slower than state.timeoutMs); its numbers mix both`);
    out(`   per rep: local ${local.rate.map((x) => x.toFixed(0)).join(', ')} /s; redis ${shared.rate.map((x) => x.toFixed(0)).join(', ')} /s`);
  } finally {
    await stopAll();
  }
}

await main();
