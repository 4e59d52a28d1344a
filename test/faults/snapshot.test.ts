/**
 * The runtime snapshot (src/runtime.ts): a reload builds a whole snapshot or changes nothing; a
 * transaction keeps the snapshot it took at MAIL to its end; what a reload cannot apply is reported,
 * and a new TLS certificate is applied and reported.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixedClock } from '../../src/clock.js';
import { writeKeys, type StoredKey } from '../../src/keys.js';
import { startProxy, ReloadRefused, type Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import type { Config } from '../../src/config.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { T0, testConfig } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';

const S0 = utf8('snapshot-secret-zero-0123456789');
const S1 = utf8('snapshot-secret-one-9876543210');
const created = new Date(T0).toISOString();
const k0: StoredKey = { num: 0, secret: S0, status: 'active', created };
const k1: StoredKey = { num: 1, secret: S1, status: 'active', created };
const ring0 = makeKeyring([tagKey(0, S0)]);
const tag0 = (a: string) => {
  const r = batvSign(a, ring0.signing, T0);
  if (r.kind !== 'signed') throw new Error('unsigned');
  return r.address;
};
const CLEAN = { lost: [], duplicated: [], phantom: [] };

/** A self-signed certificate of its own (two calls give two different ones). */
function certificate(dir: string, name: string): { key: string; cert: string } {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.crt`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}.test`,
  ], { stdio: 'ignore' });
  return { key, cert };
}

/** The certificate subject a STARTTLS client is shown by the listener at `port`. */
async function starttlsSubject(port: number): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  const lines: string[] = [];
  const until = (re: RegExp) => new Promise<void>((resolve, reject) => {
    const check = () => { if (lines.some((l) => re.test(l))) { socket.off('data', onData); resolve(); } };
    const onData = (b: Buffer) => { lines.push(...b.toString('latin1').split('\r\n')); check(); };
    socket.on('data', onData);
    socket.once('error', reject);
    check();
  });
  await until(/^220 /);
  socket.write('EHLO client.test\r\n');
  await until(/^250 /);
  lines.length = 0;
  socket.write('STARTTLS\r\n');
  await until(/^220 /);
  const secure = tls.connect({ socket, rejectUnauthorized: false, servername: 'localhost' });
  await new Promise<void>((r, j) => secure.once('secureConnect', () => r()).once('error', j));
  const cn = secure.getPeerCertificate().subject.CN;
  secure.destroy();
  return String(cn);
}

describe('runtime snapshot across reloads', () => {
  let dir: string;
  let out: Sink;
  let mailbox: Sink;
  let proxy: Proxy;
  let base: Config;
  let certs: { a: { key: string; cert: string }; b: { key: string; cert: string } };
  const ledger = new Ledger('snapshot');

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-snapshot-'));
    certs = { a: certificate(dir, 'first'), b: certificate(dir, 'second') };
    await writeKeys(path.join(dir, 'keys'), [k0]);
    out = await startSink();
    mailbox = await startSink();
    ledger.watch(out);
    ledger.watch(mailbox);
    base = testConfig({
      keys: { dir: path.join(dir, 'keys') },
      tls: { key: certs.a.key, cert: certs.a.cert },
      outbound: { relay: `smtp://127.0.0.1:${out.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}` },
    });
    proxy = await startProxy(base, { clock: fixedClock(T0), createKeys: false });
  });
  afterAll(async () => {
    await proxy.close(50);
    await out.close();
    await mailbox.close();
    rmSync(dir, { recursive: true, force: true });
    expect(ledger.audit()).toEqual(CLEAN);
  });

  async function session(port: number): Promise<Talk> {
    const t = talk(port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    return t;
  }

  it('a reload the DNSBL builder refuses changes nothing: the new keyring in the same reload is not taken', async () => {
    await writeKeys(path.join(dir, 'keys'), [k1, { ...k0, status: 'verify', demoted: created }]);
    // A config object that passed no validation (as a caller could hand one in): its DNSBL server is no address.
    const bad: Config = { ...base, inbound: { ...base.inbound, dnsbl: { ...base.inbound.dnsbl, mode: 'reject', servers: ['not-an-address'] } } };
    const refused = await proxy.reload(bad).then(() => null, (e: unknown) => e);
    expect(refused).toBeInstanceOf(ReloadRefused);
    expect((refused as ReloadRefused).problems).toHaveLength(1);
    expect((refused as ReloadRefused).problems[0]).toMatch(/^inbound\.dnsbl\.servers: /);
    expect(proxy.state().keys.map((k) => k.num)).toEqual([0]);
    const since = out.messages.length;
    const t = await session(proxy.outbound.port);
    const r = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'] });
    await t.quit();
    expect(r.end).toBe('250 Ok: queued as sink');
    const [m] = (await out.waitForMessages(since + 1)).slice(since);
    expect(m!.mailFrom).toBe(tag0('alice@example.com'));
    await writeKeys(path.join(dir, 'keys'), [k0]);
  });

  it('a transaction that spans a reload keeps the snapshot it took at MAIL: keys, recipient limit and hostname', async () => {
    await proxy.reload(base);
    const tagged = tag0('alice@example.com');
    const since = mailbox.messages.length;
    const t = await session(proxy.inbound.port);
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe('250 Accepted');
    // Key 0 is gone, one recipient per message, another EHLO name: none of it applies to this transaction.
    await writeKeys(path.join(dir, 'keys'), [k1]);
    const { changed } = await proxy.reload({ ...base, hostname: 'renamed.test', limits: { ...base.limits, maxRecipients: 1 } });
    expect(changed).toContain('config');
    expect(await t.cmd(`RCPT TO:<${tag0('bob@example.com')}>`)).toBe('250 Accepted');
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    // The next transaction takes the new snapshot.
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe(`550 5.7.1 <${tagged}>: BATV key unknown`);
    await t.quit();
    const [m] = (await mailbox.waitForMessages(since + 1)).slice(since);
    expect(m!.rcptTo).toEqual(['alice@example.com', 'bob@example.com']);
    expect(m!.body.toString('latin1')).toMatch(/^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby proxy\.test /);
    await writeKeys(path.join(dir, 'keys'), [k0]);
    await proxy.reload(base);
  });

  it('a new certificate is applied to new STARTTLS sessions and reported; TLS off, a new listen address and log level are reported as not applied', async () => {
    expect(await starttlsSubject(proxy.inbound.port)).toBe('first.test');
    writeFileSync(path.join(dir, 'renewed.key'), readFileSync(certs.b.key));
    writeFileSync(path.join(dir, 'renewed.crt'), readFileSync(certs.b.cert));
    const renewed = await proxy.reload({ ...base, tls: { key: path.join(dir, 'renewed.key'), cert: path.join(dir, 'renewed.crt') } });
    expect(renewed).toEqual({ changed: ['config'], applied: ['tls: certificate and key reloaded (new connections use them)'], notApplied: [] });
    expect(await starttlsSubject(proxy.inbound.port)).toBe('second.test');
    expect(await starttlsSubject(proxy.outbound.port)).toBe('second.test');

    const moved = await proxy.reload({ ...base, tls: { key: null, cert: null }, outbound: { ...base.outbound, listen: '127.0.0.1:2999' }, log: { level: 'debug' } });
    expect(moved.notApplied).toEqual([
      'outbound.listen: not applied (the listener stays bound to its address); still "127.0.0.1:0", "127.0.0.1:2999" after a restart',
      'log.level: not applied (the logger is made at start); still "silent", "debug" after a restart',
      'tls: not applied (STARTTLS is offered or not from the start); still on, off after a restart',
    ]);
    // Still offered, with the certificate in force.
    expect(await starttlsSubject(proxy.inbound.port)).toBe('second.test');
    await proxy.reload(base);
  });

  it('a reload whose TLS files cannot be read is refused with every problem, naming each file', async () => {
    const missing = path.join(dir, 'missing.key');
    const refused = await proxy.reload({ ...base, tls: { key: missing, cert: path.join(dir, 'missing.crt') } }).then(() => null, (e: unknown) => e);
    expect(refused).toBeInstanceOf(ReloadRefused);
    expect((refused as ReloadRefused).problems).toEqual([
      `tls.key: cannot read ${missing}: ENOENT: no such file or directory, open '${missing}'`,
      `tls.cert: cannot read ${path.join(dir, 'missing.crt')}: ENOENT: no such file or directory, open '${path.join(dir, 'missing.crt')}'`,
    ]);
    expect(await starttlsSubject(proxy.inbound.port)).toBe('first.test');
  });
});
