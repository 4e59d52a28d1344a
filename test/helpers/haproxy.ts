/**
 * A real HAProxy 2.6 (unpacked by scripts/install-peers.sh into .peers/haproxy, run through its wrapper
 * .peers/bin/haproxy, which execs the binary so the PID we hold is HAProxy's own) in front of several
 * batv-proxy replicas, the way README "Deployment recipes" puts a load balancer in front of the proxy.
 *
 * It writes a haproxy.cfg in a temp dir: mode tcp, one frontend per role on a free 127.0.0.1 port, each to
 * a backend holding every replica's listener for that role, balanced roundrobin, with `send-proxy-v2` (PROXY
 * protocol v2, the binary header operators configure) on every server (the replicas need
 * `proxyProtocolFrom: ['127.0.0.1']` or a range holding it) and a health check per server:
 * `option httpchk GET /readyz` against the replica's metrics port (`check port`), or a plain TCP connect
 * check when a replica has no metrics port. `retries 0` and no `option redispatch`: a connection HAProxy
 * routes to a replica that is not listening reaches the client as a connection closed without a greeting,
 * so tests see what HAProxy does not hide. A `stats socket` in the temp dir answers `show stat`, which
 * {@link HaproxyProcess.serverStatus} reads (from node, over the unix socket) to wait for a server to be
 * marked DOWN or UP.
 *
 * `proxyProtocol: 1` puts `send-proxy` (the v1 text line) on the servers instead; the listeners read both
 * (src/smtp/proxy-header.ts).
 *
 * @example
 *   const ha = await startHaproxy({ replicas: [{ name: 'r0', outbound: 2601, inbound: 2602, metrics: 2603 }, ...] });
 *   const t = talkFrom('127.0.0.2', ha.frontends.outbound);   // the real client is 127.0.0.2, HAProxy is 127.0.0.1
 *   await ha.waitForServer('outbound', 'r0', 'DOWN');
 *   await ha.stop();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { peerBinary } from './peer-bin.js';
import type { PeerCheck } from './peers.js';
import { freePort } from './proc.js';
import { talk, type Talk } from './talk.js';

export const HAPROXY_BIN = process.env.HAPROXY_BIN ?? peerBinary('haproxy', '/usr/sbin/haproxy');

let checked: PeerCheck | undefined;
/** haproxy runnable (`-v` answers "HAProxy version 2.x"), for shouldRun(). */
export function checkHaproxy(): PeerCheck {
  if (checked) return checked;
  const r = spawnSync(HAPROXY_BIN, ['-v'], { timeout: 10_000 });
  const first = r.stdout?.toString().split('\n')[0] ?? '';
  checked = r.status === 0 && /^HAProxy version 2\./.test(first)
    ? { available: true, reason: first }
    : { available: false, reason: `${HAPROXY_BIN} -v: ${first || r.stderr?.toString().trim() || r.error?.message || `exit ${r.status}`}` };
  return checked;
}

export type Role = 'outbound' | 'inbound';

/** One replica's ports on 127.0.0.1 (HAProxy's server name is `name`). */
export interface Replica {
  readonly name: string;
  readonly outbound: number;
  readonly inbound: number;
  /** Its metrics listener: the health check is `GET /readyz` there; without one, a TCP connect check. */
  readonly metrics?: number;
}

export interface HaproxyOptions {
  readonly replicas: readonly Replica[];
  /** Health check interval (ms); default 100. */
  readonly interMs?: number;
  /** Failed checks before DOWN (default 2) and passed checks before UP (default 1). */
  readonly fall?: number;
  readonly rise?: number;
  /** PROXY protocol version on the servers: 2 = `send-proxy-v2` (default), 1 = `send-proxy`. */
  readonly proxyProtocol?: 1 | 2;
}

/** One row of `show stat` for a server. */
export interface ServerStat {
  /** "UP", "DOWN", "UP 1/2" (going down), "DOWN 1/2" (going up), "MAINT", "no check". */
  readonly status: string;
  /** Sessions in total that HAProxy sent to this server. */
  readonly sessions: number;
  /** Sessions open right now. */
  readonly current: number;
}

export interface HaproxyProcess {
  readonly pid: number;
  readonly dir: string;
  readonly config: string;
  /** The frontends' ports on 127.0.0.1. */
  readonly frontends: Record<Role, number>;
  /** `show stat` over the stats socket: every server of both backends, by role and name. */
  stats(): Promise<Record<Role, Record<string, ServerStat>>>;
  serverStatus(role: Role, server: string): Promise<string>;
  /** Resolves once `show stat` shows the server exactly UP or DOWN (all checks settled); rejects after timeoutMs. */
  waitForServer(role: Role, server: string, status: 'UP' | 'DOWN', timeoutMs?: number): Promise<void>;
  /** Everything HAProxy wrote on stderr (its alerts and warnings). */
  stderr(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM by PID (SIGKILL after 2 s), waits for the exit, removes the temp dir. */
  stop(): Promise<void>;
}

/** The haproxy.cfg for these replicas; `sock` is the stats socket's path. */
export function haproxyConfig(o: HaproxyOptions & { frontends: Record<Role, number>; sock: string }): string {
  const inter = o.interMs ?? 100;
  const backend = (role: Role): string[] => [
    `backend ${role}`,
    '  balance roundrobin',
    ...(o.replicas.every((r) => r.metrics !== undefined) ? ['  option httpchk GET /readyz'] : []),
    ...o.replicas.map((r) => `  server ${r.name} 127.0.0.1:${r[role]} ${o.proxyProtocol === 1 ? 'send-proxy' : 'send-proxy-v2'} check${r.metrics !== undefined ? ` port ${r.metrics}` : ''} inter ${inter} fastinter ${inter} downinter ${inter} fall ${o.fall ?? 2} rise ${o.rise ?? 1}`),
    '',
  ];
  return [
    'global',
    `  stats socket ${o.sock} mode 600 level admin`,
    '  maxconn 2000',
    '',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  timeout check 2s',
    '  retries 0',
    '',
    'frontend outbound',
    `  bind 127.0.0.1:${o.frontends.outbound}`,
    '  default_backend outbound',
    '',
    'frontend inbound',
    `  bind 127.0.0.1:${o.frontends.inbound}`,
    '  default_backend inbound',
    '',
    ...backend('outbound'),
    ...backend('inbound'),
  ].join('\n');
}

/** Sends one command to a stats socket (non-interactive: HAProxy answers and closes) and returns the answer. */
export function statsCommand(sock: string, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sock });
    let out = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`stats socket: no answer to ${command} within ${timeoutMs} ms`)); }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${command}\n`));
    s.on('data', (d: string) => { out += d; });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('close', () => { clearTimeout(timer); resolve(out); });
  });
}

/** `show stat` CSV to the servers' rows (the FRONTEND and BACKEND rows are left out). */
export function parseShowStat(csv: string): Record<Role, Record<string, ServerStat>> {
  const lines = csv.split('\n').filter((l) => l.trim() !== '');
  const header = (lines.shift() ?? '').replace(/^# /, '').split(',');
  const col = (name: string): number => {
    const i = header.indexOf(name);
    if (i < 0) throw new Error(`show stat: no ${name} column in ${JSON.stringify(header)}`);
    return i;
  };
  const [px, sv, status, stot, scur] = ['pxname', 'svname', 'status', 'stot', 'scur'].map(col) as [number, number, number, number, number];
  const out: Record<Role, Record<string, ServerStat>> = { outbound: {}, inbound: {} };
  for (const l of lines) {
    const f = l.split(',');
    const role = f[px] as Role;
    if ((role !== 'outbound' && role !== 'inbound') || f[sv] === 'FRONTEND' || f[sv] === 'BACKEND') continue;
    out[role][f[sv]!] = { status: f[status]!, sessions: Number(f[stot]), current: Number(f[scur]) };
  }
  return out;
}

/** Resolves once 127.0.0.1:port accepts a connection (HAProxy bound its frontend); rejects after timeoutMs. */
async function accepting(port: number, timeoutMs: number, gone: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    const why = gone();
    if (why) throw new Error(why);
    if (Date.now() > deadline) throw new Error(`haproxy: 127.0.0.1:${port} not accepting within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startHaproxy(o: HaproxyOptions): Promise<HaproxyProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-haproxy-'));
  const taken = o.replicas.flatMap((r) => [r.outbound, r.inbound, ...(r.metrics !== undefined ? [r.metrics] : [])]);
  const outbound = await freePort(taken);
  const frontends: Record<Role, number> = { outbound, inbound: await freePort([...taken, outbound]) };
  const sock = path.join(dir, 'stats.sock');
  const config = path.join(dir, 'haproxy.cfg');
  writeFileSync(config, haproxyConfig({ ...o, frontends, sock }));
  const check = spawnSync(HAPROXY_BIN, ['-c', '-f', config], { timeout: 10_000 });
  if (check.status !== 0) throw new Error(`haproxy -c refused ${config}: ${check.stdout?.toString()}${check.stderr?.toString()}`);

  // -db: foreground, no daemon, no master process; -f: our config only.
  const child: ChildProcess = spawn(HAPROXY_BIN, ['-db', '-f', config], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  if (child.pid === undefined) throw new Error(`cannot spawn ${HAPROXY_BIN}`);
  const pid = child.pid;
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString('utf8'); });
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { exitInfo = { code, signal }; resolve(exitInfo); });
  });

  const stop = async (): Promise<void> => {
    if (!exitInfo) {
      try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 2000).unref());
      if ((await Promise.race([exited, timer])) === 'timeout') {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
        await exited;
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const stats = async (): Promise<Record<Role, Record<string, ServerStat>>> => parseShowStat(await statsCommand(sock, 'show stat'));
  const serverStatus = async (role: Role, server: string): Promise<string> => {
    const s = (await stats())[role][server];
    if (!s) throw new Error(`haproxy: no server ${role}/${server}`);
    return s.status;
  };

  try {
    const gone = () => (exitInfo ? `haproxy exited ${JSON.stringify(exitInfo)}: ${err}` : null);
    await accepting(frontends.outbound, 10_000, gone);
    await accepting(frontends.inbound, 10_000, gone);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    pid,
    dir,
    config,
    frontends,
    stats,
    serverStatus,
    async waitForServer(role, server, status, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      let last = '';
      for (;;) {
        last = await serverStatus(role, server);
        if (last === status) return;
        if (Date.now() > deadline) throw new Error(`haproxy: ${role}/${server} is "${last}", not ${status}, after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    stderr: () => err,
    exited,
    stop,
  };
}

/**
 * {@link talk} from a chosen source address (e.g. 127.0.0.2, so the real client differs from HAProxy's
 * 127.0.0.1). talk() takes no local address, so its one synchronous net.connect call is given one here.
 * TODO: a `localAddress` option on talk() would make this a one-line call.
 */
export function talkFrom(localAddress: string, port: number, host = '127.0.0.1'): Talk {
  const connect = net.connect;
  (net as { connect: unknown }).connect = (p: number, h: string) => connect({ port: p, host: h, localAddress });
  try {
    return talk(port, host);
  } finally {
    (net as { connect: unknown }).connect = connect;
  }
}
