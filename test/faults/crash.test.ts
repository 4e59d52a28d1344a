/**
 * The body pipeline failing before the relay is streaming it. The proxy answers DATA with smtp-server's
 * 354 at once and sends DATA to the next hop at the same time; until the next hop's own 354 arrives,
 * nothing listens for errors on the body stream (SizeLimit → HeaderRewriter). A client that pipelines
 * its message right after DATA can make the body fail in that window: a message over
 * limits.maxMessageBytes, a header block over 1 MiB (inbound), or simply vanishing. The next hop's 354
 * is delayed here (200 ms) so the window is hit every time.
 *
 * What must happen: the client gets the refusal (or, having vanished, nothing), nothing reaches the next
 * hop, and the process goes on. What happened before the fix (59fe3c3): an 'error' event nobody listened
 * to, i.e. an uncaught exception, which ended a real proxy process (both listeners) - found with
 * `batv-proxy serve` and a 150 KB message pipelined after DATA with limits.maxMessageBytes 100000. Each test records uncaught
 * exceptions itself, so it fails with the reason rather than only through vitest's unhandled-error report.
 * The delay only makes the window certain: with a prompt next hop (a fake peer answering at once) an
 * over-size message pipelined after DATA hit it as well in these runs.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startRig, type Role } from '../helpers/fault-rig.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import type { Talk } from '../helpers/talk.js';

const SLOW_354 = { DATA: { reply: '354 End data with <CR><LF>.<CR><LF>', delayMs: 200 } } as const;
const who = (role: Role) => (role === 'outbound'
  ? { from: 'alice@example.com', to: 'b@example.net' }
  : { from: 'friend@example.net', to: 'alice@example.com' });

/** The end-of-data reply, or '' when none came within 2 s (the client would wait for its idle timeout). */
async function endReply(t: Talk, ledger: Ledger, token: string, from: string, to: string, body: string): Promise<string> {
  ledger.tell(token, null);
  expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
  expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
  t.write('DATA\r\n');
  expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
  t.write(`${body}.\r\n`);
  const end = await Promise.race([t.reply(), new Promise<string>((r) => setTimeout(() => r(''), 2000))]).catch(() => '');
  ledger.tell(token, end || null);
  return end;
}

let uncaught: string[] = [];
const record = (e: unknown) => { uncaught.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e)); };
beforeEach(() => {
  uncaught = [];
  process.on('uncaughtException', record);
});
afterEach(() => {
  process.off('uncaughtException', record);
});

describe.each(['outbound', 'inbound'] as const)('%s: the body fails while the next hop\'s 354 is pending', (role) => {
  it('a message over maxMessageBytes pipelined after DATA gets 552 5.3.4 at once, and nothing is thrown', async () => {
    const ledger = new Ledger(`crash-size-${role}`);
    const rig = await startRig(role, { ...SLOW_354, END: ledger.ackEnd() }, { limits: { maxMessageBytes: 100_000 } });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      const token = ledger.token();
      const end = await endReply(t, ledger, token, from, to, ledger.body(token, `${'s'.repeat(98)}\r\n`.repeat(2000)));
      expect(uncaught).toEqual([]);
      expect(end).toBe('552 5.3.4 Message exceeds fixed maximum message size 100000');
      t.destroy();
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    } finally {
      await rig.close();
    }
  });

  it('a client that vanishes right after DATA throws nothing, and the next hop never sees an end of message', async () => {
    const ledger = new Ledger(`crash-vanish-${role}`);
    const rig = await startRig(role, { ...SLOW_354, END: ledger.ackEnd() });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
      t.write('DATA\r\n');
      expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
      t.write('Subject: gone\r\n\r\npartial\r\n');
      t.destroy();
      await new Promise((r) => setTimeout(r, 600));
      expect(uncaught).toEqual([]);
      expect(rig.peer.connections.every((c) => c.messages.length === 0)).toBe(true);
      // the proxy still serves
      rig.peer.script = { END: ledger.ackEnd() };
      const u = await rig.session();
      expect((await sendMessage(u, ledger, { from, to: [to] })).end).toBe('250 2.0.0 Ok: queued as FAKE');
      await u.quit();
    } finally {
      await rig.close();
    }
  });
});

describe('inbound: a header block over 1 MiB pipelined after DATA', () => {
  it('gets 552 5.3.4 Message header too large at once, and nothing is thrown', async () => {
    const ledger = new Ledger('crash-header');
    const rig = await startRig('inbound', { ...SLOW_354, END: ledger.ackEnd() });
    try {
      const t = await rig.session();
      const token = ledger.token();
      const header = `Subject: fault-token ${token}\r\n${`X-Filler: ${'h'.repeat(1000)}\r\n`.repeat(1100)}\r\nbody\r\n`;
      const end = await endReply(t, ledger, token, 'friend@example.net', 'alice@example.com', header);
      expect(uncaught).toEqual([]);
      expect(end).toBe('552 5.3.4 Message header too large');
      t.destroy();
      expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    } finally {
      await rig.close();
    }
  });
});

describe('the same failures once the body is streaming (next hop answered 354 promptly)', () => {
  for (const role of ['outbound', 'inbound'] as const) {
    it(`${role}: a message over maxMessageBytes sent 300 ms after DATA gets 552 5.3.4`, async () => {
      const ledger = new Ledger(`size-late-${role}`);
      const rig = await startRig(role, { END: ledger.ackEnd() }, { limits: { maxMessageBytes: 100_000 } });
      try {
        const { from, to } = who(role);
        const t = await rig.session();
        const token = ledger.token();
        ledger.tell(token, null);
        expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
        expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
        t.write('DATA\r\n');
        expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
        await new Promise((r) => setTimeout(r, 300));
        t.write(`${ledger.body(token, `${'s'.repeat(98)}\r\n`.repeat(2000))}.\r\n`);
        const end = await t.reply();
        ledger.tell(token, end);
        expect(end).toBe('552 5.3.4 Message exceeds fixed maximum message size 100000');
        expect(uncaught).toEqual([]);
        await t.quit();
        expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
      } finally {
        await rig.close();
      }
    });
  }
});
