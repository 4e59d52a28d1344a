/**
 * Clients that half-close (FIN) after pipelining, on both listeners (issue 9, class 1). exim writes
 * ".<CRLF>QUIT<CRLF>" in one packet and then shuts down its sending side while it still waits for the
 * reply to the dot: it must get the 250 and the 221, the message must reach the next hop exactly once, and
 * no next-hop failure may be logged or counted. A FIN in the middle of DATA must never let the next hop
 * see the end of the message. Real exim as the client is in test/interop/exim-client.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { halfClose } from '../helpers/half-close.js';
import { captureLog, startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';

const ring = testKeyring();
const tagged = (a: string) => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};

const ROLES = {
  outbound: { from: 'alice@example.com', to: 'bob@example.net' },
  inbound: { from: '', to: () => tagged('alice@example.com') },
} as const;

describe.each(['outbound', 'inbound'] as const)('%s listener: a client that half-closes', (role) => {
  let sink: Sink;
  let proxy: Proxy;
  let lines: Array<Record<string, unknown>>;
  const from = ROLES[role].from;
  const to = role === 'outbound' ? ROLES.outbound.to : ROLES.inbound.to();
  const port = () => (role === 'outbound' ? proxy.outbound.port : proxy.inbound.port);
  const envelope = () => `MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nDATA\r\n`;
  const body = (token: string) => `Subject: ${token}\r\n\r\nline one\r\n..dot line\r\n`;

  beforeAll(async () => {
    sink = await startSink();
    const cap = captureLog();
    lines = cap.lines;
    ({ proxy } = await startTestProxy({
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` },
    }, { keyring: ring, log: cap.log }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
  });

  const delivered = (token: string) => sink.messages.filter((m) => m.body.toString('latin1').includes(`Subject: ${token}\r\n`));
  const txnLine = (token: string) => lines.filter((l) => l.msg === 'transaction' && JSON.stringify(l).includes(token));
  const failures = async () => (await proxy.metrics.nextHopFailures.get()).values.reduce((n, v) => n + v.value, 0);

  it('".", "QUIT" and FIN in one packet (as exim sends them): 250 then 221, delivered once, nothing counted as a failure', async () => {
    const before = await failures();
    const r = await halfClose(port(), [
      { send: 'EHLO exim.test\r\n', replies: 1 },
      { send: envelope(), replies: 3 },
      { send: `${body('exim-style')}.\r\nQUIT\r\n`, fin: true },
    ]);
    expect(r.afterFin).toEqual(['250 Ok: queued as sink', '221 Bye']);
    expect(r.serverClosed).toBe(true);
    await sink.waitForMessages(1);
    const got = delivered('exim-style');
    expect(got).toHaveLength(1);
    expect(got[0]!.body.toString('latin1')).toMatch(/\r\nSubject: exim-style\r\n\r\nline one\r\n\.dot line\r\n$/);
    expect(await failures()).toBe(before);
    await expect.poll(() => txnLine('exim-style').length).toBe(0); // the token is in the body, not the log
    const last = lines.filter((l) => l.msg === 'transaction' && l.role === role).at(-1)!;
    expect(last.outcome).toBe('delivered');
    expect(last.data_reply).toBe('250 Ok: queued as sink');
    expect(last).not.toHaveProperty('nexthop_error');
  });

  it('FIN right after the dot (no QUIT): the 250 still arrives, then the server closes at once', async () => {
    sink.reset();
    const r = await halfClose(port(), [
      { send: 'EHLO fin.test\r\n', replies: 1 },
      { send: envelope(), replies: 3 },
      { send: `${body('fin-after-dot')}.\r\n`, fin: true },
    ]);
    expect(r.afterFin).toEqual(['250 Ok: queued as sink']);
    expect(r.serverClosed).toBe(true);
    expect(r.closeMs).toBeLessThan(3000);
    await sink.waitForMessages(1);
    expect(delivered('fin-after-dot')).toHaveLength(1);
  });

  it('FIN after pipelined MAIL, RCPT, RCPT: every reply in order, then the server closes; nothing is delivered', async () => {
    sink.reset();
    const r = await halfClose(port(), [
      { send: 'EHLO pipe.test\r\n', replies: 1 },
      { send: `MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nRCPT TO:<${to}>\r\n`, fin: true },
    ]);
    expect(r.afterFin).toEqual(['250 Accepted', '250 Accepted', '250 Accepted']);
    expect(r.serverClosed).toBe(true);
    await new Promise((res) => setTimeout(res, 200));
    expect(sink.messages).toHaveLength(0);
  });

  it('FIN in the middle of DATA: the next hop never sees the end of the message, nothing is delivered', async () => {
    sink.reset();
    const r = await halfClose(port(), [
      { send: 'EHLO mid.test\r\n', replies: 1 },
      { send: envelope(), replies: 3 },
      { send: 'Subject: cut-short\r\n\r\nonly half of the body\r\n', fin: true },
    ]);
    expect(r.serverClosed).toBe(true);
    expect(r.afterFin.filter((x) => x.startsWith('2'))).toEqual([]);
    await new Promise((res) => setTimeout(res, 300));
    expect(delivered('cut-short')).toHaveLength(0);
    const last = lines.filter((l) => l.msg === 'transaction' && l.role === role).at(-1)!;
    expect(last.outcome).toBe('client-left');
  });
});
