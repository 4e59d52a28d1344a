/**
 * Key reload in the middle of transactions: keys come from a keyring file (src/keys.ts writeKeys) and
 * proxy.reload() runs between RCPT and DATA. A transaction finishes under the decision made at its MAIL
 * (outbound: the tag already sent) or RCPT (inbound: the verdict already given); the next transaction
 * uses the new keys; a reload that fails leaves the running keys in force. Every message is accounted
 * for at the sink.
 */
import { mkdtempSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixedClock } from '../../src/clock.js';
import { writeKeys, keyringPath, type StoredKey } from '../../src/keys.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { batvSign, batvVerify } from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { FAULT_TIMEOUTS } from '../helpers/fault-rig.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { startTestProxy, T0, testConfig } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';

const S0 = utf8('reload-secret-zero-0123456789');
const S1 = utf8('reload-secret-one-9876543210');
const created = new Date(T0).toISOString();
const k0active: StoredKey = { num: 0, secret: S0, status: 'active', created };
const k0verify: StoredKey = { num: 0, secret: S0, status: 'verify', created, demoted: created };
const k1active: StoredKey = { num: 1, secret: S1, status: 'active', created };
const both = makeKeyring([tagKey(1, S1), tagKey(0, S0)]);
const ring0 = makeKeyring([tagKey(0, S0)]);
const tag0 = (a: string) => { const r = batvSign(a, ring0.signing, T0); if (r.kind !== 'signed') throw new Error('unsigned'); return r.address; };
const CLEAN = { lost: [], duplicated: [], phantom: [] };

describe('proxy.reload()', () => {
  it('works at all (it used to throw "Do not know how to serialize a BigInt" for every config)', async () => {
    // reload() compared JSON.stringify(new config) with JSON.stringify(old config) before swapping anything;
    // Config.outbound.allowNetworks then held Cidr objects with a bigint `base` (now the ranges' text), so the
    // comparison threw and no reload (SIGHUP, key rotation) ever took effect. Every test below needs reload() to work.
    const { proxy } = await startTestProxy();
    try {
      await expect(proxy.reload()).resolves.toEqual({ changed: [], applied: [], notApplied: [] });
    } finally {
      await proxy.close(50);
    }
  });
});

describe('key reload mid-transaction', () => {
  let dir: string;
  let out: Sink;
  let mailbox: Sink;
  let proxy: Proxy;
  const ledger = new Ledger('reload');

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-reload-'));
    await writeKeys(dir, [k0active]);
    out = await startSink();
    mailbox = await startSink();
    ledger.watch(out);
    ledger.watch(mailbox);
    const config = testConfig({
      timeouts: FAULT_TIMEOUTS,
      keys: { dir },
      outbound: { relay: `smtp://127.0.0.1:${out.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}` },
    });
    proxy = await startProxy(config, { clock: fixedClock(T0), createKeys: false });
  });
  afterAll(async () => {
    await proxy.close(50);
    await out.close();
    await mailbox.close();
    expect(ledger.audit()).toEqual(CLEAN);
  });

  /** Waits for `n` more messages at the sink than it had at `since`, and returns those. */
  async function more(sink: Sink, since: number, n: number) {
    return (await sink.waitForMessages(since + n)).slice(since);
  }

  async function session(port: number): Promise<Talk> {
    const t = talk(port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    return t;
  }

  it('outbound: a rotation between RCPT and DATA keeps the tag already sent; the next message is signed by the new key', async () => {
    await writeKeys(dir, [k0active]);
    await proxy.reload();
    const since = out.messages.length;
    const t = await session(proxy.outbound.port);
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<b@example.net>')).toBe('250 Accepted');
    await writeKeys(dir, [k1active, k0verify]);
    const { changed } = await proxy.reload();
    expect(changed.some((c) => /^key 1:active:/.test(c))).toBe(true);
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    const next = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'] });
    expect(next.end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [first, second] = await more(out, since, 2);
    expect(first!.mailFrom).toBe(tag0('alice@example.com'));
    expect(second!.mailFrom).toMatch(/^prvs=1461[0-9a-f]{6}=alice@example\.com$/);
    expect(batvVerify(second!.mailFrom, both, T0)).toMatchObject({ kind: 'valid', keyNum: 1 });
    // both tags verify after the rotation
    expect(batvVerify(first!.mailFrom, both, T0)).toMatchObject({ kind: 'valid', keyNum: 0 });
  });

  it('inbound: a bounce accepted at RCPT under key 0 is delivered even when key 0 is removed before DATA; later RCPTs see the new keyring', async () => {
    await writeKeys(dir, [k0active]);
    await proxy.reload();
    const since = mailbox.messages.length;
    const tagged = tag0('alice@example.com');
    const t = await session(proxy.inbound.port);
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe('250 Accepted');
    await writeKeys(dir, [k1active]);
    const { changed } = await proxy.reload();
    expect(changed.some((c) => /^key 0:active:.* removed$/.test(c))).toBe(true);
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe(`550 5.7.1 <${tagged}>: BATV key unknown`);
    await t.quit();
    const [m] = await more(mailbox, since, 1);
    expect(m!.rcptTo).toEqual(['alice@example.com']);
  });

  it('inbound: an SRS bounce made under key 0 still reverses after a rotation that keeps key 0 for verifying', async () => {
    await writeKeys(dir, [k0active]);
    await proxy.reload();
    const since = out.messages.length;
    const r = srsForward('Orig@Foreign.example', ring0, { ...SRS_DEFAULTS, domain: 'srs.example.net' }, T0);
    if (r.kind !== 'rewritten') throw new Error('not rewritten');
    const t = await session(proxy.inbound.port);
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    await writeKeys(dir, [k1active, k0verify]);
    await proxy.reload();
    expect(await t.cmd(`RCPT TO:<${r.address}>`)).toBe('250 Accepted');
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await more(out, since, 1);
    expect(m!.rcptTo).toEqual(['Orig@Foreign.example']);
  });

  it('a reload that fails (keyring readable by others) is refused mid-transaction; the running keys stay in force', async () => {
    await writeKeys(dir, [k0active]);
    await proxy.reload();
    const since = out.messages.length;
    const t = await session(proxy.outbound.port);
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<b@example.net>')).toBe('250 Accepted');
    await writeKeys(dir, [k1active, k0verify]);
    await chmod(keyringPath(dir), 0o644);
    await expect(proxy.reload()).rejects.toThrow(`Refusing ${keyringPath(dir)}: it is readable by others (mode 644); fix it with "chmod 600 ${keyringPath(dir)}"`);
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    const next = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'] });
    expect(next.end).toBe('250 Ok: queued as sink');
    await t.quit();
    const ms = await more(out, since, 2);
    // still key 0 for both: the broken keyring was never taken
    expect(ms.map((m) => m.mailFrom)).toEqual([tag0('alice@example.com'), tag0('alice@example.com')]);
    await chmod(keyringPath(dir), 0o600);
  });

  it('reloads racing many concurrent transactions: every message is signed by a key of the ring and delivered once', async () => {
    await writeKeys(dir, [k0active]);
    await proxy.reload();
    const since = out.messages.length;
    const stop = { now: false };
    const flipper = (async () => {
      let i = 0;
      while (!stop.now) {
        await writeKeys(dir, i++ % 2 ? [k0active] : [k1active, k0verify]);
        await proxy.reload();
        await new Promise((r) => setTimeout(r, 3));
      }
    })();
    // At least 8 messages per client, and on until both keys have signed one (a slow machine may fit many
    // messages between two reloads): bounded at 40 per client.
    const prefixes = new Set<string>();
    const clients = await Promise.all(Array.from({ length: 4 }, async () => {
      const t = await session(proxy.outbound.port);
      const ends: string[] = [];
      while (ends.length < 40 && (ends.length < 8 || prefixes.size < 2)) {
        ends.push((await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'] })).end);
        for (const m of out.messages.slice(since)) prefixes.add(m.mailFrom.slice(0, 6));
      }
      await t.quit();
      return ends;
    }));
    stop.now = true;
    await flipper;
    const sent = clients.flat().length;
    expect(clients.flat()).toEqual(Array(sent).fill('250 Ok: queued as sink'));
    const ms = await more(out, since, sent);
    for (const m of ms) expect(batvVerify(m.mailFrom, both, T0)).toMatchObject({ kind: 'valid' });
    expect(new Set(ms.map((m) => m.mailFrom.slice(0, 6)))).toEqual(new Set(['prvs=0', 'prvs=1']));
    expect(ledger.audit()).toEqual(CLEAN);
  });
});
