/**
 * Fault injection at the next hop (docs/architecture.md, "Relaying to the next hop"), for both listeners: a scripted raw-TCP peer refuses at
 * the greeting, EHLO, MAIL, RCPT or DATA; drops the connection before, during and after DATA; stalls past
 * each timeout; sends broken replies; answers 4xx and then recovers.
 *
 * For each fault: the exact reply the client gets (the next hop's own 4xx/5xx passed through unchanged;
 * transport failures as 421/451 4.x.x naming the hop and the stage), proof that the client's connection
 * goes on working, and the accounting: every 250 the client got after DATA matches exactly one message
 * the next hop acknowledged, every 4xx/5xx matches none (no loss, no duplicate, no phantom).
 *
 * Inbound, MAIL is relayed at the first RCPT (the recipient picks the next hop), so a fault the outbound
 * client sees at MAIL the inbound client sees at RCPT.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_PEER_REPLIES, startBlackhole, type PeerAction, type PeerScript } from '../helpers/fake-peer.js';
import { FAULT_TIMEOUTS, startRig, type Role } from '../helpers/fault-rig.js';
import { startTestProxy, T0, testKeyring } from '../helpers/proxy.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { talk } from '../helpers/talk.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';

type Step = 'mail' | 'rcpt' | 'data' | 'end';
type Want = string | RegExp;

interface FaultCase {
  name: string;
  script: (ledger: Ledger) => PeerScript;
  /** Where the outbound client first sees the fault ('none': delivered), and the exact reply (HOP = the peer). */
  at: Step | 'none';
  reply: (hop: string) => Want;
  /** Body bytes to send (default a small message); the token is put in front. */
  bodyBytes?: number;
  /** Run for the inbound role as well (default true). */
  inbound?: boolean;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const transport = (code: '421 4.4.1' | '451 4.4.2' | '451 4.5.0', hop: string, words: string) => `${code} Next hop ${hop} ${words}`;

const CASES: FaultCase[] = [
  // --- refusals and failures while the proxy opens its session (seen at MAIL outbound, RCPT inbound)
  { name: 'greeting 554', script: () => ({ GREETING: '554 5.3.2 go away' }), at: 'mail', reply: (h) => transport('421 4.4.1', h, 'unreachable: greeting 554 5.3.2 go away') },
  { name: 'greeting 421', script: () => ({ GREETING: '421 4.3.2 busy, try later' }), at: 'mail', reply: (h) => transport('421 4.4.1', h, 'unreachable: greeting 421 4.3.2 busy, try later') },
  { name: 'greeting never comes (stall)', script: () => ({ GREETING: { then: 'stall' } }), at: 'mail', reply: (h) => transport('451 4.4.2', h, 'timed out at greeting') },
  { name: 'connection dropped instead of a greeting', script: () => ({ GREETING: { then: 'drop' } }), at: 'mail', reply: (h) => transport('451 4.4.2', h, 'closed the connection at greeting') },
  { name: 'EHLO 421', script: () => ({ EHLO: '421 4.3.2 shutting down' }), at: 'mail', reply: (h) => transport('421 4.4.1', h, 'unreachable: EHLO answered 421 4.3.2 shutting down') },
  { name: 'EHLO stall', script: () => ({ EHLO: { then: 'stall' } }), at: 'mail', reply: (h) => transport('451 4.4.2', h, 'timed out at ehlo') },
  // --- MAIL
  { name: 'MAIL 451 passes through', script: () => ({ MAIL: '451 4.3.0 <x>: Temporary lookup failure' }), at: 'mail', reply: () => '451 4.3.0 <x>: Temporary lookup failure' },
  { name: 'MAIL 553 passes through', script: () => ({ MAIL: '553 5.7.1 Sender address rejected' }), at: 'mail', reply: () => '553 5.7.1 Sender address rejected' },
  { name: 'MAIL stall', script: () => ({ MAIL: { then: 'stall' } }), at: 'mail', reply: (h) => transport('451 4.4.2', h, 'timed out at mail') },
  { name: 'MAIL dropped (pooled and fresh session alike)', script: () => ({ MAIL: { then: 'drop' } }), at: 'mail', reply: (h) => transport('451 4.4.2', h, 'closed the connection at mail') },
  // --- RCPT
  { name: 'RCPT 450 passes through', script: () => ({ RCPT: '450 4.2.0 <b@example.net>: Recipient address rejected: Greylisted' }), at: 'rcpt', reply: () => '450 4.2.0 <b@example.net>: Recipient address rejected: Greylisted' },
  { name: 'RCPT 550 passes through', script: () => ({ RCPT: '550 5.1.1 <b@example.net>: User unknown' }), at: 'rcpt', reply: () => '550 5.1.1 <b@example.net>: User unknown' },
  { name: 'RCPT stall', script: () => ({ RCPT: { then: 'stall' } }), at: 'rcpt', reply: (h) => transport('451 4.4.2', h, 'timed out at rcpt') },
  { name: 'RCPT dropped', script: () => ({ RCPT: { then: 'drop' } }), at: 'rcpt', reply: (h) => transport('451 4.4.2', h, 'closed the connection at rcpt') },
  // --- between RCPT and DATA, and the DATA command (the client already has smtp-server's 354)
  { name: 'dropped right after the RCPT 250 (before DATA)', script: () => ({ RCPT: { reply: '250 2.1.5 Ok', then: 'drop' } }), at: 'end', reply: (h) => transport('451 4.4.2', h, 'closed the connection at data') },
  { name: 'DATA 451 passes through', script: () => ({ DATA: '451 4.3.0 Try again later' }), at: 'end', reply: () => '451 4.3.0 Try again later' },
  { name: 'DATA 554 passes through', script: () => ({ DATA: '554 5.5.1 Error: no valid recipients' }), at: 'end', reply: () => '554 5.5.1 Error: no valid recipients' },
  { name: 'DATA stall', script: () => ({ DATA: { then: 'stall' } }), at: 'end', reply: (h) => transport('451 4.4.2', h, 'timed out at data') },
  { name: 'DATA dropped', script: () => ({ DATA: { then: 'drop' } }), at: 'end', reply: (h) => transport('451 4.4.2', h, 'closed the connection at data') },
  // --- during DATA
  { name: '354 and then dropped', script: () => ({ DATA: { reply: '354 go ahead', then: 'drop' } }), at: 'end', bodyBytes: 300_000, reply: (h) => new RegExp(`^${esc(transport('451 4.4.2', h, 'closed the connection at '))}(body|data-end)$`) },
  { name: 'dropped after 1 KiB of body', script: () => ({ BODY: { afterBytes: 1024, action: 'drop' } }), at: 'end', bodyBytes: 300_000, reply: (h) => new RegExp(`^${esc(transport('451 4.4.2', h, 'closed the connection at '))}(body|data-end)$`) },
  { name: 'dropped after 200 KiB of body', script: () => ({ BODY: { afterBytes: 200_000, action: 'drop' } }), at: 'end', bodyBytes: 300_000, reply: (h) => new RegExp(`^${esc(transport('451 4.4.2', h, 'closed the connection at '))}(body|data-end)$`) },
  { name: 'stops parsing mid-body (reads on, never answers)', script: () => ({ BODY: { afterBytes: 1024, action: 'stall' } }), at: 'end', bodyBytes: 300_000, reply: (h) => transport('451 4.4.2', h, 'timed out at data-end') },
  { name: 'stops reading mid-body (TCP window fills)', script: () => ({ BODY: { afterBytes: 1024, action: 'stop-reading' } }), at: 'end', bodyBytes: 24 * 1024 * 1024, inbound: false, reply: (h) => transport('451 4.4.2', h, 'timed out at body') },
  // the body is large so that the reply arrives while the proxy is still writing it (a reply that comes
  // after the proxy wrote the terminator is, by definition, the end-of-data reply)
  { name: '552 in the middle of the body passes through', script: () => ({ BODY: { afterBytes: 1024, action: '552 5.3.4 Message size exceeds fixed limit' } }), at: 'end', bodyBytes: 8 * 1024 * 1024, reply: () => '552 5.3.4 Message size exceeds fixed limit' },
  { name: 'a 250 in the middle of the body is a protocol error, never a 250', script: () => ({ BODY: { afterBytes: 1024, action: '250 2.0.0 Ok: queued early' } }), at: 'end', bodyBytes: 8 * 1024 * 1024, reply: (h) => transport('451 4.5.0', h, 'protocol error at body: reply before end of data: 250 2.0.0 Ok: queued early') },
  // --- after the end of data
  { name: 'END 451 passes through', script: (l) => ({ END: l.ackEnd('451 4.3.0 Error: queue file write error') }), at: 'end', reply: () => '451 4.3.0 Error: queue file write error' },
  { name: 'END 554 passes through', script: (l) => ({ END: l.ackEnd('554 5.7.1 Message refused by content filter') }), at: 'end', reply: () => '554 5.7.1 Message refused by content filter' },
  { name: 'END stall', script: (l) => ({ END: l.ackEnd({ then: 'stall' }) }), at: 'end', reply: (h) => transport('451 4.4.2', h, 'timed out at data-end') },
  { name: 'END dropped without a reply', script: (l) => ({ END: l.ackEnd({ then: 'drop' }) }), at: 'end', reply: (h) => transport('451 4.4.2', h, 'closed the connection at data-end') },
  { name: 'END garbage instead of a reply', script: (l) => ({ END: l.ackEnd({ raw: 'OK thanks\r\n' }) }), at: 'end', reply: (h) => transport('451 4.5.0', h, 'protocol error at data-end: not a reply line: "OK thanks"') },
  { name: 'END reply line over 4 KiB', script: (l) => ({ END: l.ackEnd({ raw: `250 ${'x'.repeat(5000)}\r\n` }) }), at: 'end', reply: (h) => transport('451 4.5.0', h, 'protocol error at data-end: reply line over 4096 bytes') },
  { name: 'END multi-line reply with mixed codes', script: (l) => ({ END: l.ackEnd({ raw: '250-2.0.0 Ok\r\n450 4.0.0 no\r\n' }) }), at: 'end', reply: (h) => transport('451 4.5.0', h, 'protocol error at data-end: reply codes differ between lines') },
  // --- slow but within budget, and 250 followed by a drop: delivered exactly once
  { name: 'END 250 after 250 ms (inside dataMs)', script: (l) => ({ END: l.ackEnd({ reply: '250 2.0.0 Ok: queued slowly', delayMs: 250 }) }), at: 'none', reply: () => '250 2.0.0 Ok: queued slowly' },
  { name: 'END 250 and then dropped', script: (l) => ({ END: l.ackEnd({ reply: '250 2.0.0 Ok: queued as DROP', then: 'drop' }) }), at: 'none', reply: () => '250 2.0.0 Ok: queued as DROP' },
  { name: 'END multi-line 250 joined on one line', script: (l) => ({ END: l.ackEnd('250-2.0.0 Ok\r\n250 2.0.0 queued as ML') }), at: 'none', reply: () => '250 2.0.0 Ok queued as ML' },
];

const who = (role: Role) => (role === 'outbound'
  ? { from: 'alice@example.com', to: 'b@example.net' }
  : { from: 'friend@example.net', to: 'alice@example.com' });

const matches = (got: string, want: Want) => (typeof want === 'string' ? got === want : want.test(got));

function bodyOf(ledger: Ledger, token: string, bytes: number | undefined): string {
  if (!bytes) return ledger.body(token);
  const line = `${'y'.repeat(76)}\r\n`;
  return ledger.body(token, line.repeat(Math.ceil(bytes / line.length)));
}

// Each case has its own peer and proxy, so they run concurrently (vitest's maxConcurrency, 5 by default).
describe.each(['outbound', 'inbound'] as const)('%s: next-hop faults', (role) => {
  for (const c of CASES.filter((x) => role === 'outbound' || x.inbound !== false)) {
    it.concurrent(`${c.name}`, async () => {
      const ledger = new Ledger(role);
      const rig = await startRig(role, c.script(ledger));
      try {
      const { from, to } = who(role);
      const t = await rig.session();
      const token = ledger.token();
      const r = await sendMessage(t, ledger, { from, to: [to], token, body: bodyOf(ledger, token, c.bodyBytes) });
      const want = c.reply(rig.hop);
      // inbound relays MAIL at the first RCPT
      const at: Step | 'none' = role === 'inbound' && c.at === 'mail' ? 'rcpt' : c.at;
      const seen: Record<Step, string> = { mail: r.mail, rcpt: r.rcpt[0]!, data: r.data, end: r.end };
      const before: Step[] = ['mail', 'rcpt', 'data', 'end'];
      for (const s of before.slice(0, at === 'none' ? 3 : before.indexOf(at))) {
        expect(seen[s], `${s} before the fault`).toBe(s === 'data' ? '354 End data with <CR><LF>.<CR><LF>' : '250 Accepted');
      }
      if (at === 'none') expect(r.end).toSatisfy((x: string) => matches(x, want));
      else expect(seen[at], `reply at ${at}`).toSatisfy((x: string) => matches(x, want));
      if (at !== 'none') expect(r.end).not.toMatch(/^2/);

      // 421 closes the client's connection (RFC 5321 §3.8); any other fault leaves it open. Either way a
      // clean next hop then delivers the next message.
      const closes = /^421 /.test(seen[at === 'none' ? 'end' : at]);
      expect(r.closed).toBe(closes);
      rig.peer.script = { END: ledger.ackEnd() };
      const t2 = closes ? await rig.session() : t;
      const again = await sendMessage(t2, ledger, { from, to: [to] });
      expect(again.end).toBe('250 2.0.0 Ok: queued as FAKE');
      await t2.quit();
      t.destroy();

      await new Promise((res) => setTimeout(res, 20));
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      expect(ledger.delivered()).toBe(at === 'none' ? 2 : 1);
      } finally {
        await rig.close();
      }
    });
  }
});

describe('next hop that cannot be connected to in time', () => {
  it('outbound: a next hop whose accept queue is full gives 451 4.4.2 timed out at connect at MAIL, nothing delivered', async () => {
    const hole = await startBlackhole();
    const { proxy } = await startTestProxy({ timeouts: FAULT_TIMEOUTS, outbound: { relay: `smtp://127.0.0.1:${hole.port}` } });
    try {
      const t = talk(proxy.outbound.port);
      await t.greeting;
      await t.cmd('EHLO client.test');
      expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe(`451 4.4.2 Next hop 127.0.0.1:${hole.port} timed out at connect`);
      expect(await t.cmd('RCPT TO:<b@example.net>')).toBe('503 Error: need MAIL command');
      await t.quit();
    } finally {
      await proxy.close(50);
      await hole.close();
    }
  });
});

describe('a next hop that answers 4xx and then recovers', () => {
  const scripts: Array<{ name: string; script: (l: Ledger) => PeerScript; first: (hop: string) => string; step: Step }> = [
    // the proxy's start-up session takes the first greeting, so two refused greetings reach the client once
    { name: 'greeting 421 twice, then 220', script: () => { let n = 0; return { GREETING: () => (n++ < 2 ? '421 4.3.2 busy' : '220 fake.peer ESMTP') }; }, first: (h) => `421 4.4.1 Next hop ${h} unreachable: greeting 421 4.3.2 busy`, step: 'mail' },
    { name: 'MAIL 451, then 250', script: () => ({ MAIL: ['451 4.3.0 later', '250 2.1.0 Ok'] }), first: () => '451 4.3.0 later', step: 'mail' },
    { name: 'RCPT 450 (greylisting), then 250', script: () => ({ RCPT: ['450 4.7.1 Greylisted, come back later', '250 2.1.5 Ok'] }), first: () => '450 4.7.1 Greylisted, come back later', step: 'rcpt' },
    { name: 'END 451, then 250', script: (l) => { let n = 0; return { END: (line, conn) => l.ackEnd(n++ === 0 ? '451 4.3.0 queue file write error' : '250 2.0.0 Ok: queued as FAKE')(line, conn) }; }, first: () => '451 4.3.0 queue file write error', step: 'end' },
  ];
  for (const role of ['outbound', 'inbound'] as const) {
    for (const s of scripts) {
      it.concurrent(`${role}: ${s.name}: the retry is delivered exactly once`, async () => {
        const ledger = new Ledger(role);
        const script = s.script(ledger);
        if (!script.END) script.END = ledger.ackEnd();
        const rig = await startRig(role, script);
        try {
          const { from, to } = who(role);
          const t = await rig.session();
          const token = ledger.token();
          const first = await sendMessage(t, ledger, { from, to: [to], token });
          const step = role === 'inbound' && s.step === 'mail' ? 'rcpt' : s.step;
          const seen = { mail: first.mail, rcpt: first.rcpt[0], data: first.data, end: first.end }[step];
          expect(seen).toBe(s.first(rig.hop));
          // the client retries the same message (same token) later, on the same connection unless a 421 closed it
          const t2 = first.closed ? await rig.session() : t;
          const retry = await sendMessage(t2, ledger, { from, to: [to], token });
          expect(retry.end).toBe('250 2.0.0 Ok: queued as FAKE');
          await t2.quit();
          t.destroy();
          expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
          expect(ledger.acknowledged()).toEqual([token]);
        } finally {
          await rig.close();
        }
      });
    }
  }
});

describe('many transactions against a flaky next hop', () => {
  it('outbound: 60 messages over 6 connections, every 3rd END refused, every 5th dropped after 250, every 7th stalled: 0 lost, 0 duplicated', async () => {
    const ledger = new Ledger('flaky');
    let n = 0;
    const rig = await startRig('outbound', {
      END: (line, conn) => {
        n += 1;
        const action = n % 7 === 0 ? { then: 'stall' as const }
          : n % 5 === 0 ? { reply: '250 2.0.0 Ok: queued then gone', then: 'drop' as const }
            : n % 3 === 0 ? '451 4.3.0 try again' : '250 2.0.0 Ok: queued';
        return ledger.ackEnd(action)(line, conn);
      },
    });
    try {
      const outcomes = new Map<string, number>();
      await Promise.all(Array.from({ length: 6 }, async () => {
        const t = await rig.session();
        for (let i = 0; i < 10; i++) {
          const r = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['b@example.net'] });
          const key = r.end.slice(0, 3);
          outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
        }
        await t.quit();
      }));
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      expect([...outcomes.keys()].sort()).toEqual(['250', '451']);
      expect(ledger.acknowledged()).toHaveLength(ledger.delivered());
      expect(ledger.delivered()).toBe(outcomes.get('250'));
    } finally {
      await rig.close();
    }
  });
});

describe('pooled next-hop sessions that died while idle', () => {
  const EHLO = DEFAULT_PEER_REPLIES.EHLO;
  const cases: Array<{ name: string; ehlo: (first: boolean) => PeerAction }> = [
    { name: 'closed by the next hop right after EHLO (its idle timeout)', ehlo: (first) => (first ? { reply: EHLO, then: 'drop' } : EHLO) },
    { name: 'sent an unsolicited "421 4.4.2 timeout" and closed', ehlo: (first) => (first ? { raw: `${EHLO}\r\n421 4.4.2 fake.peer Error: timeout exceeded\r\n`, then: 'drop' } : EHLO) },
    { name: 'sent an unsolicited 421 and kept the connection open', ehlo: (first) => (first ? { raw: `${EHLO}\r\n421 4.4.2 fake.peer Error: timeout exceeded\r\n` } : EHLO) },
  ];
  for (const role of ['outbound', 'inbound'] as const) {
    for (const c of cases) {
      it.concurrent(`${role}: a session ${c.name} is replaced transparently; the message goes out once`, async () => {
        const ledger = new Ledger(role);
        let n = 0;
        const rig = await startRig(role, { EHLO: () => c.ehlo(n++ === 0), END: ledger.ackEnd() });
        try {
          // The proxy's start-up warm session is the first EHLO the peer answers (the one that dies); wait
          // for it, or under load the client's own session could be the first and nothing would be pooled.
          for (let i = 0; i < 200 && n === 0; i++) await new Promise((r) => setTimeout(r, 10));
          expect(n).toBeGreaterThan(0);
          await new Promise((r) => setTimeout(r, 20));
          const { from, to } = who(role);
          const t = await rig.session();
          const r = await sendMessage(t, ledger, { from, to: [to] });
          expect([r.mail, r.rcpt[0], r.end]).toEqual(['250 Accepted', '250 Accepted', '250 2.0.0 Ok: queued as FAKE']);
          await t.quit();
          expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
          expect(rig.peer.connections.filter((x) => x.messages.length > 0)).toHaveLength(1);
        } finally {
          await rig.close();
        }
      });
    }
  }
});

describe('the proxy\'s own veto in inbound classify mode', () => {
  const dsnOf = (token: string, pad = '') => `From: MAILER-DAEMON@mx.example.net\r\nSubject: fault-token ${token}\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; x@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n${pad}`;
  for (const size of ['small', 'past the 256 KiB hold'] as const) {
    it(`a ${size} delivery-status report to an untagged address is refused with 550; the mailbox host never gets DATA, and its connection is kept`, async () => {
      const ledger = new Ledger('veto');
      const rig = await startRig('inbound', { END: ledger.ackEnd() }, { inbound: { untaggedBounces: 'classify' } });
      try {
        const t = await rig.session();
        const token = ledger.token();
        const pad = size === 'small' ? '' : `${'p'.repeat(98)}\r\n`.repeat(4000);
        const r = await sendMessage(t, ledger, { from: '', to: ['alice@example.com'], token, body: dsnOf(token, pad) });
        expect(r.end).toBe('550 5.7.1 Delivery status report to an untagged address refused as backscatter (multipart/report; report-type=delivery-status)');
        // the same client goes on: an ordinary message is delivered over the same next-hop session
        const next = await sendMessage(t, ledger, { from: 'friend@example.net', to: ['alice@example.com'] });
        expect(next.end).toBe('250 2.0.0 Ok: queued as FAKE');
        await t.quit();
        expect(rig.peer.connections).toHaveLength(1);
        const conn = rig.peer.connections[0]!;
        expect(conn.received.includes(Buffer.from(`fault-token ${token}`))).toBe(false);
        expect(conn.commands.filter((c) => /^(MAIL|RCPT|DATA|RSET)/.test(c))).toEqual([
          'MAIL FROM:<>', 'RCPT TO:<alice@example.com>', 'RSET', 'MAIL FROM:<friend@example.net>', 'RCPT TO:<alice@example.com>', 'DATA',
        ]);
        expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      } finally {
        await rig.close();
      }
    });
  }

  it('a bounce the classifier lets through is relayed byte for byte after the hold', async () => {
    const ledger = new Ledger('hold');
    const rig = await startRig('inbound', { END: ledger.ackEnd() }, { inbound: { untaggedBounces: 'classify' } });
    try {
      const t = await rig.session();
      const token = ledger.token();
      const body = `From: a@example.com\r\nSubject: fault-token ${token}\r\n\r\nI am on vacation.\r\n${`${'v'.repeat(98)}\r\n`.repeat(4000)}`;
      const r = await sendMessage(t, ledger, { from: '', to: ['alice@example.com'], token, body });
      expect(r.end).toBe('250 2.0.0 Ok: queued as FAKE');
      await t.quit();
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      const m = rig.peer.connections[0]!.messages[0]!;
      // the peer records the wire bytes up to and including the terminator's ".<CRLF>"
      expect(m.toString('latin1').endsWith(`\r\nX-BATV-Proxy: untagged-bounce-classify; by=proxy.test\r\n${body}.\r\n`)).toBe(true);
      expect(m.length).toBeLessThan(body.length + 400);
    } finally {
      await rig.close();
    }
  });
});

describe('inbound SRS bounces relayed through the outbound next hop', () => {
  it('the outbound hop failing at END gives the bouncing MX a 451, and the retry goes out once', async () => {
    const ledger = new Ledger('srs');
    let n = 0;
    const rig = await startRig('outbound', { END: (line, conn) => ledger.ackEnd(n++ === 0 ? { then: 'drop' } : '250 2.0.0 Ok: queued as FAKE')(line, conn) });
    try {
      const r = srsForward('orig@foreign.example', testKeyring(), { ...SRS_DEFAULTS, domain: 'srs.example.net' }, T0);
      if (r.kind !== 'rewritten') throw new Error('not rewritten');
      const t = talk(rig.proxy.inbound.port);
      await t.greeting;
      await t.cmd('EHLO mx.example.net');
      const token = ledger.token();
      const first = await sendMessage(t, ledger, { from: '', to: [r.address], token });
      expect(first.end).toBe(`451 4.4.2 Next hop ${rig.hop} closed the connection at data-end`);
      const retry = await sendMessage(t, ledger, { from: '', to: [r.address], token });
      expect(retry.end).toBe('250 2.0.0 Ok: queued as FAKE');
      await t.quit();
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      expect(ledger.acknowledged()).toEqual([token]);
      const mails = rig.peer.connections.flatMap((c) => c.commands.filter((x) => x.startsWith('MAIL') || x.startsWith('RCPT')));
      expect(mails).toContain('RCPT TO:<orig@foreign.example>');
      expect(mails.filter((x) => x.startsWith('MAIL'))).toEqual(['MAIL FROM:<>', 'MAIL FROM:<>']);
    } finally {
      await rig.close();
    }
  });
});
