/**
 * A real HAProxy 2.6 in front of two batv-proxy replicas (issue 12, item 4): `node bin/batv-proxy.js
 * serve` twice, sharing one keys directory and one redis-server (state.redis), with proxyProtocolFrom
 * [127.0.0.1] on both listeners (an IP list; CIDRs are not accepted there); HAProxy (test/helpers/haproxy.ts) balances roundrobin, sends PROXY v2
 * and health-checks GET /readyz on each replica's metrics port. The next hop and mailbox host is a real
 * smtp-server sink. Clients connect to HAProxy from 127.0.0.2 (127.0.0.3 for a bystander), so the real
 * client differs from HAProxy's 127.0.0.1.
 *
 *   1. each replica logs the real client (127.0.0.2) for transactions and refusals, on both listeners;
 *   2. a forged-bounce flood spread over both replicas is cooled off at refusedPerClient counted over both,
 *      for 127.0.0.2 only;
 *   3. a tag's replay cap (bouncesPerTag) holds across the replicas;
 *   4. SIGKILL of a replica under bounded load: the ledger finds nothing lost or duplicated;
 *   5. SIGTERM drains: /readyz fails first, HAProxy marks the replica DOWN while its listeners still
 *      accept, in-flight transactions finish, and no client is refused.
 *
 * The tests share the replicas and run in this order (4 restarts the replica it kills).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkHaproxy, startHaproxy, talkFrom, type HaproxyProcess, type Role } from '../helpers/haproxy.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { shouldRun, type PeerCheck } from '../helpers/peers.js';
import { cli, connectOutcome, ensureBuilt, freePort, startServe, type LogLine, type ServeProcess } from '../helpers/proc.js';
import { redisServerBinary, startRedis, type RedisProcess } from '../helpers/redis.js';
import { startSink, type Sink } from '../helpers/sink.js';
import type { Talk } from '../helpers/talk.js';
import { existsSync } from 'node:fs';

function checkRedis(): PeerCheck {
  const bin = existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : '/usr/bin/redis-check-rdb';
  return existsSync(bin) ? { available: true, reason: bin } : { available: false, reason: 'no /usr/bin/redis-server nor redis-tools\' /usr/bin/redis-check-rdb' };
}
const haproxy = checkHaproxy();
const RUN = shouldRun('HAProxy in front of two replicas', haproxy) && shouldRun('HAProxy in front of two replicas (redis)', checkRedis());

const CLIENT = '127.0.0.2';
const BYSTANDER = '127.0.0.3';
const REFUSED_PER_CLIENT = 5;
const BOUNCES_PER_TAG = 3;
const COOLING = `421 4.7.0 Too many refused bounces from ${CLIENT}; try again later`;
const UNTAGGED = '550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused';
const BOUNCE = 'From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nSorry.\r\n';
const QUEUED = '250 Ok: queued as sink';
const NAMES = ['r0', 'r1'] as const;
type Name = (typeof NAMES)[number];

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await pause(20);
  }
}

interface Ports { outbound: number; inbound: number; metrics: number }

describe.skipIf(!RUN)('HAProxy 2.6 in front of two replicas sharing keys and Redis', () => {
  let dir: string;
  let keys: string;
  let redis: RedisProcess;
  let sink: Sink;
  let ha: HaproxyProcess;
  const ports = {} as Record<Name, Ports>;
  const replicas = {} as Record<Name, ServeProcess>;
  const configFile = (n: Name) => path.join(dir, `${n}.json`);
  const start = async (n: Name) => { replicas[n] = await startServe({ args: ['--config', configFile(n)], cwd: dir }); };

  beforeAll(async () => {
    ensureBuilt();
    await redisServerBinary();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-haproxy-test-'));
    keys = path.join(dir, 'keys');
    expect((await cli(['keys', 'init', '--dir', keys])).code).toBe(0);
    redis = await startRedis();
    sink = await startSink();
    const taken: number[] = [];
    const port = async () => { const p = await freePort(taken); taken.push(p); return p; };
    for (const n of NAMES) {
      ports[n] = { outbound: await port(), inbound: await port(), metrics: await port() };
      const hop = `smtp://127.0.0.1:${sink.port}`;
      writeFileSync(configFile(n), JSON.stringify({
        domains: ['example.com'],
        hostname: `${n}.proxy.test`,
        srs: { domain: 'srs.example.net' },
        keys: { dir: keys },
        outbound: { listen: `127.0.0.1:${ports[n].outbound}`, relay: hop, allowNetworks: ['127.0.0.0/8'], proxyProtocolFrom: ['127.0.0.1'] },
        inbound: {
          listen: `127.0.0.1:${ports[n].inbound}`, mailbox: hop, untaggedBounces: 'reject', proxyProtocolFrom: ['127.0.0.1'],
          limits: { refusedPerClient: REFUSED_PER_CLIENT, refusedWindowSec: 600, coolingOffSec: 900, bouncesPerTag: BOUNCES_PER_TAG, tagWindowSec: 3600 },
        },
        // A generous Redis timeout: on a busy 2-core machine the default 5 ms would fall back to local limits.
        state: { redis: redis.url, prefix: 'haproxy-test:', timeoutMs: 1000 },
        timeouts: { connectMs: 2000, greetingMs: 5000, commandMs: 5000, dataMs: 10_000, clientIdleMs: 20_000 },
        metrics: { listen: `127.0.0.1:${ports[n].metrics}` },
        log: { level: 'info' },
      }));
    }
    await Promise.all(NAMES.map(start));
    ha = await startHaproxy({ replicas: NAMES.map((n) => ({ name: n, ...ports[n] })) });
    for (const role of ['outbound', 'inbound'] as const) for (const n of NAMES) await ha.waitForServer(role, n, 'UP');
  }, 60_000);

  afterAll(async () => {
    await ha?.stop();
    for (const n of NAMES) await replicas[n]?.stop();
    await sink?.close();
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A session through HAProxy's frontend from `from`, after EHLO; the greeting names the replica. */
  async function session(role: Role, from = CLIENT): Promise<{ t: Talk; replica: Name; greeting: string }> {
    const t = talkFrom(from, ha.frontends[role]);
    const greeting = await t.greeting;
    const m = /^220 (r[01])\.proxy\.test /.exec(greeting);
    if (!m) throw new Error(`greeting through HAProxy: ${JSON.stringify(greeting)}`);
    expect(await t.cmd('EHLO client.test')).toMatch(/^250-r[01]\.proxy\.test /);
    return { t, replica: m[1] as Name, greeting };
  }

  const tagOf = async (address: string): Promise<string> => {
    const r = await cli(['sign', address, '--dir', keys]);
    expect(r.code).toBe(0);
    return r.stdout.trim();
  };
  const linesOf = (n: Name, from: number, match: (l: LogLine) => boolean) => replicas[n].lines.slice(from).filter(match);

  it('1. each replica logs the real client 127.0.0.2, not HAProxy, for transactions and refusals on both listeners', async () => {
    const mark = { r0: replicas.r0.lines.length, r1: replicas.r1.lines.length };
    const tag = await tagOf('alice@example.com');
    // Two of each in a row: roundrobin sends one to each replica.
    const seen: Array<{ role: Role; replica: Name }> = [];
    for (let i = 0; i < 2; i++) {
      const o = await session('outbound');
      expect(await o.t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
      expect(await o.t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
      expect((await o.t.data('Subject: via haproxy\r\n\r\nHello.\r\n')).end).toBe(QUEUED);
      await o.t.quit();
      seen.push({ role: 'outbound', replica: o.replica });
    }
    for (let i = 0; i < 2; i++) {
      const b = await session('inbound');
      expect(await b.t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
      expect(await b.t.cmd(`RCPT TO:<${tag}>`)).toBe('250 Accepted');
      expect((await b.t.data(BOUNCE)).end).toBe(QUEUED);
      await b.t.quit();
      seen.push({ role: 'inbound', replica: b.replica });
    }
    for (let i = 0; i < 2; i++) {
      const f = await session('inbound');
      expect(await f.t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
      expect(await f.t.cmd('RCPT TO:<alice@example.com>')).toBe(UNTAGGED);
      await f.t.quit();
      seen.push({ role: 'inbound', replica: f.replica });
    }
    // Roundrobin: each pair went to both replicas.
    for (const k of [0, 2, 4]) expect(new Set([seen[k]!.replica, seen[k + 1]!.replica])).toEqual(new Set(NAMES));

    // The Received: line names the real client too.
    const msgs = await sink.waitForMessages(4);
    for (const m of msgs) expect(m.body.toString('latin1').split('\r\n')[0]).toBe(`Received: from client.test ([${CLIENT}])`);

    for (const n of NAMES) {
      await replicas[n].waitForLine((l) => l.msg === 'transaction' && l.role === 'inbound' && l.outcome === 'client-left', { from: mark[n] });
      const txns = linesOf(n, mark[n], (l) => l.msg === 'transaction');
      const summary = txns.map((l) => ({ role: l.role, client: l.client, outcome: l.outcome })).sort((a, b) => `${a.role}${a.outcome}`.localeCompare(`${b.role}${b.outcome}`));
      expect(summary, n).toEqual([
        { role: 'inbound', client: CLIENT, outcome: 'client-left' },
        { role: 'inbound', client: CLIENT, outcome: 'delivered' },
        { role: 'outbound', client: CLIENT, outcome: 'delivered' },
      ]);
      const refusal = txns.find((l) => l.role === 'inbound' && l.outcome === 'client-left')!;
      expect(refusal).toMatchObject({ sender: '', helo: 'client.test' });
      expect(refusal.rcpts).toEqual([{ rcpt: 'alice@example.com', to: 'alice@example.com', verdict: 'untagged-bounce', reply: UNTAGGED }]);
      expect(JSON.stringify(replicas[n].lines.slice(mark[n]))).not.toContain('"client":"127.0.0.1"');
    }
  });
});
