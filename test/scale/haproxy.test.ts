/**
 * A real HAProxy 2.6 in front of two batv-proxy replicas (issue 12, item 4): `node bin/batv-proxy.js
 * serve` twice, sharing one keys directory and one redis-server (state.redis), with proxyProtocolFrom
 * [127.0.0.1/32] on both listeners; HAProxy (test/helpers/haproxy.ts) balances roundrobin, sends PROXY v2
 * (send-proxy-v2; test 2 runs a second HAProxy with v1's send-proxy)
 * and health-checks GET /readyz on each replica's metrics port. The next hop and mailbox host is a real
 * smtp-server sink. Clients connect to HAProxy from 127.0.0.2 (127.0.0.3 for a bystander), so the real
 * client differs from HAProxy's 127.0.0.1.
 *
 *   1. each replica logs the real client (127.0.0.2) for transactions and refusals, on both listeners;
 *      (1b. the same through HAProxy's v1 send-proxy);
 *   2. a forged-bounce flood spread over both replicas is cooled off at refusedPerClient counted over both,
 *      for its real client only (127.0.0.4 here: 127.0.0.2's refusals in test 1 count in the same window),
 *      not for HAProxy's 127.0.0.1 nor another client behind it;
 *   3. a tag's replay cap (bouncesPerTag) holds across the replicas;
 *   4. SIGKILL of a replica under bounded load: the ledger finds nothing lost or duplicated;
 *   5. SIGTERM drains: /readyz fails first, HAProxy marks the replica DOWN while its listeners still
 *      accept, in-flight transactions finish, and no client is refused.
 *
 * The tests share the replicas and run in this order (4 restarts the replica it kills).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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

function checkRedis(): PeerCheck {
  const bin = existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : '/usr/bin/redis-check-rdb';
  return existsSync(bin) ? { available: true, reason: bin } : { available: false, reason: 'no /usr/bin/redis-server nor redis-tools\' /usr/bin/redis-check-rdb' };
}
const haproxy = checkHaproxy();
const RUN = shouldRun('HAProxy in front of two replicas', haproxy) && shouldRun('HAProxy in front of two replicas (redis)', checkRedis());

const CLIENT = '127.0.0.2';
/** The flood's source: its own address, since CLIENT's refusals in test 1 count in the same window. */
const FLOODER = '127.0.0.4';
const BYSTANDER = '127.0.0.3';
const REFUSED_PER_CLIENT = 5;
const BOUNCES_PER_TAG = 3;
const COOLING = `421 4.7.0 Too many refused bounces from ${FLOODER}; try again later`;
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
        outbound: { listen: `127.0.0.1:${ports[n].outbound}`, relay: hop, allowNetworks: ['127.0.0.0/8'], proxyProtocolFrom: ['127.0.0.1/32'] },
        inbound: {
          listen: `127.0.0.1:${ports[n].inbound}`, mailbox: hop, untaggedBounces: 'reject', proxyProtocolFrom: ['127.0.0.1/32'],
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

  it('1b. HAProxy\'s v1 header (send-proxy) works the same: the replica sees the real client', async () => {
    const ha1 = await startHaproxy({ replicas: NAMES.map((n) => ({ name: n, ...ports[n] })), proxyProtocol: 1 });
    try {
      for (const n of NAMES) await ha1.waitForServer('outbound', n, 'UP');
      sink.reset();
      const t = talkFrom(CLIENT, ha1.frontends.outbound);
      expect(await t.greeting).toMatch(/^220 r[01]\.proxy\.test /);
      expect(await t.cmd('EHLO client.test')).toMatch(/^250/);
      expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
      expect((await t.data('Subject: via send-proxy\r\n\r\nHello.\r\n')).end).toBe(QUEUED);
      await t.quit();
      const [m] = await sink.waitForMessages(1);
      expect(m!.body.toString('latin1').split('\r\n')[0]).toBe(`Received: from client.test ([${CLIENT}])`);
    } finally {
      await ha1.stop();
    }
  });

  it('3. a tag\'s replay cap (bouncesPerTag) holds across both replicas, whatever the spelling of the tag', async () => {
    const tag = await tagOf('dave@example.com');
    // The tag type in any case, the hash in upper case (BATV hashes the address as given, so its case stays).
    const hash = /^prvs=(\w+)=/.exec(tag)![1]!;
    const spellings = [tag, tag.replace(/^prvs=/, 'PRVS='), tag.replace(hash, hash.toUpperCase()), tag.replace(/^prvs=/, 'Prvs='), tag.replace(/^prvs=/, 'pRVS=')];
    sink.reset();
    const replies: string[] = [];
    const via = new Set<Name>();
    for (const spelling of spellings) {
      const b = await session('inbound');
      via.add(b.replica);
      expect(await b.t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
      const rcpt = await b.t.cmd(`RCPT TO:<${spelling}>`);
      replies.push(rcpt.startsWith('250') ? (await b.t.data(BOUNCE)).end : rcpt);
      await b.t.quit();
    }
    expect(via).toEqual(new Set(NAMES));
    const replayed = (rcpt: string) => `450 4.7.1 <${rcpt}>: too many bounces to this tagged address; try again later`;
    expect(replies).toEqual([QUEUED, QUEUED, QUEUED, replayed(spellings[3]!), replayed(spellings[4]!)]);
    const msgs = await sink.waitForMessages(BOUNCES_PER_TAG);
    await pause(200); // nothing more arrives
    expect(sink.messages.map((m) => m.rcptTo)).toEqual([['dave@example.com'], ['dave@example.com'], ['dave@example.com']]);
    expect(msgs.map((m) => m.mailFrom)).toEqual(['', '', '']);
  });

  it('2. a forged-bounce flood over both replicas is cooled off at refusedPerClient counted across both, for that client only, not HAProxy', async () => {
    const mark = { r0: replicas.r0.lines.length, r1: replicas.r1.lines.length };
    const greetings: Name[] = [];
    for (let i = 1; i <= REFUSED_PER_CLIENT; i++) {
      const f = await session('inbound', FLOODER); // a new connection per bounce: roundrobin spreads them
      greetings.push(f.replica);
      expect(await f.t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
      expect(await f.t.cmd('RCPT TO:<alice@example.com>')).toBe(UNTAGGED);
      // The refusal that reaches refusedPerClient (counted over both replicas) tips it: the next command
      // on the same connection is already cooled off.
      if (i === REFUSED_PER_CLIENT) expect(await f.t.cmd(`RCPT TO:<${await tagOf('alice@example.com')}>`)).toBe(COOLING);
      await f.t.quit();
    }
    // Neither replica alone saw refusedPerClient refusals: only the shared count can have tipped it.
    const perReplica = NAMES.map((n) => greetings.filter((g) => g === n).length);
    expect(perReplica.every((k) => k > 0 && k < REFUSED_PER_CLIENT)).toBe(true);
    const warned = NAMES.flatMap((n) => linesOf(n, mark[n], (l) => l.msg === 'client cooled off after too many refused bounces'));
    expect(warned.map((l) => ({ client: l.client, role: l.role }))).toEqual([{ client: FLOODER, role: 'inbound' }]);

    // The next connections from the flooder, to either replica, are turned away at the greeting.
    const before = await ha.stats();
    for (let i = 0; i < 2; i++) {
      const t = talkFrom(FLOODER, ha.frontends.inbound);
      expect(await t.greeting).toBe(COOLING);
      t.destroy();
    }
    const after = await ha.stats();
    for (const n of NAMES) expect(after.inbound[n]!.sessions - before.inbound[n]!.sessions, n).toBe(1);

    // HAProxy (127.0.0.1) is not cooled off: another client behind it gets through on both replicas.
    const tag = await tagOf('carol@example.com');
    sink.reset();
    const via = new Set<Name>();
    for (let i = 0; i < 2; i++) {
      const b = await session('inbound', BYSTANDER);
      via.add(b.replica);
      expect(await b.t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
      expect(await b.t.cmd(`RCPT TO:<${tag}>`)).toBe('250 Accepted');
      expect((await b.t.data(BOUNCE)).end).toBe(QUEUED);
      await b.t.quit();
    }
    expect(via).toEqual(new Set(NAMES));
    const msgs = await sink.waitForMessages(2);
    for (const m of msgs) expect(m.body.toString('latin1').split('\r\n')[0]).toBe(`Received: from client.test ([${BYSTANDER}])`);
  });

  /**
   * One message per token from `from` through the outbound frontend, retried (a new transaction with the
   * same token, on a new connection) after a 4xx or a lost connection, at most `attempts` times. Up to
   * `perConnection` messages share a connection. `inDoubt` collects tokens of attempts that had their
   * recipient accepted but got no final reply: the next hop may have taken those (the 250 was lost with
   * the replica), so the retry may legitimately deliver a second copy.
   */
  async function loadWorker(o: { ledger: Ledger; next: () => string | null; inDoubt: Set<string>; failures: string[]; perConnection: number; attempts?: number }): Promise<void> {
    let t: Talk | null = null;
    let used = 0;
    const drop = () => { t?.destroy(); t = null; };
    for (let token = o.next(); token !== null; token = o.next()) {
      for (let attempt = 1; ; attempt++) {
        if (attempt > (o.attempts ?? 20)) { o.failures.push(`${token}: no 250 in ${o.attempts ?? 20} attempts`); break; }
        if (t === null) {
          const c: Talk = talkFrom(CLIENT, ha.frontends.outbound);
          const g = await c.greeting.catch((e: Error) => e.message);
          if (!g.startsWith('220 ')) { o.failures.push(`greeting: ${g}`); c.destroy(); await pause(20); continue; }
          const e = await c.cmd('EHLO client.test').catch((x: Error) => x.message);
          if (!e.startsWith('250')) { o.failures.push(`EHLO: ${e}`); c.destroy(); await pause(20); continue; }
          t = c;
          used = 0;
        }
        const r = await sendMessage(t, o.ledger, { from: 'alice@example.com', to: ['bob@example.net'], token });
        used += 1;
        if (r.end.startsWith('250')) {
          if (used >= o.perConnection) { await t.quit(); t = null; }
          break;
        }
        if (r.rcpt[0]?.startsWith('250') && r.end === '') o.inDoubt.add(token);
        o.failures.push(`${token}: ${JSON.stringify({ mail: r.mail, rcpt: r.rcpt, data: r.data, end: r.end })}`);
        if (/^5/.test(r.end || r.data || r.rcpt[0] || r.mail)) break; // never retried: it stays a failure
        drop();
        await pause(20);
      }
    }
    if (t !== null) await (t as Talk).quit();
  }

  const tokens = (ledger: Ledger, n: number): (() => string | null) => {
    let left = n;
    return () => (left-- > 0 ? ledger.token() : null);
  };

  it('4. SIGKILL of a replica under load (200 messages, 4 clients, retry on 4xx or loss): nothing lost, nothing duplicated', async () => {
    const N = 200;
    const ledger = new Ledger('kill');
    sink.reset();
    ledger.watch(sink);
    const inDoubt = new Set<string>();
    const failures: string[] = [];
    const next = tokens(ledger, N);
    const victim = replicas.r1;
    const mark = { r0: replicas.r0.lines.length, r1: victim.lines.length };
    const workers = Array.from({ length: 4 }, () => loadWorker({ ledger, next, inDoubt, failures, perConnection: 5 }));
    await until('60 messages acknowledged before the kill', () => ledger.delivered() >= 60 || failures.length > 0, 60_000);
    expect(failures).toEqual([]); // both replicas served cleanly so far
    await victim.stop(); // SIGKILL by PID
    expect(await victim.exited).toEqual({ code: null, signal: 'SIGKILL' });
    await Promise.all(workers);
    await ha.waitForServer('outbound', 'r1', 'DOWN');

    // Every message was acknowledged to its client once it got through (none gave up or was refused).
    expect(failures.filter((f) => f.includes(': no 250 in '))).toEqual([]);
    expect([...ledger.told.values()].filter((r) => !r?.startsWith('250')).length).toBe(0);
    expect(ledger.delivered()).toBe(N);
    await until('the sink has every acknowledged message', () => ledger.acknowledged().length >= N, 20_000);
    const audit = ledger.audit();
    expect(audit.lost).toEqual([]);
    expect(audit.phantom).toEqual([]);
    // A second copy only of a message whose first attempt's 250 may have died with the replica.
    expect(audit.duplicated.filter((t) => !inDoubt.has(t))).toEqual([]);
    expect(ledger.acknowledged().length).toBe(N + audit.duplicated.length);
    // Both replicas carried the load before the kill; the victim logged nothing after it.
    const delivered = (n: Name, p: ServeProcess) => p.lines.slice(mark[n]).filter((l) => l.msg === 'transaction' && l.role === 'outbound' && l.outcome === 'delivered').length;
    expect(delivered('r1', victim)).toBeGreaterThan(0);
    expect(delivered('r0', replicas.r0)).toBeGreaterThan(0);
    console.info(`[haproxy kill] ${N} messages: r0 delivered ${delivered('r0', replicas.r0)}, r1 ${delivered('r1', victim)} before SIGKILL; ${failures.length} failed attempts retried; in doubt ${inDoubt.size}, duplicated ${audit.duplicated.length}`);

    // Brought back on the same ports, HAProxy marks it UP again.
    await start('r1');
    for (const role of ['outbound', 'inbound'] as const) await ha.waitForServer(role, 'r1', 'UP');
  }, 120_000);

  it('5. SIGTERM drains: /readyz 503 at once, HAProxy marks the replica DOWN while it still accepts, in-flight mail finishes, no client is refused', async () => {
    const ledger = new Ledger('drain');
    sink.reset();
    ledger.watch(sink);
    const inDoubt = new Set<string>();
    const failures: string[] = [];
    const victim = replicas.r1;
    const n = victim.lines.length;
    let stopLoad = false;
    const budget = tokens(ledger, 400); // bounded whatever happens
    const next = () => (stopLoad ? null : budget());
    const workers = Array.from({ length: 2 }, () => loadWorker({ ledger, next, inDoubt, failures, perConnection: 1, attempts: 1 }));
    await until('load running', () => ledger.delivered() >= 10 || failures.length > 0, 30_000);

    // A transaction on the victim, stopped in the middle of DATA.
    let inflight: Talk | null = null;
    for (let i = 0; i < 6 && !inflight; i++) {
      const s = await session('outbound');
      if (s.replica === 'r1') inflight = s.t;
      else await s.t.quit();
    }
    expect(inflight).not.toBeNull();
    const t = inflight!;
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    t.write('DATA\r\n');
    expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
    t.write('Subject: in flight during the drain\r\n\r\nfirst half\r\n');

    victim.signal('SIGTERM');
    expect(await victim.waitForLine((l) => typeof l.msg === 'string' && l.msg.startsWith('draining'), { from: n })).toMatchObject({
      signal: 'SIGTERM', drain_ms: 2000, msg: 'draining: /readyz answers 503 "draining"; listeners keep accepting for 2000 ms, then close',
    });
    const readyz = await fetch(`http://127.0.0.1:${ports.r1.metrics}/readyz`);
    expect([readyz.status, await readyz.text()]).toEqual([503, 'draining\n']);

    await ha.waitForServer('outbound', 'r1', 'DOWN');
    await ha.waitForServer('inbound', 'r1', 'DOWN');
    // DOWN in HAProxy while the replica's listeners still accept.
    const STOPPING = 'stopping: no new connections; running transactions may finish';
    expect(victim.lines.slice(n).filter((l) => l.msg === STOPPING)).toEqual([]);
    expect(await connectOutcome(ports.r1.outbound)).toBe('connected');
    expect(await connectOutcome(ports.r1.inbound)).toBe('connected');
    const sentToVictim = (await ha.stats()).outbound.r1!.sessions;

    // Then the listeners close; the transaction in flight still finishes.
    await victim.waitForLine((l) => l.msg === STOPPING, { from: n });
    await until('outbound listener closed', async () => (await connectOutcome(ports.r1.outbound)) === 'ECONNREFUSED', 5000);
    t.write('second half\r\n.\r\n');
    expect(await t.reply()).toBe(QUEUED);
    await t.quit();
    expect(await victim.exited).toEqual({ code: 0, signal: null });

    stopLoad = true;
    await Promise.all(workers);
    // HAProxy sent nothing more to the draining replica once it was DOWN, and no client was refused.
    expect((await ha.stats()).outbound.r1!.sessions).toBe(sentToVictim);
    expect(failures).toEqual([]);
    expect(ledger.delivered()).toBe(ledger.told.size);
    await until('the sink has every acknowledged message', () => ledger.acknowledged().length >= ledger.told.size, 20_000);
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    expect(sink.messages.some((m) => m.body.toString('latin1').endsWith('Subject: in flight during the drain\r\n\r\nfirst half\r\nsecond half\r\n'))).toBe(true);
    console.info(`[haproxy drain] ${ledger.told.size} messages through HAProxy during the drain, none refused`);
  }, 60_000);
});
