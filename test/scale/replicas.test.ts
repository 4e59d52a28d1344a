/**
 * Scale-out (issue 12) with the real program: three `serve` replicas sharing one keys directory and one
 * redis-server (password from state.passwordFile), a real smtp-server sink as both next hops, and the
 * inbound listeners behind "HAProxy" (every inbound connection sends a PROXY v1 header naming the client,
 * as HAProxy's `send-proxy` does; proxyProtocolFrom: [127.0.0.1]).
 *
 *  a. `keys rotate --activate-at <now + 5 s>` while mail flows: every replica picks the file up without a
 *     signal (its keys-directory watch), verifies the new key at once, signs with the old key before the
 *     instant and with the new key after it; no valid bounce (old-key or new-key tag, taken from what the
 *     replicas really signed) is refused by any replica, before or after the instant.
 *  b. Redis stopped under bounded load (100 outbound messages, 100 valid and 100 forged bounces over the
 *     three replicas): every reply is exactly what the policy gives without Redis, none takes a second,
 *     each replica logs the fallback once (without the password), /readyz stays 200 with a detail line,
 *     the fallback gauge is 1; Redis restarted on its port: each replica is back to shared limits by
 *     itself (log line, gauge 0, /readyz plain) and a cooling-off is again counted across replicas.
 *
 * Every message is in a ledger: what clients were told 250 reached the sink exactly once, nothing else did.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readKeys } from '../../src/keys.js';
import { batvSign } from '../../src/tags/batv.js';
import { tagKey } from '../../src/tags/keyring.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { shouldRun, type PeerCheck } from '../helpers/peers.js';
import { cli, ensureBuilt, freePort, startServe, type LogLine, type ServeProcess } from '../helpers/proc.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';

/** redis-server, or redis-tools' binary that test/helpers/redis.ts runs under that name. */
const REDIS_CHECK: PeerCheck = existsSync('/usr/bin/redis-server') || existsSync('/usr/bin/redis-check-rdb')
  ? { available: true, reason: 'redis-server' }
  : { available: false, reason: 'neither /usr/bin/redis-server nor /usr/bin/redis-check-rdb is installed' };
const RUN = shouldRun('redis-server (test/scale/replicas.test.ts)', REDIS_CHECK);

const REPLICAS = 3;
const PASSWORD = 'replica-test-redis-password-7d1c';
const REFUSED_PER_CLIENT = 6;
const QUEUED = '250 Ok: queued as sink';
const FELL_BACK = 'shared state unavailable; using local limits';
const BACK = 'shared state available again; using shared limits';
const REPLY_BOUND_MS = 1000;

const cooling = (ip: string) => `421 4.7.0 Too many refused bounces from ${ip}; try again later`;
const badSignature = (rcpt: string) => `550 5.7.1 <${rcpt}>: BATV signature invalid`;
const untagged = (rcpt: string) => `550 5.7.1 <${rcpt}>: bounce to an address we never sent from (no BATV tag); backscatter refused`;

interface Replica {
  readonly proc: ServeProcess;
  readonly metricsPort: number;
}

let dir: string;
let keysDir: string;
let sink: Sink;
let redis: RedisProcess;
const replicas: Replica[] = [];
const ledger = new Ledger('replicas');
/** Every reply time measured (ms), per phase. */
const slowest = { rotation: 0, outage: 0 };

async function readyz(r: Replica): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${r.metricsPort}/readyz`);
  return { status: res.status, body: await res.text() };
}

async function fallbackGauge(r: Replica): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${r.metricsPort}/metrics`)).text();
  const m = /^batv_proxy_shared_state_fallback (\d+)$/m.exec(text);
  if (!m) throw new Error('no batv_proxy_shared_state_fallback in /metrics');
  return Number(m[1]);
}

/** Polls until `cond` holds (an HTTP-observable state has no event to await). */
async function until(what: string, cond: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

async function outSession(r: Replica): Promise<Talk> {
  const t = talk(r.proc.outbound.port);
  expect(await t.greeting).toMatch(/^220 proxy\.test /);
  expect(await t.cmd('EHLO client.test')).toMatch(/^250-proxy\.test/);
  return t;
}

/** An inbound connection "through HAProxy": the PROXY v1 header names the client. Resolves with the greeting. */
function inConnect(r: Replica, ip: string): { t: Talk; greeting: Promise<string> } {
  const t = talk(r.proc.inbound.port);
  t.write(`PROXY TCP4 ${ip} 127.0.0.1 40000 25\r\n`);
  return { t, greeting: t.greeting };
}

async function inSession(r: Replica, ip: string): Promise<Talk> {
  const { t, greeting } = inConnect(r, ip);
  expect(await greeting).toMatch(/^220 proxy\.test /);
  expect(await t.cmd('EHLO mx.example.net')).toMatch(/^250-proxy\.test/);
  return t;
}

/** A Talk whose every command is timed into `slowest[phase]`. */
function timed(t: Talk, phase: keyof typeof slowest): Talk {
  const cmd = async (line: string): Promise<string> => {
    const t0 = performance.now();
    const r = await t.cmd(line);
    slowest[phase] = Math.max(slowest[phase], performance.now() - t0);
    return r;
  };
  const data = async (body: string | Buffer) => {
    const t0 = performance.now();
    const r = await t.data(body);
    slowest[phase] = Math.max(slowest[phase], performance.now() - t0);
    return r;
  };
  return { ...t, cmd, data };
}

/** One outbound message from `sender`; resolves with the MAIL FROM the sink got (the replica's tag). */
async function signOut(t: Talk, sender: string): Promise<string> {
  const r = await sendMessage(t, ledger, { from: sender, to: ['bob@example.net'] });
  expect(r, `outbound from ${sender}`).toMatchObject({ mail: '250 Accepted', rcpt: ['250 Accepted'], end: QUEUED });
  const m = sink.messages.find((x) => x.mailFrom.endsWith(`=${sender}`) && x.rcptTo[0] === 'bob@example.net');
  if (!m) throw new Error(`the sink has no message from a tag of ${sender}`);
  return m.mailFrom;
}

/** A bounce to `rcpt`; resolves with the final reply (the RCPT refusal when refused). */
async function bounce(t: Talk, rcpt: string): Promise<string> {
  const r = await sendMessage(t, ledger, { from: '', to: [rcpt] });
  return r.end !== '' ? r.end : r.rcpt[0] ?? r.mail;
}

const keyDigit = (tag: string): number => Number(/^prvs=(\d)\d{3}[0-9a-f]{6}=/.exec(tag)?.[1] ?? NaN);
const stateLines = (r: Replica, msg: string): LogLine[] => r.proc.lines.filter((l) => l.msg === msg);

describe.skipIf(!RUN)(`${REPLICAS} replicas sharing one keys directory and one Redis`, () => {
  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-replicas-'));
    keysDir = path.join(dir, 'keys');
    expect((await cli(['keys', 'init', '--dir', keysDir], { cwd: dir })).code).toBe(0);
    sink = await startSink({ name: 'sink.test' });
    ledger.watch(sink);
    redis = await startRedis({ password: PASSWORD });
    const passwordFile = path.join(dir, 'redis-password');
    writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
    const avoid: number[] = [redis.port];
    for (let i = 0; i < REPLICAS; i++) {
      const metricsPort = await freePort(avoid);
      avoid.push(metricsPort);
      const config = {
        domains: ['example.com'],
        hostname: 'proxy.test',
        srs: { domain: 'srs.example.net' },
        keys: { dir: keysDir },
        outbound: { listen: '127.0.0.1:0', relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['127.0.0.0/8'] },
        inbound: {
          listen: '127.0.0.1:0', mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject',
          proxyProtocolFrom: ['127.0.0.1'],
          limits: { refusedPerClient: REFUSED_PER_CLIENT },
        },
        // A loaded 2-core test machine: the default 5 ms could time a live Redis out and fall back spuriously.
        state: { redis: redis.url, passwordFile, prefix: 'replicas:', timeoutMs: 250 },
        timeouts: { connectMs: 2000, greetingMs: 2000, commandMs: 5000, dataMs: 10_000, clientIdleMs: 20_000 },
        log: { level: 'info' },
        metrics: { listen: `127.0.0.1:${metricsPort}` },
      };
      const file = path.join(dir, `replica-${i}.json`);
      writeFileSync(file, JSON.stringify(config));
      replicas.push({ proc: await startServe({ args: ['--config', file], cwd: dir }), metricsPort });
    }
    // Each replica answers from local limits until its first connection to Redis is ready.
    for (const r of replicas) await until('replica connected to Redis', async () => (await fallbackGauge(r)) === 0);
  }, 120_000);

  afterAll(async () => {
    for (const r of replicas) await r.proc.stop();
    await redis?.stop();
    await sink?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a: keys rotate --activate-at: picked up without a signal, the old key signs until the instant and the new one after it, no valid bounce refused anywhere', async () => {
    const outs = await Promise.all(replicas.map(async (r) => timed(await outSession(r), 'rotation')));
    const ins = await Promise.all(replicas.map(async (r, i) => timed(await inSession(r, `192.0.2.${10 + i}`), 'rotation')));
    const refused: string[] = [];
    const bounceEverywhere = async (tag: string, untaggedAddr: string) => {
      await Promise.all(ins.map(async (t, i) => {
        const before = sink.messages.length;
        const reply = await bounce(t, tag);
        if (reply !== QUEUED) refused.push(`replica ${i}: ${tag}: ${reply}`);
        else expect(sink.messages.slice(before).some((m) => m.mailFrom === '' && m.rcptTo[0] === untaggedAddr)).toBe(true);
      }));
    };

    // Before the rotation: key 0 everywhere.
    for (const [i, t] of outs.entries()) expect(keyDigit(await signOut(t, `pre-${i}@example.com`))).toBe(0);

    const instant = Math.ceil((Date.now() + 5000) / 1000) * 1000;
    const instantIso = new Date(instant).toISOString();
    const marks = replicas.map((r) => r.proc.lines.length);
    const rotated = await cli(['keys', 'rotate', '--dir', keysDir, '--activate-at', instantIso], { cwd: dir });
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(new RegExp(`^Key 1 \\([A-Za-z0-9_-]{43}\\) verifies from now on and signs from ${instantIso.replace(/\./g, '\\.')}; copy ${keysDir.replace(/[.]/g, '\\.')}/keyring\\.json to every replica before then\\n$`));
    // The keys-directory watch reloads every replica; no SIGHUP is needed (an operator would send one otherwise).
    for (const [i, r] of replicas.entries()) {
      const line = await r.proc.waitForLine((l) => l.why === 'keys changed', { from: marks[i], timeoutMs: 3000 });
      expect(line.msg).toBe('reload done');
      expect((line.changed as string[]).filter((c) => /^key 1:/.test(c))).toEqual([expect.stringMatching(/^key 1:scheduled:[A-Za-z0-9_-]{43} added$/)]);
    }
    const listed = await cli(['keys', 'list', '--dir', keysDir], { cwd: dir });
    expect(listed.stdout).toMatch(/^0 +\S+ +0d +active \(signs\) +\S+$/m);
    expect(listed.stdout).toMatch(new RegExp(`^1 +\\S+ +0d +scheduled, signs from ${instantIso.replace(/\./g, '\\.')} +\\S+$`, 'm'));
    expect(Date.now()).toBeLessThan(instant); // the reloads came before the instant

    // A key-1 tag made from the distributed file before the instant verifies on every replica already.
    const k1 = (await readKeys(keysDir)).find((k) => k.num === 1)!;
    const early = batvSign('early-k1@example.com', tagKey(1, k1.secret), Date.now());
    if (early.kind !== 'signed') throw new Error('cannot sign with key 1');
    await bounceEverywhere(early.address, 'early-k1@example.com');

    // Mail across the instant: each round every replica signs one message from a fresh sender, and the
    // tag it made is bounced to every replica (three bounces per tag, well under bouncesPerTag).
    const signed: Array<{ replica: number; tag: string; sender: string; t0: number; t1: number }> = [];
    for (let round = 0; round < 60 && Date.now() < instant + 2500; round++) {
      const started = Date.now();
      const made = await Promise.all(outs.map(async (t, i) => {
        const sender = `r${i}-n${round}@example.com`;
        const t0 = Date.now();
        const tag = await signOut(t, sender);
        return { replica: i, tag, sender, t0, t1: Date.now() };
      }));
      signed.push(...made);
      for (const m of made) await bounceEverywhere(m.tag, m.sender);
      await new Promise((res) => setTimeout(res, Math.max(0, 250 - (Date.now() - started)))); // pacing only
    }
    // After the instant, tags of the old key still verify everywhere.
    const oldTags = signed.filter((s) => keyDigit(s.tag) === 0).slice(0, 6);
    for (const s of oldTags) await bounceEverywhere(s.tag, s.sender);

    expect(refused).toEqual([]);
    // Signed before the instant (the reply came before it): key 0; begun after it: key 1; straddling: either.
    const wrong = signed.filter((s) => (s.t1 < instant && keyDigit(s.tag) !== 0) || (s.t0 >= instant && keyDigit(s.tag) !== 1) || ![0, 1].includes(keyDigit(s.tag)));
    expect(wrong).toEqual([]);
    for (let i = 0; i < REPLICAS; i++) {
      expect(signed.some((s) => s.replica === i && s.t1 < instant), `replica ${i} signed before the instant`).toBe(true);
      expect(signed.some((s) => s.replica === i && s.t0 >= instant), `replica ${i} signed after the instant`).toBe(true);
    }
    expect(oldTags.length).toBeGreaterThan(0);
    const after = await cli(['keys', 'list', '--dir', keysDir], { cwd: dir });
    expect(after.stdout).toMatch(/^1 +\S+ +0d +active \(signs\) +\S+$/m);
    expect(after.stdout).toMatch(/^0 +\S+ +0d +verify-only, retire after \d{4}-\d\d-\d\d +\S+$/m);
    expect(slowest.rotation).toBeLessThan(REPLY_BOUND_MS);
    console.info(`[replicas] rotation: ${signed.length} messages signed (${signed.filter((s) => keyDigit(s.tag) === 0).length} key 0, ${signed.filter((s) => keyDigit(s.tag) === 1).length} key 1), ${ledger.delivered()} told 250 so far, slowest reply ${slowest.rotation.toFixed(0)} ms`);
    await Promise.all([...outs, ...ins].map((t) => t.quit()));
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
  }, 120_000);

  /** REFUSED_PER_CLIENT forged bounces from `ip`, spread round robin over the replicas; then what a new connection from `ip` is greeted with at each replica. */
  async function spreadRefusals(ip: string): Promise<{ replies: string[]; greetings: string[] }> {
    const sessions = await Promise.all(replicas.map((r) => inSession(r, ip)));
    const replies: string[] = [];
    for (let n = 0; n < REFUSED_PER_CLIENT; n++) replies.push(await bounce(sessions[n % REPLICAS]!, `nobody-${n}@example.com`));
    await Promise.all(sessions.map((t) => t.quit()));
    const greetings = await Promise.all(replicas.map(async (r) => {
      const { t, greeting } = inConnect(r, ip);
      const g = await greeting;
      t.destroy();
      return g;
    }));
    return { replies, greetings };
  }

  it('b: Redis stopped under load: the replies of the policy without Redis, none slow; logged once per replica, /readyz 200 with detail, gauge 1; back to shared limits by itself after a restart', async () => {
    // The refusal that tips a client into cooling off is still the policy's 550; the next contact gets the 421.
    const refusedLines = Array.from({ length: REFUSED_PER_CLIENT }, (_, n) => untagged(`nobody-${n}@example.com`));
    // Shared limits work before the outage: six refusals spread over three replicas cool the client off on all of them.
    for (const r of replicas) expect(await readyz(r)).toEqual({ status: 200, body: 'ready\n' });
    const before = await spreadRefusals('203.0.113.1');
    expect(before.replies).toEqual(refusedLines);
    expect(before.greetings).toEqual(replicas.map(() => cooling('203.0.113.1')));

    const marks = replicas.map((r) => r.proc.lines.length);
    await redis.halt();
    for (const [i, r] of replicas.entries()) await r.proc.waitForLine((l) => l.msg === FELL_BACK, { from: marks[i], timeoutMs: 10_000 });

    // The load: 100 outbound messages (3 sessions), then 100 valid and 100 forged bounces from 20 clients.
    const outs = await Promise.all(replicas.map(async (r) => timed(await outSession(r), 'outage')));
    const tags: Array<{ tag: string; sender: string }> = [];
    await Promise.all(outs.map(async (t, i) => {
      for (let n = i; n < 100; n += REPLICAS) {
        const sender = `load-${n}@example.com`;
        tags.push({ tag: await signOut(t, sender), sender });
      }
    }));
    expect(tags.map((x) => keyDigit(x.tag))).toEqual(tags.map(() => 1));
    const wrong: string[] = [];
    await Promise.all(Array.from({ length: 20 }, async (_, c) => {
      const ip = `198.51.100.${c + 1}`;
      const t = timed(await inSession(replicas[c % REPLICAS]!, ip), 'outage');
      for (let n = 0; n < 5; n++) {
        const good = tags[c * 5 + n]!;
        const before = sink.messages.length;
        const ok = await bounce(t, good.tag);
        if (ok !== QUEUED) wrong.push(`${ip} valid ${good.tag}: ${ok}`);
        else if (!sink.messages.slice(before).some((m) => m.mailFrom === '' && m.rcptTo[0] === good.sender)) wrong.push(`${ip} valid ${good.tag}: not delivered to ${good.sender}`);
        // Forged: a tag with a made-up signature, or a bare address (fewer than refusedPerClient per client).
        const forged = n % 2 ? `bare-${c}-${n}@example.com` : good.tag.replace(/^(prvs=\d{4})[0-9a-f]{6}/, '$1000000');
        const expected = n % 2 ? untagged(forged) : badSignature(forged);
        const got = await bounce(t, forged);
        if (got !== expected) wrong.push(`${ip} forged ${forged}: ${got}`);
      }
      await t.quit();
    }));
    expect(wrong).toEqual([]);
    expect(slowest.outage).toBeLessThan(REPLY_BOUND_MS);
    console.info(`[replicas] outage: ${tags.length} outbound, ${tags.length} valid and ${tags.length} forged bounces; slowest reply ${slowest.outage.toFixed(0)} ms`);

    // Meanwhile each replica counts alone: six refusals spread over three replicas (two each) cool nobody off.
    const during = await spreadRefusals('203.0.113.2');
    expect(during.replies).toEqual(refusedLines);
    expect(during.greetings.every((g) => /^220 proxy\.test /.test(g))).toBe(true);

    for (const r of replicas) {
      const ready = await readyz(r);
      expect(ready.status).toBe(200);
      expect(ready.body).toMatch(/^ready\nshared state: fallback to local limits since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(.+\)\n$/);
      expect(await fallbackGauge(r)).toBe(1);
      const said = stateLines(r, FELL_BACK);
      expect(said).toHaveLength(1);
      expect(said[0]).toMatchObject({ level: 40, role: 'state', redis: `redis://127.0.0.1:${redis.port}/0` });
    }
    await Promise.all(outs.map((t) => t.quit()));

    // Redis back on its port (empty): every replica returns to shared limits by itself.
    const marks2 = replicas.map((r) => r.proc.lines.length);
    await redis.start();
    for (const [i, r] of replicas.entries()) await r.proc.waitForLine((l) => l.msg === BACK, { from: marks2[i], timeoutMs: 15_000 });
    for (const r of replicas) {
      expect(await readyz(r)).toEqual({ status: 200, body: 'ready\n' });
      expect(await fallbackGauge(r)).toBe(0);
      expect(stateLines(r, FELL_BACK)).toHaveLength(1);
    }
    const afterwards = await spreadRefusals('203.0.113.3');
    expect(afterwards.replies).toEqual(refusedLines);
    expect(afterwards.greetings).toEqual(replicas.map(() => cooling('203.0.113.3')));

    // The password never reached a log line or stderr.
    for (const r of replicas) {
      expect(JSON.stringify(r.proc.lines).includes(PASSWORD)).toBe(false);
      expect(r.proc.stderr().includes(PASSWORD)).toBe(false);
    }
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
  }, 180_000);
});
