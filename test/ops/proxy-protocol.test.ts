/**
 * The real client behind a load balancer or a front MTA (README "Deployment recipes"): a PROXY protocol
 * header from an allowed peer (proxyProtocolFrom) or XCLIENT from an allowed MTA (xclientFrom) makes the
 * proxy see the real client, in the Received: line, the abuse limits and relay permission; from anyone
 * else neither is honoured.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';
import { startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import { loadConfig } from '../../src/config/load.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { proxyV2Header } from '../helpers/proxy-v2.js';
import net from 'node:net';

const ring = testKeyring();
const tag = (a: string): string => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};
const HEADER = 'PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n';
const COOLING = '421 4.7.0 Too many refused bounces from 192.0.2.7; try again later';

/** A connection that sends the PROXY header first, then EHLO. */
async function proxied(port: number, header = HEADER): Promise<Talk> {
  const t = talk(port);
  t.write(header);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd('EHLO mx.example.net')).toMatch(/^250/);
  return t;
}

async function bounce(t: Talk, to: string): Promise<string> {
  expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
  expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
  return (await t.data('Subject: Undelivered Mail Returned to Sender\r\n\r\nSorry.\r\n')).end;
}

const receivedLine = (body: Buffer): string => body.toString('latin1').split('\r\n')[0]!;

describe('inbound with proxyProtocolFrom: [127.0.0.1]', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({
      inbound: {
        mailbox: `smtp://127.0.0.1:${sink.port}`,
        untaggedBounces: 'reject',
        proxyProtocolFrom: ['127.0.0.1'],
        limits: { refusedPerClient: 2, refusedWindowSec: 600, coolingOffSec: 900 },
      },
    }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('treats the connection as coming from 192.0.2.7: Received: names [192.0.2.7]', async () => {
    const t = await proxied(proxy.inbound.port);
    expect(await bounce(t, tag('alice@example.com'))).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(receivedLine(m!.body)).toBe('Received: from mx.example.net ([192.0.2.7])');
  });

  it('cools off 192.0.2.7 (not the balancer) after refusedPerClient refused bounces', async () => {
    const t = await proxied(proxy.inbound.port);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused');
    expect(await t.cmd('RCPT TO:<prvs=0461000000=alice@example.com>')).toBe('550 5.7.1 <prvs=0461000000=alice@example.com>: BATV signature invalid');
    expect(await t.cmd(`RCPT TO:<${tag('alice@example.com')}>`)).toBe(COOLING);
    await t.quit();

    // A new connection from the same real client is turned away at once ...
    const again = talk(proxy.inbound.port);
    again.write(HEADER);
    expect(await again.greeting).toBe(COOLING);
    again.destroy();

    // ... while another client behind the same balancer is not.
    const other = await proxied(proxy.inbound.port, 'PROXY TCP4 192.0.2.8 192.0.2.1 40001 25\r\n');
    sink.reset();
    expect(await bounce(other, tag('alice@example.com'))).toBe('250 Ok: queued as sink');
    await other.quit();
    const [m] = await sink.waitForMessages(1);
    expect(receivedLine(m!.body)).toBe('Received: from mx.example.net ([192.0.2.8])');
  });
});

describe('PROXY protocol version 2 (HAProxy send-proxy-v2), allowlist as a range: proxyProtocolFrom [127.0.0.0/8] on both listeners', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({
      outbound: { relay: `smtp://127.0.0.1:${sink.port}`, proxyProtocolFrom: ['127.0.0.0/8'], allowNetworks: ['192.0.2.0/24'] },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject', proxyProtocolFrom: ['127.0.0.0/8'] },
    }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });
  const V2 = proxyV2Header({ address: '192.0.2.7', port: 40000 }, { address: '192.0.2.1', port: 25 });

  it('inbound: the client is 192.0.2.7 (Received: line)', async () => {
    const t = talk(proxy.inbound.port);
    t.write(V2);
    expect(await t.greeting).toMatch(/^220 /);
    expect(await t.cmd('EHLO mx.example.net')).toMatch(/^250/);
    sink.reset();
    expect(await bounce(t, tag('alice@example.com'))).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(receivedLine(m!.body)).toBe('Received: from mx.example.net ([192.0.2.7])');
  });

  it('outbound: relay permission is the real client\'s (192.0.2.7 is in allowNetworks; 198.51.100.9 is not), the header split over three packets', async () => {
    const ok = talk(proxy.outbound.port);
    ok.write(V2.subarray(0, 5));
    await new Promise((r) => setTimeout(r, 30));
    ok.write(V2.subarray(5, 20));
    await new Promise((r) => setTimeout(r, 30));
    ok.write(V2.subarray(20));
    expect(await ok.greeting).toMatch(/^220 /);
    expect(await ok.cmd('EHLO mta.example.com')).toMatch(/^250/);
    expect(await ok.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    await ok.quit();
    const no = talk(proxy.outbound.port);
    no.write(proxyV2Header({ address: '198.51.100.9', port: 1 }, { address: '192.0.2.1', port: 25 }));
    expect(await no.greeting).toMatch(/^220 /);
    expect(await no.cmd('EHLO mta.example.com')).toMatch(/^250/);
    expect(await no.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 198.51.100.9');
    await no.quit();
  });

  it('LOCAL (the balancer\'s own check) keeps the connection\'s address; a bad header is refused with no SMTP session', async () => {
    const local = talk(proxy.outbound.port);
    local.write(proxyV2Header({ address: '192.0.2.7', port: 1 }, { address: '192.0.2.1', port: 25 }, { command: 'LOCAL' }));
    expect(await local.greeting).toMatch(/^220 /);
    expect(await local.cmd('EHLO lb.example.net')).toMatch(/^250/);
    expect(await local.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 127.0.0.1');
    await local.quit();

    const bad = Buffer.from(V2);
    bad[13] = 0x12; // UDP over IPv4
    const got = await new Promise<string>((resolve) => {
      const c = net.connect(proxy.inbound.port, '127.0.0.1', () => c.write(bad));
      let text = '';
      c.setEncoding('latin1');
      c.on('data', (d: string) => { text += d; });
      c.on('close', () => resolve(text));
      c.on('error', () => undefined);
    });
    expect(got).toBe('* BAD Invalid PROXY header\r\n');
  });
});

describe('inbound without the allowlist', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({ inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` } }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('does not honour a PROXY header: it is an unknown command and the client stays 127.0.0.1', async () => {
    const t = talk(proxy.inbound.port);
    expect(await t.greeting).toMatch(/^220 /);
    t.write(HEADER);
    expect(await t.reply()).toBe('500 Error: command not recognized');
    expect(await t.cmd('EHLO mx.example.net')).toMatch(/^250/);
    expect(await bounce(t, tag('alice@example.com'))).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(receivedLine(m!.body)).toBe('Received: from mx.example.net ([127.0.0.1])');
  });
});

describe('outbound with xclientFrom: [127.0.0.1] and allowNetworks: [192.0.2.0/24]', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({
      outbound: { relay: `smtp://127.0.0.1:${sink.port}`, xclientFrom: ['127.0.0.1'], allowNetworks: ['192.0.2.0/24'] },
    }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  async function xclient(addr: string): Promise<Talk> {
    const t = talk(proxy.outbound.port);
    expect(await t.greeting).toMatch(/^220 /);
    const ehlo = await t.cmd('EHLO mta.example.com');
    expect(ehlo).toMatch(/^250[- ]XCLIENT NAME ADDR PORT PROTO HELO LOGIN$/m);
    expect(await t.cmd(`XCLIENT ADDR=${addr}`)).toMatch(/^220 /);
    expect(await t.cmd('EHLO mta.example.com')).toMatch(/^250/);
    return t;
  }

  it('XCLIENT ADDR=192.0.2.9 (an allowed network): MAIL is accepted, signed and relayed', async () => {
    const t = await xclient('192.0.2.9');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data('Subject: x\r\n\r\nHello.\r\n')).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toBe(tag('alice@example.com'));
    expect(receivedLine(m!.body)).toBe('Received: from mta.example.com ([192.0.2.9])');
  });

  it('XCLIENT ADDR=198.51.100.9: MAIL is refused naming that address', async () => {
    const t = await xclient('198.51.100.9');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 198.51.100.9');
    await t.quit();
  });

  it('without XCLIENT the front MTA itself (127.0.0.1) is not an allowed network', async () => {
    const t = talk(proxy.outbound.port);
    expect(await t.greeting).toMatch(/^220 /);
    expect(await t.cmd('EHLO mta.example.com')).toMatch(/^250/);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 127.0.0.1');
    await t.quit();
  });
});

describe('the allowlists from the environment (README: BATV_PROXY_* override the file)', () => {
  it('BATV_PROXY_INBOUND__PROXY_PROTOCOL_FROM and BATV_PROXY_OUTBOUND__XCLIENT_FROM take comma-separated lists like the other list settings', async () => {
    const c = await loadConfig(null, {
      BATV_PROXY_INBOUND__PROXY_PROTOCOL_FROM: '10.0.0.1,10.0.0.2',
      BATV_PROXY_OUTBOUND__XCLIENT_FROM: '127.0.0.1',
    });
    expect(c.inbound.proxyProtocolFrom).toEqual(['10.0.0.1', '10.0.0.2']);
    expect(c.outbound.xclientFrom).toEqual(['127.0.0.1']);
  });
});
