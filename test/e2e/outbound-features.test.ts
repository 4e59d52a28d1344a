/**
 * Outbound: SMTP AUTH (users file, sender restriction, brute-force brake), STARTTLS on the listener,
 * advertising only what the next hop offers, and Postfix's real smtp-sink as the next hop.
 */
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { startSink, selfSignedCert, type Sink } from '../helpers/sink.js';
import { startPostfixSink, SMTP_SINK_PATH, type PostfixSink } from '../helpers/postfix-sink.js';
import { talk } from '../helpers/talk.js';
import { startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import { hashPassword } from '../../src/auth.js';
import { batvSign } from '../../src/tags/batv.js';
import type { Proxy } from '../../src/proxy.js';
import { checkExim, eximExpand, eximLiteral, shouldRun } from '../helpers/peers.js';

const ring = testKeyring();
const tagFor = (a: string) => (batvSign(a, ring.signing, T0) as { address: string }).address;
const plain = (u: string, p: string) => Buffer.from(`\0${u}\0${p}`).toString('base64');

describe('outbound SMTP AUTH against a users file', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-users-'));
    const users = path.join(dir, 'users');
    writeFileSync(users, `# test users\nalice:${await hashPassword('wonderland', 1024)}:alice@example.com,@example.org\nrelay:${await hashPassword('s3cret', 1024)}\n`);
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['192.0.2.0/24'], usersFile: users, allowInsecureAuth: true } }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
  });

  it('asks an unauthenticated client outside allowNetworks to authenticate: 530 5.7.0', async () => {
    const t = talk(proxy.outbound.port);
    await t.greeting;
    expect(await t.cmd('EHLO client.test')).toContain('250-AUTH PLAIN LOGIN');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('530 5.7.0 Authentication required to relay');
    await t.quit();
  });

  it('relays for an authenticated user, limited to the senders configured for it', async () => {
    const t = talk(proxy.outbound.port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    expect(await t.cmd(`AUTH PLAIN ${plain('alice', 'wonderland')}`)).toBe('235 Authentication successful');
    expect(await t.cmd('MAIL FROM:<mallory@example.com>')).toBe('553 5.7.1 <mallory@example.com>: sender address not allowed for user alice');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data('Subject: hi\r\n\r\nhi\r\n')).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toBe(tagFor('alice@example.com'));
    expect(m!.body.toString()).toMatch(/^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby proxy\.test \(batv-proxy\) with ESMTPA id /);
  });

  it('refuses wrong credentials with 535 5.7.8 and slows repeated failures down', async () => {
    const t = talk(proxy.outbound.port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    const times: number[] = [];
    for (let i = 0; i < 4; i++) {
      const start = Date.now();
      expect(await t.cmd(`AUTH PLAIN ${plain('relay', `guess${i}`)}`)).toBe('535 5.7.8 Authentication credentials invalid');
      times.push(Date.now() - start);
    }
    await t.quit();
    // The first three failures are free, the fourth waits about a second.
    expect(times[3]).toBeGreaterThanOrEqual(900);
  });
});

describe('outbound listener STARTTLS and extension advertisement', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink({ hide: ['SMTPUTF8', '8BITMIME'], show: ['DSN'] });
    const cert = selfSignedCert();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-tls-'));
    writeFileSync(path.join(dir, 'key.pem'), cert.key);
    writeFileSync(path.join(dir, 'cert.pem'), cert.cert);
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}` }, tls: { key: path.join(dir, 'key.pem'), cert: path.join(dir, 'cert.pem') } }));
    // The proxy learns the next hop's extensions from the sessions it opens (one is opened at start).
    for (let i = 0; i < 50 && proxy.pool.opened === 0; i++) await new Promise((r) => setTimeout(r, 20));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
  });

  it('advertises only the extensions the next hop offers, and STARTTLS with the configured certificate', async () => {
    const t = talk(proxy.outbound.port);
    await t.greeting;
    const ehlo = (await t.cmd('EHLO client.test')).split('\n');
    await t.quit();
    expect(ehlo).toContain('250-STARTTLS');
    expect(ehlo).toContain('250-DSN');
    expect(ehlo.some((l) => /SMTPUTF8|8BITMIME/.test(l))).toBe(false);
  });

  it('relays a message sent over STARTTLS (nodemailer as the client) and says ESMTPS', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: proxy.outbound.port, secure: false, requireTLS: true, tls: { rejectUnauthorized: false } });
    const info = await transport.sendMail({ envelope: { from: 'alice@example.com', to: ['bob@example.net'] }, from: 'alice@example.com', to: 'bob@example.net', subject: 'tls', text: 'over TLS' });
    transport.close();
    expect(info.response).toBe('250 Ok: queued as sink');
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toBe(tagFor('alice@example.com'));
    expect(m!.body.toString()).toMatch(/^Received: from \S+ \(\[127\.0\.0\.1\]\)\r\n\tby proxy\.test \(batv-proxy\) with ESMTPS id /);
    expect(tls).toBeDefined();
  });
});

describe.skipIf(!shouldRun('outbound to smtp-sink', { available: existsSync(SMTP_SINK_PATH), reason: `${SMTP_SINK_PATH} not found` }))('outbound to Postfix\'s smtp-sink as the next hop', () => {
  let pf: PostfixSink;
  let proxy: Proxy;
  beforeAll(async () => {
    pf = await startPostfixSink();
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${pf.port}` } }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await pf.stop();
  });

  it('delivers the signed MAIL FROM with its parameters and the dot-stuffed body intact', async () => {
    const t = talk(proxy.outbound.port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    expect(await t.cmd('MAIL FROM:<alice@example.com> SIZE=100 BODY=8BITMIME')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    const { end } = await t.data('Subject: via smtp-sink\r\n\r\n..leading dot\r\nplain\r\n');
    expect(end).toMatch(/^250 2\.0\.0 Ok/);
    await t.quit();
    const [d] = await pf.waitForDumps(1);
    // smtp-sink advertises no SIZE, so SIZE= is not relayed to it (RFC 1870; src/policy/params.ts)
    expect(d!.mailArgs).toBe(`<${tagFor('alice@example.com')}> BODY=8BITMIME`);
    expect(d!.rcptArgs).toEqual(['<bob@example.net>']);
    expect(d!.body.toString()).toMatch(/\nSubject: via smtp-sink\n\n\.leading dot\nplain\n$/);
  });
});

describe.skipIf(!shouldRun('outbound tag checked by exim', checkExim()))('a tag the proxy produced verifies in real exim', () => {
  it('${prvscheck} accepts the MAIL FROM the next hop received, and refuses it 8 days later', async () => {
    const sink = await startSink();
    const { proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}` } }, { keyring: testKeyring('exim-shared-secret') });
    try {
      const t = talk(proxy.outbound.port);
      await t.greeting;
      await t.cmd('EHLO client.test');
      expect(await t.cmd('MAIL FROM:<Alice.Smith+news@Example.com>')).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
      expect((await t.data('Subject: x\r\n\r\nx\r\n')).end).toBe('250 Ok: queued as sink');
      await t.quit();
      const [m] = await sink.waitForMessages(1);
      const check = (day: number) => eximExpand(`\${prvscheck{${eximLiteral(m!.mailFrom)}}{exim-shared-secret}}|\${if eq{$prvscheck_result}{1}{valid}{refused}}`, { faketime: T0 + day * 86_400_000 });
      expect(await check(0)).toEqual({ ok: true, value: 'Alice.Smith+news@Example.com|valid' });
      expect(await check(7)).toEqual({ ok: true, value: 'Alice.Smith+news@Example.com|valid' });
      expect(await check(8)).toEqual({ ok: true, value: 'Alice.Smith+news@Example.com|refused' });
    } finally {
      await proxy.close(100);
      await sink.close();
    }
  });
});
