/**
 * Real exim 4.96 as the client of both listeners (issue 9, field trial): exim pipelines the final dot
 * with QUIT and half-closes its socket while it waits for the 250. Every message must be delivered once
 * (the ledger: exim's log says delivered, the next hop received it exactly once, byte for byte), the
 * proxy's log must say "delivered", and a forged bounce must be refused at RCPT with exim logging the 550.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeEximClient, type EximClient } from '../helpers/exim-mta.js';
import { checkExim, shouldRun } from '../helpers/peers.js';
import { captureLog, startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { batvSign } from '../../src/tags/batv.js';
import type { Proxy } from '../../src/proxy.js';

const RUN = shouldRun('exim as the SMTP client', checkExim());
const N = 8;

describe.skipIf(!RUN)('exim 4.96 as the SMTP client', () => {
  let sink: Sink;
  let proxy: Proxy;
  let lines: Array<Record<string, unknown>>;
  const clients: EximClient[] = [];
  beforeAll(async () => {
    sink = await startSink();
    const cap = captureLog();
    lines = cap.lines;
    const hop = `smtp://127.0.0.1:${sink.port}`;
    ({ proxy } = await startTestProxy({ outbound: { relay: hop }, inbound: { mailbox: hop, untaggedBounces: 'reject' } }, { log: cap.log }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await sink.close();
    for (const c of clients) c.remove();
  });

  const transactions = () => lines.filter((l) => l.msg === 'transaction');

  it.each(['outbound', 'inbound'] as const)('%s: %#: every message delivered exactly once, exim hears the 250, the log says delivered', async (role) => {
    const exim = makeEximClient(role === 'outbound' ? proxy.outbound.port : proxy.inbound.port);
    clients.push(exim);
    const from = role === 'outbound' ? 'alice@example.com' : 'friend@example.net';
    const to = role === 'outbound' ? 'bob@example.net' : 'alice@example.com';
    const before = sink.messages.length;
    const before2 = transactions().length;
    const tokens: string[] = [];
    for (let i = 0; i < N; i++) {
      const token = `exim-${role}-${i}-${Math.random().toString(36).slice(2)}`;
      tokens.push(token);
      const r = await exim.send(from, [to], `Subject: ${token}\n\nline one\n.line starting with a dot\n${token}\n`);
      expect(r.code).toBe(0);
      expect(r.log.some((l) => l.includes(`=> ${to}`) && /C="250 /.test(l)), r.log.join('\n')).toBe(true);
      expect(r.log.some((l) => l.endsWith(' Completed')), r.log.join('\n')).toBe(true);
      expect(r.log.some((l) => / == | \*\* /.test(l)), r.log.join('\n')).toBe(false);
    }
    await sink.waitForMessages(before + N);
    await new Promise((r) => setTimeout(r, 200));
    const got = sink.messages.slice(before);
    // the ledger: each token exactly once, nothing else
    expect(got).toHaveLength(N);
    for (const token of tokens) {
      const m = got.filter((x) => x.body.toString('latin1').includes(token));
      expect(m, token).toHaveLength(1);
      expect(m[0]!.body.toString('latin1')).toMatch(new RegExp(`\r\n\r\nline one\r\n\\.line starting with a dot\r\n${token}\r\n$`));
    }
    const mine = transactions().slice(before2).filter((l) => l.role === role);
    expect(mine.map((l) => l.outcome)).toEqual(Array(N).fill('delivered'));
  }, 60_000);

  it('inbound: a bounce to a tagged address is delivered untagged; a forged one is refused at RCPT and exim logs the 550', async () => {
    const exim = makeEximClient(proxy.inbound.port);
    clients.push(exim);
    const r0 = batvSign('alice@example.com', testKeyring().signing, T0);
    if (r0.kind !== 'signed') throw new Error('not signed');
    const before = sink.messages.length;
    const ok = await exim.send('', [r0.address], 'Subject: Undelivered Mail Returned to Sender\n\nSorry.\n');
    expect(ok.log.some((l) => l.includes(`=> ${r0.address}`) && /C="250 /.test(l)), ok.log.join('\n')).toBe(true);
    const forged = r0.address.replace(/^(prvs=\d{4})[0-9a-f]{6}/, '$1000000');
    const bad = await exim.send('', [forged], 'Subject: Undelivered Mail Returned to Sender\n\nSorry.\n');
    expect(bad.log.some((l) => l.includes(`** ${forged}`) && l.includes(`550 5.7.1 <${forged}>: BATV signature invalid`)), bad.log.join('\n')).toBe(true);
    await sink.waitForMessages(before + 1);
    await new Promise((r) => setTimeout(r, 200));
    expect(sink.messages.slice(before).map((m) => m.rcptTo)).toEqual([['alice@example.com']]);
  }, 60_000);
});
