/**
 * A real Postfix 3.7 instance (the unpacked .peers copy, its own config and queue in a temp dir) as the
 * CLIENT of both listeners (issue 9): the company MTA relaying out through the outbound listener, and an
 * internet MTA delivering bounces into the inbound listener. Postfix queues, retries, uses PIPELINING and
 * logs per recipient what it was told, so its maillog is the client's side of the ledger.
 *
 * Routes (Postfix transport_maps): example.net and pipe.example through recording taps to the outbound
 * listener, retry.example to a second proxy whose next hop answers the first end of data with 451,
 * example.com straight to the inbound listener, example.org through a tap to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRig, type Rig } from '../helpers/fault-rig.js';
import { Ledger, tokenOf } from '../helpers/ledger.js';
import { shouldRun } from '../helpers/peers.js';
import {
  checkPostfixMta, startPostfixMta, startWireTap, POSTFIX_HOSTNAME,
  type PostfixDelivery, type PostfixMta, type TapTransaction, type WireTap,
} from '../helpers/postfix-mta.js';
import { captureLog, startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { batvSign, batvVerify } from '../../src/tags/batv.js';
import type { Proxy } from '../../src/proxy.js';

const RUN = shouldRun('Postfix 3.7 as the SMTP client', checkPostfixMta());
const N = 20;
const RELAXED = { connectMs: 5000, greetingMs: 5000, commandMs: 5000, dataMs: 10_000, clientIdleMs: 30_000 };

/** The BATV form of a sender as the proxy signs it (key 0 of the test keyring, the proxy's clock T0). */
function tagged(address: string): string {
  const r = batvSign(address, testKeyring().signing, T0);
  if (r.kind !== 'signed') throw new Error(`not signed: ${address}`);
  return r.address;
}

/** A complete message, so Postfix adds nothing but its Received: (no missing From/Date/Message-ID). */
function message(subject: string, to: string, from = 'Alice <alice@example.com>'): string {
  return [
    `From: ${from}`,
    `To: <${to}>`,
    `Subject: ${subject}`,
    'Date: Thu, 01 Jan 2026 12:00:00 +0000',
    `Message-ID: <${subject.replace(/\W+/g, '.')}@example.com>`,
    '',
    'line one',
    '.line starting with a dot',
    `end of ${subject}`,
    '',
  ].join('\r\n');
}

/** Postfix's own Received: field for a message it took from our submission. */
function postfixReceived(queueId: string, rcpt: string): RegExp {
  return new RegExp(`^Received: from client\\.test \\(unknown \\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby ${POSTFIX_HOSTNAME.replace('.', '\\.')} \\(Postfix\\) with ESMTP id ${queueId}\\r\\n\\tfor <${rcpt.replace(/[.+]/g, '\\$&')}>; [^\\r\\n]+\\r\\n$`);
}

/** The proxy's Received: field for a message from this Postfix. */
const PROXY_RECEIVED = new RegExp(`^Received: from ${POSTFIX_HOSTNAME.replace('.', '\\.')} \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby proxy\\.test \\(batv-proxy\\) with ESMTP id [0-9A-F]{12}\\r\\n\\tfor <[^>]+>;\\r\\n\\tThu, 1 Jan 2026 12:00:00 \\+0000\\r\\n`);

/** Splits the header fields off the front of `body` that precede `rest` (which `body` must end with). */
function prefixFields(body: Buffer, rest: Buffer): string[] {
  expect(body.subarray(body.length - rest.length).equals(rest), 'the message ends with exactly what came before').toBe(true);
  const head = body.subarray(0, body.length - rest.length).toString('latin1');
  return head.split(/\r\n(?![ \t])/).filter((f) => f !== '').map((f) => `${f}\r\n`);
}

const final = (s: string): boolean => s !== 'deferred';

describe.skipIf(!RUN)('Postfix 3.7 as the SMTP client of both listeners', () => {
  let sink: Sink;
  let proxy: Proxy;
  let lines: Array<Record<string, unknown>>;
  let rig: Rig;
  let tapOut: WireTap;
  let tapPipe: WireTap;
  let tapIn: WireTap;
  let pf: PostfixMta;
  /** Ends of data the retry next hop received, in order, with its answer. */
  const retryEnds: Array<{ token: string | null; reply: string }> = [];

  beforeAll(async () => {
    sink = await startSink({
      refuseRecipients: { 'nobody@pipe.example': { code: 550, message: '5.1.1 <nobody@pipe.example>: Recipient address rejected: User unknown' } },
    });
    const cap = captureLog();
    lines = cap.lines;
    const hop = `smtp://127.0.0.1:${sink.port}`;
    ({ proxy } = await startTestProxy({
      timeouts: RELAXED,
      outbound: { relay: hop },
      inbound: { mailbox: hop, untaggedBounces: 'reject' },
    }, { log: cap.log }));
    rig = await startRig('outbound', {
      END: (_line, conn) => {
        const msg = conn.messages[conn.messages.length - 1];
        const reply = retryEnds.length === 0 ? '451 4.3.0 Try again later' : '250 2.0.0 Ok: queued as RETRY';
        retryEnds.push({ token: msg ? tokenOf(msg) : null, reply });
        return reply;
      },
    }, { timeouts: RELAXED });
    tapOut = await startWireTap(proxy.outbound.port);
    tapPipe = await startWireTap(proxy.outbound.port);
    tapIn = await startWireTap(proxy.inbound.port);
    pf = await startPostfixMta({
      // retries 10 s apart: the deferred message is retried because of `postqueue -f`, not by the clock
      retrySeconds: 10,
      routes: {
        'example.net': tapOut.port,
        'pipe.example': tapPipe.port,
        'retry.example': rig.proxy.outbound.port,
        'example.com': proxy.inbound.port,
        'example.org': tapIn.port,
      },
    });
  }, 60_000);

  afterAll(async () => {
    await pf?.stop();
    await tapOut?.close();
    await tapPipe?.close();
    await tapIn?.close();
    await rig?.close();
    await proxy?.close(100);
    await sink?.close();
  });

  it(`outbound: ${N} messages relayed by Postfix through the proxy: none lost or duplicated, senders BATV-signed, bytes unchanged, Postfix logs the 250`, async () => {
    const ledger = new Ledger('pf-out');
    ledger.watch(sink);
    const expectedSender = tagged('alice@example.com');
    const subs = await Promise.all(Array.from({ length: N }, async () => {
      const token = ledger.token();
      ledger.tell(token, null);
      const msg = message(`fault-token ${token}`, 'bob@example.net');
      const s = await pf.submit('alice@example.com', ['bob@example.net'], msg);
      expect(s.end).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
      return { token, msg, s };
    }));
    for (const { token, s } of subs) {
      const [d] = await pf.waitForDeliveries(s.queueId, 1, { status: final });
      ledger.tell(token, d!.status === 'sent' ? d!.text : `${d!.status}: ${d!.text}`);
    }
    await pf.waitForEmptyQueue();

    // Postfix's side: exactly one delivery line per message, sent, with the next hop's 250 the proxy relayed
    for (const { s } of subs) {
      expect(pf.deliveries(s.queueId).map((d) => [d.to, d.relay, d.dsn, d.status, d.text]))
        .toEqual([['bob@example.net', `127.0.0.1[127.0.0.1]:${tapOut.port}`, '2.0.0', 'sent', '250 Ok: queued as sink']]);
    }
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    expect(ledger.delivered()).toBe(N);

    // what Postfix put on the wire to the proxy, per token
    const sent = new Map<string, TapTransaction>();
    for (const t of tapOut.transactions()) {
      const tok = t.message ? tokenOf(t.message) : null;
      expect(tok).not.toBeNull();
      expect(sent.has(tok!), `${tok} sent twice`).toBe(false);
      sent.set(tok!, t);
    }
    expect(sent.size).toBe(N);

    const atSink = sink.messages.filter((m) => tokenOf(m.body)?.startsWith('pf-out-'));
    expect(atSink).toHaveLength(N);
    for (const { token, msg, s } of subs) {
      const m = atSink.find((x) => tokenOf(x.body) === token)!;
      const wire = sent.get(token)!;
      // the envelope: Postfix sent the original sender; the next hop got its exact prvs= form, which verifies
      expect(wire.mail).toBe('MAIL FROM:<alice@example.com> SIZE=' + /SIZE=(\d+)/.exec(wire.mail)![1]);
      expect(wire.rcpts).toEqual(['RCPT TO:<bob@example.net>']);
      expect(m.mailFrom).toBe(expectedSender);
      expect(batvVerify(m.mailFrom, testKeyring(), T0)).toMatchObject({ kind: 'valid', original: 'alice@example.com', keyNum: 0 });
      expect(m.rcptTo).toEqual(['bob@example.net']);
      // the bytes: next hop = the proxy's Received: + exactly what Postfix sent; Postfix sent its Received: + ours
      const [proxyRcvd, ...restAtSink] = prefixFields(m.body, wire.message!);
      expect(restAtSink).toEqual([]);
      expect(proxyRcvd).toMatch(PROXY_RECEIVED);
      const [pfRcvd, ...restOnWire] = prefixFields(wire.message!, Buffer.from(msg, 'latin1'));
      expect(restOnWire).toEqual([]);
      expect(pfRcvd).toMatch(postfixReceived(s.queueId, 'bob@example.net'));
      expect(wire.endReply).toBe('250 Ok: queued as sink');
    }
    // the proxy's log says delivered for each (it may write the line just after its 250)
    const txns = (): Array<Record<string, unknown>> => lines.filter((l) => l.msg === 'transaction' && l.role === 'outbound' && l.sender === 'alice@example.com');
    for (let i = 0; i < 100 && txns().length < N; i++) await new Promise((r) => setTimeout(r, 100));
    expect(txns().map((l) => [l.sender_rewritten, l.outcome])).toEqual(Array(N).fill([expectedSender, 'delivered']));
  }, 120_000);

  it('outbound: the next hop answers the end of data with 451: Postfix defers with the 451, after postqueue -f it arrives exactly once', async () => {
    const token = 'pf-retry-1';
    const s = await pf.submit('alice@example.com', ['carol@retry.example'], message(`fault-token ${token}`, 'carol@retry.example'));
    expect(s.end).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
    const [first] = await pf.waitForDeliveries(s.queueId, 1);
    const relay = `127.0.0.1[127.0.0.1]:${rig.proxy.outbound.port}`;
    expect([first!.to, first!.relay, first!.dsn, first!.status, first!.text])
      .toEqual(['carol@retry.example', relay, '4.3.0', 'deferred', 'host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Try again later (in reply to end of DATA command)']);
    // (the queue manager moves it to the deferred queue once the smtp agent has reported)
    const deferred = await pf.waitForQueue((q) => q.every((e) => e.queue_name === 'deferred'));
    expect(deferred.map((q) => [q.queue_id, q.queue_name, q.recipients.map((r) => r.address)]))
      .toEqual([[s.queueId, 'deferred', ['carol@retry.example']]]);
    expect(retryEnds).toEqual([{ token, reply: '451 4.3.0 Try again later' }]);

    await pf.flush();
    await pf.waitForDeliveries(s.queueId, 1, { status: (x) => x === 'sent' });
    await pf.waitForEmptyQueue();
    expect(pf.deliveries(s.queueId).map((d) => [d.status, d.text])).toEqual([
      ['deferred', 'host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Try again later (in reply to end of DATA command)'],
      ['sent', '250 2.0.0 Ok: queued as RETRY'],
    ]);
    // the next hop saw the message twice and acknowledged it once: it arrived exactly once
    expect(retryEnds).toEqual([{ token, reply: '451 4.3.0 Try again later' }, { token, reply: '250 2.0.0 Ok: queued as RETRY' }]);
    const mails = rig.peer.connections.flatMap((c) => c.commands.filter((x) => x.startsWith('MAIL ')));
    expect(mails.map((x) => x.replace(/ SIZE=\d+$/, ''))).toEqual(Array(2).fill(`MAIL FROM:<${tagged('alice@example.com')}>`));
  }, 90_000);

  it('inbound: a bounce to a tagged address arrives untagged; one to an untagged address is refused with the 550 5.7.1, bounces in Postfix and reaches nobody', async () => {
    const before = sink.messages.length;
    const rcpt = tagged('alice@example.com');
    const ok = await pf.submit('', [rcpt], message('Undelivered Mail Returned to Sender (tagged)', rcpt, 'MAILER-DAEMON@mx.example.net'));
    expect(ok.end).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
    const bad = await pf.submit('', ['alice@example.com'], message('Undelivered Mail Returned to Sender (forged)', 'alice@example.com', 'MAILER-DAEMON@mx.example.net'));
    expect(bad.end).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
    const relay = `127.0.0.1[127.0.0.1]:${proxy.inbound.port}`;
    const [d1] = await pf.waitForDeliveries(ok.queueId, 1, { status: final });
    const [d2] = await pf.waitForDeliveries(bad.queueId, 1, { status: final });
    expect([d1!.to, d1!.relay, d1!.status, d1!.text]).toEqual([rcpt, relay, 'sent', '250 Ok: queued as sink']);
    expect([d2!.to, d2!.relay, d2!.dsn, d2!.status, d2!.text]).toEqual(['alice@example.com', relay, '5.7.1', 'bounced',
      'host 127.0.0.1[127.0.0.1] said: 550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused (in reply to RCPT TO command)']);
    await pf.waitForEmptyQueue();
    // one delivery line each, and the refused one left the queue (a bounce of a bounce is not sent)
    expect(pf.deliveries(ok.queueId)).toHaveLength(1);
    expect(pf.deliveries(bad.queueId)).toHaveLength(1);
    await pf.waitForLog((l) => l.includes(`${bad.queueId}: removed`));

    const got = sink.messages.slice(before);
    expect(got.map((m) => [m.mailFrom, m.rcptTo])).toEqual([['', ['alice@example.com']]]);
    const [proxyRcvd, verdict, pfRcvd, ...rest] = prefixFields(got[0]!.body, Buffer.from(message('Undelivered Mail Returned to Sender (tagged)', rcpt, 'MAILER-DAEMON@mx.example.net'), 'latin1'));
    expect(rest).toEqual([]);
    expect(proxyRcvd).toMatch(PROXY_RECEIVED);
    expect(verdict).toBe('X-BATV-Proxy: batv-valid; key=0; age=0d; by=proxy.test\r\n');
    expect(pfRcvd).toMatch(postfixReceived(ok.queueId, rcpt));
  }, 90_000);

  describe('PIPELINING with several recipients, one refused: Postfix records per recipient what the proxy answered', () => {
    const cases = [
      {
        name: 'inbound (the proxy refuses an untagged bounce recipient)',
        tap: () => tapIn,
        from: '',
        rcpts: () => [tagged('carol@example.org'), 'dave@example.org', tagged('erin@example.org')],
        refused: 'dave@example.org',
        refusal: '550 5.7.1 <dave@example.org>: bounce to an address we never sent from (no BATV tag); backscatter refused',
        delivered: () => ['carol@example.org', 'erin@example.org'],
        sender: '',
      },
      {
        name: 'outbound (the next hop refuses a recipient, the proxy relays its 550)',
        tap: () => tapPipe,
        from: 'alice@example.com',
        rcpts: () => ['x@pipe.example', 'nobody@pipe.example', 'y@pipe.example'],
        refused: 'nobody@pipe.example',
        refusal: '550 5.1.1 <nobody@pipe.example>: Recipient address rejected: User unknown',
        delivered: () => ['x@pipe.example', 'y@pipe.example'],
        sender: tagged('alice@example.com'),
      },
    ];
    it.each(cases)('$name', async (c) => {
      const before = sink.messages.length;
      const tap = c.tap();
      const rcpts = c.rcpts();
      const subject = `pipelining ${c.from === '' ? 'inbound' : 'outbound'}`;
      const msg = message(subject, rcpts[0]!, c.from === '' ? 'MAILER-DAEMON@mx.example.net' : undefined);
      // NOTIFY=NEVER: no bounce for the refused recipient (it would need a route of its own)
      const s = await pf.submit(c.from, rcpts, msg, { rcptParams: rcpts.map(() => 'NOTIFY=NEVER') });
      expect(s.rcpt).toEqual(Array(3).fill('250 2.1.5 Ok'));
      expect(s.end).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
      const ds = await pf.waitForDeliveries(s.queueId, 3, { status: final });
      await pf.waitForEmptyQueue();

      // the wire between Postfix and the proxy: one transaction, pipelined, the proxy's exact replies
      const txns = tap.transactions();
      expect(txns).toHaveLength(1);
      const t = txns[0]!;
      expect(t.pipelined).toBe(true);
      expect(t.mail).toMatch(new RegExp(`^MAIL FROM:<${c.from}> SIZE=\\d+$`));
      // (Postfix's queue manager sorts the recipients: the order on the wire is its own)
      const onWire = t.rcpts.map((l) => /^RCPT TO:<([^>]*)>$/.exec(l)?.[1] ?? l);
      expect([...onWire].sort()).toEqual([...rcpts].sort());
      const refusedAt = onWire.indexOf(c.refused);
      expect(t.rcptReplies).toEqual(onWire.map((_r, i) => (i === refusedAt ? c.refusal : '250 Accepted')));
      expect(t.dataReply).toMatch(/^354 /);
      expect(t.endReply).toBe('250 Ok: queued as sink');

      // Postfix's per-recipient results are exactly those replies
      const byRcpt = (d: PostfixDelivery): [string, string, string] => [d.to, d.status, d.text];
      expect(ds.map(byRcpt).sort()).toEqual(onWire.map((r, i): [string, string, string] => (i === refusedAt
        ? [r, 'bounced', `host 127.0.0.1[127.0.0.1] said: ${t.rcptReplies[i]} (in reply to RCPT TO command)`]
        : [r, 'sent', t.endReply])).sort());
      expect(pf.deliveries(s.queueId)).toHaveLength(3);

      // the next hop: one message, the accepted recipients only (untagged inbound), the sender as the proxy makes it
      const got = sink.messages.slice(before);
      const accepted = onWire.filter((r) => r !== c.refused).map((r) => r.replace(/^prvs=\d{4}[0-9a-f]{6}=/, ''));
      expect([...accepted].sort()).toEqual(c.delivered());
      expect(got.map((m) => [m.mailFrom, m.rcptTo])).toEqual([[c.sender, accepted]]);
      expect(got[0]!.body.subarray(got[0]!.body.length - t.message!.length).equals(t.message!)).toBe(true);
    }, 90_000);
  });
});
