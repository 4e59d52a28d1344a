/**
 * Long inputs against both listeners: a 1 MiB command line, 10,000 recipients, a 1 MiB header block with
 * no empty line, deeply nested quoting in an address. Each is refused cleanly (the exact reply, one line)
 * and quickly, nothing is delivered that the client was not told 250 for, and the proxy keeps serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Proxy } from '../../src/proxy.js';
import { FAULT_TIMEOUTS, type Role } from '../helpers/fault-rig.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { startTestProxy } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';

const MIB = 1024 * 1024;
const who = (role: Role) => (role === 'outbound'
  ? { from: 'alice@example.com', to: (i: number) => `r${i}@example.net` }
  : { from: 'friend@example.net', to: (i: number) => `r${i}@example.com` });

let sink: Sink;
let proxy: Proxy;
const ledger = new Ledger('long');

beforeAll(async () => {
  sink = await startSink();
  ledger.watch(sink);
  ({ proxy } = await startTestProxy({
    timeouts: { ...FAULT_TIMEOUTS, commandMs: 5000, dataMs: 5000, clientIdleMs: 10_000 },
    outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
    inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` },
  }));
});
afterAll(async () => {
  await proxy.close(50);
  await sink.close();
  expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
});

const port = (role: Role) => (role === 'outbound' ? proxy.outbound.port : proxy.inbound.port);

async function session(role: Role): Promise<Talk> {
  const t = talk(port(role));
  await t.greeting;
  expect(await t.cmd('EHLO long.test')).toMatch(/^250-/);
  return t;
}

/** After an abuse, a fresh client still gets a message delivered. */
async function stillServes(role: Role): Promise<void> {
  const t = await session(role);
  const { from, to } = who(role);
  expect((await sendMessage(t, ledger, { from, to: [to(0)] })).end).toBe('250 Ok: queued as sink');
  await t.quit();
}

describe.each(['outbound', 'inbound'] as const)('%s', (role) => {
  it('a 1 MiB command line gets "421 Error: Command line too long" and the connection is closed, within a second', async () => {
    for (const line of [`MAIL FROM:<${'a'.repeat(MIB)}@example.com>`, 'X'.repeat(MIB), `NOOP ${'\u00e9'.repeat(MIB / 2)}`]) {
      const t = await session(role);
      const t0 = Date.now();
      t.write(`${line}\r\n`);
      expect(await t.reply()).toBe('421 Error: Command line too long');
      await t.closed;
      expect(Date.now() - t0).toBeLessThan(1000);
    }
    // the same without a line end: refused as soon as 16 KiB are buffered, not at 1 MiB
    const t = await session(role);
    for (let i = 0; i < 16; i++) t.write('Y'.repeat(64 * 1024));
    expect(await t.reply()).toBe('421 Error: Command line too long');
    await t.closed;
    await stillServes(role);
  });

  it('10,000 recipients pipelined: the first limits.maxRecipients (1000) are relayed, the rest refused; one delivery to 1000', async () => {
    const t = await session(role);
    const { from, to } = who(role);
    const token = ledger.token();
    ledger.tell(token, null);
    const t0 = Date.now();
    t.write(`MAIL FROM:<${from}>\r\n${Array.from({ length: 10_000 }, (_, i) => `RCPT TO:<${to(i)}>\r\n`).join('')}`);
    expect(await t.reply()).toBe('250 Accepted');
    const replies: string[] = [];
    for (let i = 0; i < 10_000; i++) replies.push(await t.reply());
    expect(replies.slice(0, 1000)).toEqual(Array(1000).fill('250 Accepted'));
    expect(new Set(replies.slice(1000))).toEqual(new Set(['452 4.5.3 Too many recipients']));
    const { end } = await t.data(ledger.body(token));
    ledger.tell(token, end);
    expect(end).toBe('250 Ok: queued as sink');
    expect(Date.now() - t0).toBeLessThan(15_000);
    await t.quit();
    const m = sink.messages.find((x) => x.body.includes(`fault-token ${token}\r`));
    expect(m?.rcptTo).toHaveLength(1000);
    expect(m?.rcptTo.at(-1)).toBe(to(999));
  });

  it('deeply nested quoting in an address is refused at once with the exact reply, and the session goes on', async () => {
    const t = await session(role);
    const { from, to } = who(role);
    const nested = `"${'\\"'.repeat(5000)}"@example.com`;
    const t0 = Date.now();
    expect(await t.cmd(`MAIL FROM:<${nested}>`)).toBe('501 Error: Bad sender address syntax');
    expect(await t.cmd(`MAIL FROM:<"${'\\\\'.repeat(200)}"@example.com>`)).toBe('501 Error: Bad sender address syntax');
    // 100 quoted pairs (215 octets) is a legal, if odd, address: it is taken (and left unsigned: quoted)
    expect(await t.cmd(`MAIL FROM:<"${'\\\\'.repeat(100)}"@example.com>`)).toBe('250 Accepted');
    await t.cmd('RSET');
    expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${nested}>`)).toBe('501 Error: Bad recipient address syntax');
    expect(await t.cmd(`RCPT TO:<"${'(('.repeat(3000)}"@example.com>`)).toBe('501 Error: Bad recipient address syntax');
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await t.cmd(`RCPT TO:<${to(1)}>`)).toBe('250 Accepted');
    await t.quit();
  });
});

describe('a 1 MiB header block without an empty line', () => {
  const header = (token: string) => `Subject: fault-token ${token}\r\n${`X-Filler: ${'h'.repeat(1000)}\r\n`.repeat(1100)}`;

  it('inbound (where header fields are held to strip forged verdicts): "552 5.3.4 Message header too large", nothing delivered, within 2 s', async () => {
    const t = await session('inbound');
    const token = ledger.token();
    ledger.tell(token, null);
    expect(await t.cmd('MAIL FROM:<friend@example.net>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
    const t0 = Date.now();
    const { start, end } = await t.data(header(token));
    ledger.tell(token, end);
    expect(start).toBe('354 End data with <CR><LF>.<CR><LF>');
    expect(end).toBe('552 5.3.4 Message header too large');
    expect(Date.now() - t0).toBeLessThan(2000);
    await t.quit();
    await stillServes('inbound');
  });

  it('outbound (nothing is held): relayed byte for byte, once', async () => {
    const t = await session('outbound');
    const token = ledger.token();
    const r = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'], token, body: header(token) });
    expect(r.end).toBe('250 Ok: queued as sink');
    await t.quit();
    const m = sink.messages.find((x) => x.body.includes(`fault-token ${token}\r`));
    expect(m!.body.toString('latin1').endsWith(header(token))).toBe(true);
  });
});

describe('the proxy\'s refusals carry an enhanced status code', () => {
  it('too many recipients is answered "452 4.5.3 Too many recipients" (replies.tooManyRecipients), not smtp-server\'s "452 Error: too many recipients"', async () => {
    const { proxy: p } = await startTestProxy({ limits: { maxRecipients: 2 }, outbound: { relay: `smtp://127.0.0.1:${sink.port}` } });
    try {
      const t = talk(p.outbound.port);
      await t.greeting;
      await t.cmd('EHLO client.test');
      expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<a@example.net>')).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<b@example.net>')).toBe('250 Accepted');
      expect(await t.cmd('RCPT TO:<c@example.net>')).toBe('452 4.5.3 Too many recipients');
      await t.quit();
    } finally {
      await p.close(50);
    }
  });
});
