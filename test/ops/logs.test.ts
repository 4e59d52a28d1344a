/**
 * One JSON log line per SMTP transaction (README "Operations"): the object shape of an outbound and an
 * inbound transaction, field by field, and no secret anywhere in the log (keys appear as number and
 * RFC 7638 thumbprint only).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';
import { captureLog, startTestProxy, testConfig, testKeyring, TEST_SECRET, T0 } from '../helpers/proxy.js';
import { fixedClock } from '../../src/clock.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';

const ring = testKeyring();
const tag = (a: string): string => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};
const srs = (a: string): string => {
  const r = srsForward(a, ring, { ...SRS_DEFAULTS, domain: 'srs.example.net' }, T0);
  if (r.kind !== 'rewritten') throw new Error('not rewritten');
  return r.address;
};
const BODY = 'From: alice@example.com\r\nSubject: log line\r\n\r\nHello.\r\n';

async function session(port: number, helo: string): Promise<Talk> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd(`EHLO ${helo}`)).toMatch(/^250/);
  return t;
}

/** The transaction lines, once `n` of them were written (the server logs a QUIT's close a moment after the client). */
async function transactions(lines: Array<Record<string, unknown>>, n: number, from = 0): Promise<Array<Record<string, unknown>>> {
  const deadline = Date.now() + 2000;
  for (;;) {
    const t = lines.slice(from).filter((l) => l.msg === 'transaction');
    if (t.length >= n || Date.now() > deadline) return t;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The fields every pino line carries. */
const PINO = { level: 30, time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/), app: 'batv-proxy' };
const ID = expect.stringMatching(/^[0-9A-F]{12}$/);
const CONN = expect.stringMatching(/^[0-9a-z]{16}$/);

describe('one log line per transaction', () => {
  let sink: Sink;
  let proxy: Proxy;
  let lines: Array<Record<string, unknown>>;
  beforeAll(async () => {
    sink = await startSink();
    const cap = captureLog();
    lines = cap.lines;
    ({ proxy } = await startTestProxy({
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject' },
    }, { log: cap.log }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('outbound: client, sender, rewritten sender, scheme, key, recipients with replies, next hop and its replies, size, time, outcome', async () => {
    const before = lines.length;
    const t = await session(proxy.outbound.port, 'client.test');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<carol@example.net>')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [line] = (await transactions(lines, 1, before));
    expect(line).toStrictEqual({
      ...PINO,
      msg: 'transaction',
      id: ID,
      conn: CONN,
      role: 'outbound',
      client: '127.0.0.1',
      helo: 'client.test',
      sender: 'alice@example.com',
      sender_rewritten: tag('alice@example.com'),
      sign: 'batv',
      key: 0,
      rcpts: [
        { rcpt: 'bob@example.net', to: 'bob@example.net', reply: '250 Accepted' },
        { rcpt: 'carol@example.net', to: 'carol@example.net', reply: '250 Accepted' },
      ],
      nexthop: `smtp://127.0.0.1:${sink.port}`,
      mail_reply: '250 Accepted',
      data_reply: '250 Ok: queued as sink',
      size: Buffer.byteLength(BODY),
      ms: 0, // the test clock stands still
      outcome: 'delivered',
    });
  });

  it('outbound SRS and a refused recipient: the next hop\'s refusal line is logged with the recipient', async () => {
    sink.options.refuseRecipients = { 'nobody@example.net': { code: 550, message: '5.1.1 <nobody@example.net>: Recipient address rejected: User unknown' } };
    const before = lines.length;
    const t = await session(proxy.outbound.port, 'client.test');
    expect(await t.cmd('MAIL FROM:<carol@elsewhere.example>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<nobody@example.net>')).toBe('550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    delete sink.options.refuseRecipients;
    const [line] = (await transactions(lines, 1, before));
    expect(line).toMatchObject({
      role: 'outbound',
      sender: 'carol@elsewhere.example',
      sender_rewritten: srs('carol@elsewhere.example'),
      sign: 'srs0',
      key: 0,
      rcpts: [
        { rcpt: 'nobody@example.net', to: 'nobody@example.net', reply: '550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown' },
        { rcpt: 'bob@example.net', to: 'bob@example.net', reply: '250 Accepted' },
      ],
      outcome: 'delivered',
    });
  });

  it('inbound: the verdict and key of a valid bounce, each recipient with its verdict, the unwrapped address and the reply', async () => {
    const before = lines.length;
    const t = await session(proxy.inbound.port, 'mx.example.net');
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tag('alice@example.com')}>`)).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [line] = (await transactions(lines, 1, before));
    expect(line).toStrictEqual({
      ...PINO,
      msg: 'transaction',
      id: ID,
      conn: CONN,
      role: 'inbound',
      client: '127.0.0.1',
      helo: 'mx.example.net',
      sender: '',
      verdict: 'batv-valid',
      key: 0,
      rcpts: [{ rcpt: tag('alice@example.com'), to: 'alice@example.com', verdict: 'batv-valid', reply: '250 Accepted' }],
      nexthop: `smtp://127.0.0.1:${sink.port}`,
      mail_reply: '250 Accepted',
      data_reply: '250 Ok: queued as sink',
      size: Buffer.byteLength(BODY),
      ms: 0,
      outcome: 'delivered',
    });
  });

  it('inbound: a refused forged bounce is logged with the refusal reason and the exact reply', async () => {
    const before = lines.length;
    const t = await session(proxy.inbound.port, 'mx.example.net');
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused');
    await t.quit();
    const [line] = (await transactions(lines, 1, before));
    expect(line).toStrictEqual({
      ...PINO,
      msg: 'transaction',
      id: ID,
      conn: CONN,
      role: 'inbound',
      client: '127.0.0.1',
      helo: 'mx.example.net',
      sender: '',
      rcpts: [{
        rcpt: 'alice@example.com',
        to: 'alice@example.com',
        verdict: 'untagged-bounce',
        reply: '550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused',
      }],
      ms: 0,
      outcome: 'client-left',
    });
  });

  it('writes exactly one transaction line per transaction', async () => {
    expect((await transactions(lines, 4)).length).toBe(4);
  });
});

describe('secrets never reach the log', () => {
  let dir: string;
  let sink: Sink;
  let proxy: Proxy;
  let lines: Array<Record<string, unknown>>;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-logs-'));
    sink = await startSink();
    const cap = captureLog();
    lines = cap.lines;
    proxy = await startProxy(testConfig({
      keys: { dir },
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` },
      relayAuth: null,
    }), { clock: fixedClock(T0), log: cap.log });
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('logs the new key by number and thumbprint, and neither the secret nor its base64url form appears in any line', async () => {
    const t = await session(proxy.outbound.port, 'client.test');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    await transactions(lines, 1);
    const k = (JSON.parse(readFileSync(path.join(dir, 'keyring.json'), 'utf8')) as { keys: Array<{ k: string }> }).keys[0]!.k;
    const secret = Buffer.from(k, 'base64url').toString('utf8');
    expect(lines.find((l) => l.msg === 'created a new keyring')).toStrictEqual({
      ...PINO, msg: 'created a new keyring', file: path.join(dir, 'keyring.json'), key: 0, thumbprint: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
    });
    expect(lines.find((l) => l.msg === 'key loaded')).toStrictEqual({
      ...PINO, msg: 'key loaded', key: 0, status: 'active', thumbprint: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
    });
    const all = lines.map((l) => JSON.stringify(l)).join('\n');
    expect(all).not.toContain(secret);
    expect(all).not.toContain(k);
    expect(all).not.toContain(TEST_SECRET);
    expect(all).not.toContain('Hello.'); // nor the body
  });
});
