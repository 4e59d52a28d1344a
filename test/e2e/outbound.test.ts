/**
 * Outbound relay end to end over loopback: a raw client → the proxy → a real smtp-server sink (or a
 * scripted peer for failures). Asserts the exact MAIL FROM at the next hop, exact reply lines at the
 * client, and the exact bytes delivered.
 */
import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { startFakePeer, closedPort, type FakePeer } from '../helpers/fake-peer.js';
import { talk, type Talk } from '../helpers/talk.js';
import { startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';

const ring = testKeyring();
const tagFor = (a: string) => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};
const srsFor = (a: string) => {
  const r = srsForward(a, ring, { ...SRS_DEFAULTS, domain: 'srs.example.net' }, T0);
  if (r.kind !== 'rewritten') throw new Error('not rewritten');
  return r.address;
};
const BODY = 'From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello Bob.\r\n..a line that starts with a dot\r\n';
const UNSTUFFED = 'From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello Bob.\r\n.a line that starts with a dot\r\n';

async function session(proxy: Proxy): Promise<Talk> {
  const t = talk(proxy.outbound.port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd('EHLO client.test')).toMatch(/^250/);
  return t;
}

describe('outbound relay to a real smtp-server next hop', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink({ show: ['DSN'], refuseRecipients: { 'nobody@example.net': { code: 550, message: '5.1.1 <nobody@example.net>: Recipient address rejected: User unknown' } } });
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, exemptSenders: ['noreply@example.com'] } }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
  });
  afterEach(() => sink.reset());

  it('signs a sender of our domain with the BATV tag exim would make, and delivers the bytes unchanged after one Received:', async () => {
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    const { start, end } = await t.data(BODY);
    expect(start).toBe('354 End data with <CR><LF>.<CR><LF>');
    expect(end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toBe(tagFor('alice@example.com'));
    expect(m!.mailFrom).toBe('prvs=0461' + m!.mailFrom.slice(9, 15) + '=alice@example.com');
    expect(m!.rcptTo).toEqual(['bob@example.net']);
    const text = m!.body.toString('latin1');
    const received = /^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby proxy\.test \(batv-proxy\) with ESMTP id [0-9A-F]{12}\r\n\tfor <bob@example\.net>;\r\n\tThu, 1 Jan 2026 12:00:00 \+0000\r\n/.exec(text);
    expect(received).not.toBeNull();
    expect(m!.body.subarray(received![0].length).toString('latin1')).toBe(UNSTUFFED);
    expect(text.match(/^Received:/gm)).toHaveLength(1);
  });

  it('rewrites a foreign sender as SRS0 under srs.domain', async () => {
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<Carol+list@Foreign.example>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toBe(srsFor('Carol+list@Foreign.example'));
    expect(m!.mailFrom).toMatch(/^SRS0=[A-Za-z0-9+/]{4}=7G=Foreign\.example=Carol\+list@srs\.example\.net$/);
  });

  it('leaves the null sender, an already tagged sender and an exempt sender unchanged', async () => {
    const tagged = tagFor('alice@example.com');
    for (const sender of ['', tagged, 'noreply@example.com']) {
      const t = await session(proxy);
      expect(await t.cmd(`MAIL FROM:<${sender}>`)).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
      expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
      await t.quit();
    }
    const ms = await sink.waitForMessages(3);
    expect(ms.map((m) => m.mailFrom)).toEqual(['', tagged, 'noreply@example.com']);
  });

  it('passes a recipient refusal of the next hop through at RCPT time and delivers to the others', async () => {
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<nobody@example.net>')).toBe('550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(m!.rcptTo).toEqual(['bob@example.net']);
  });

  it('passes MAIL and RCPT parameters through as the client sent them', async () => {
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com> SIZE=300 BODY=8BITMIME RET=HDRS ENVID=QQ314159')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net')).toBe('250 Accepted');
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    // this sink advertises no SIZE, so SIZE= is not relayed to it (RFC 1870; src/policy/params.ts)
    expect(m!.mailParams).toEqual({ BODY: '8BITMIME', RET: 'HDRS', ENVID: 'QQ314159' });
    expect(m!.rcptParams).toEqual([{ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;bob@example.net' }]);
  });

  it('carries several transactions over one client connection', async () => {
    const t = await session(proxy);
    for (const who of ['alice', 'dave']) {
      expect(await t.cmd(`MAIL FROM:<${who}@example.com>`)).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
      expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    }
    await t.quit();
    const ms = await sink.waitForMessages(2);
    expect(ms.map((m) => m.mailFrom)).toEqual([tagFor('alice@example.com'), tagFor('dave@example.com')]);
  });

  it('a body of 5 MiB with dots at line starts arrives byte for byte (sha256)', async () => {
    const lines: string[] = [];
    let size = 0;
    for (let i = 0; size < 5 * 1024 * 1024; i++) {
      const l = i % 7 === 0 ? `.${'x'.repeat(i % 120)}` : `line ${i} ${'y'.repeat(i % 200)}`;
      lines.push(l);
      size += l.length + 2;
    }
    const original = `Subject: big\r\n\r\n${lines.join('\r\n')}\r\n`;
    const stuffed = original.replace(/^\./gm, '..');
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data(stuffed)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    const body = m!.body.subarray(m!.body.indexOf('Subject: big'));
    expect(createHash('sha256').update(body).digest('hex')).toBe(createHash('sha256').update(original, 'latin1').digest('hex'));
  });
});

describe('outbound relay permission', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['192.0.2.0/24'] } }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
  });

  it('refuses a client outside allowNetworks with 554 5.7.1 and relays nothing', async () => {
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 127.0.0.1');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('503 Error: need MAIL command');
    await t.quit();
    expect(sink.messages).toHaveLength(0);
  });
});

describe('outbound next-hop failures give the client a 4xx, never a 250', () => {
  let peer: FakePeer;
  let proxy: Proxy;
  beforeAll(async () => {
    peer = await startFakePeer();
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${peer.port}` } }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await peer.close();
  });
  afterEach(() => { peer.script = {}; });

  it('passes the next hop\'s own 4xx and 5xx replies through unchanged', async () => {
    peer.script = { MAIL: '451 4.3.0 <alice@example.com>: Temporary lookup failure', RCPT: '550 5.7.1 nope' };
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('451 4.3.0 <alice@example.com>: Temporary lookup failure');
    await t.quit();
    peer.script = { END: '554 5.7.1 Message refused by content filter' };
    const u = await session(proxy);
    expect(await u.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await u.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await u.data(BODY)).end).toBe('554 5.7.1 Message refused by content filter');
    await u.quit();
  });

  it('a next hop that drops the connection during the body gives 451 4.4.2, and the client can go on', async () => {
    peer.script = { BODY: { afterBytes: 10, action: 'drop' } };
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    const { end } = await t.data(BODY);
    expect(end).toMatch(/^451 4\.4\.2 Next hop 127\.0\.0\.1:\d+ closed the connection at (body|data-end)$/);
    peer.script = {};
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    await t.quit();
  });

  it('a client that vanishes mid-DATA leaves no terminated message at the next hop', async () => {
    const before = peer.connections.reduce((n, c) => n + c.messages.length, 0);
    const t = await session(proxy);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    t.write('DATA\r\n');
    expect(await t.reply()).toMatch(/^354/);
    t.write('Subject: cut\r\n\r\npartial body\r\n');
    await new Promise((r) => setTimeout(r, 100));
    t.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const c = peer.connections.find((x) => x.received.includes(Buffer.from('Subject: cut')));
    expect(c).toBeDefined();
    await Promise.race([c!.closed, new Promise((r) => setTimeout(r, 2000))]);
    expect(c!.isClosed).toBe(true);
    expect(peer.connections.reduce((n, x) => n + x.messages.length, 0)).toBe(before);
    const after = c!.received.subarray(c!.received.indexOf(Buffer.from('Subject: cut')));
    expect(after.includes(Buffer.from('\r\n.\r\n'))).toBe(false);
  });
});

describe('outbound with an unreachable next hop', () => {
  it('answers MAIL with 421 4.4.1 naming the hop', async () => {
    const port = await closedPort();
    const { proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${port}` } });
    try {
      const t = await session(proxy);
      expect(await t.cmd('MAIL FROM:<alice@example.com>')).toMatch(new RegExp(`^421 4\\.4\\.1 Next hop 127\\.0\\.0\\.1:${port} unreachable: `));
      await t.quit();
    } finally {
      await proxy.close(100);
    }
  });
});
