/**
 * SMTP smuggling (issue 9, class 2; CVE-2023-51764/51765/51766; docs/smuggling.md), on both listeners.
 * A client hides a second transaction behind an end-of-data that only some receivers recognise: a bare
 * CR or LF around the dot, or a NUL a receiver drops. Through the proxy, every receiver (CRLF-strict,
 * LF-lenient, CR-lenient, NUL-stripping) must read exactly the one message the proxy checked: one MAIL,
 * one message, the body with its line ends normalised. With limits.bareLineEnds "reject" the client gets
 * 550 5.5.2 and no receiver completes a message; an exempt network is normalised instead.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LINE_RULES, startLenientReceiver, type LenientReceiver, type LineRule } from '../helpers/lenient-receiver.js';
import { talk } from '../helpers/talk.js';
import { startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';

const ring = testKeyring();
const tagged = (a: string) => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};

/** What a client puts between the body and the smuggled commands (each ends DATA for some receiver). */
const SEPARATORS: ReadonlyArray<[string, string]> = [
  ['CR . CR', '\r.\r'],
  ['CR . CRLF', '\r.\r\n'],
  ['LF . LF', '\n.\n'],
  ['LF . CRLF', '\n.\r\n'],
  ['CRLF . CR', '\r\n.\r'],
  ['CRLF . LF', '\r\n.\n'],
  ['CRLF NUL . CRLF', '\r\n\x00.\r\n'],
  ['LF NUL . LF', '\n\x00.\n'],
  ['CRLF . NUL CRLF', '\r\n.\x00\r\n'],
];

const REFUSED = '550 5.5.2 Message refused: bare CR or LF (or NUL) in the message; every line must end in CRLF (RFC 5321 2.3.8)';

/** The body as every receiver must read it: line ends CRLF, NUL gone. */
const normalised = (body: string) => body.replace(/\r\n|\r|\n/g, '\r\n').replace(/\x00/g, '');

const ROLES = {
  outbound: { from: 'alice@example.com', to: 'bob@example.net', smuggledFrom: 'ceo@example.com', smuggledTo: 'victim@example.net' },
  // The outer message is a bounce to a valid tag; the smuggled one a bounce to an untagged address.
  inbound: { from: '', to: tagged('alice@example.com'), smuggledFrom: '', smuggledTo: 'alice@example.com' },
} as const;

function payload(role: keyof typeof ROLES, token: string, sep: string): string {
  const r = ROLES[role];
  return `Subject: outer ${token}\r\n\r\nhello${sep}MAIL FROM:<${r.smuggledFrom}>\r\nRCPT TO:<${r.smuggledTo}>\r\nDATA\r\n`
    + `Subject: smuggled ${token}\r\n\r\nforged${sep}QUIT\r\n`;
}

async function send(port: number, role: keyof typeof ROLES, body: string): Promise<string[]> {
  const r = ROLES[role];
  const t = talk(port);
  await t.greeting;
  const replies = [await t.cmd('EHLO client.test'), await t.cmd(`MAIL FROM:<${r.from}>`), await t.cmd(`RCPT TO:<${r.to}>`)];
  const d = await t.data(`${body}\r\n`);
  replies.push(d.start, d.end);
  await t.quit();
  return replies;
}

describe.each(['outbound', 'inbound'] as const)('%s listener: SMTP smuggling', (role) => {
  const receivers = new Map<LineRule, LenientReceiver>();
  const proxies = new Map<string, Proxy>();
  const port = (p: Proxy) => (role === 'outbound' ? p.outbound.port : p.inbound.port);
  const hop = (r: LenientReceiver) => `smtp://127.0.0.1:${r.port}`;

  beforeAll(async () => {
    for (const rule of LINE_RULES) {
      const rec = await startLenientReceiver(rule);
      receivers.set(rule, rec);
      for (const mode of ['normalize', 'reject', 'exempt'] as const) {
        const limits = mode === 'normalize' ? {} : { bareLineEnds: 'reject', ...(mode === 'exempt' ? { bareLineEndsExempt: ['127.0.0.0/8'] } : {}) };
        const { proxy } = await startTestProxy({ outbound: { relay: hop(rec) }, inbound: { mailbox: hop(rec) }, limits }, { keyring: ring });
        proxies.set(`${rule}/${mode}`, proxy);
      }
    }
  });
  afterAll(async () => {
    for (const p of proxies.values()) await p.close(100);
    for (const r of receivers.values()) await r.close();
  });

  describe.each(['normalize', 'exempt'] as const)('bareLineEnds %s', (mode) => {
    it.each(LINE_RULES)('a %s receiver reads exactly one message for every separator, with normalised line ends', async (rule) => {
      const rec = receivers.get(rule)!;
      const proxy = proxies.get(`${rule}/${mode}`)!;
      for (const [name, sep] of SEPARATORS) {
        rec.reset();
        const token = `${rule}-${mode}-${name}`;
        const body = payload(role, token, sep);
        const replies = await send(port(proxy), role, body);
        expect(replies.slice(1, 3), name).toEqual(['250 Accepted', '250 Accepted']);
        expect(replies[4], name).toBe('250 2.0.0 Ok: queued');
        await expect.poll(() => rec.messages.length, { timeout: 2000 }).toBe(1);
        expect(rec.mailCommands, name).toHaveLength(1);
        const [m] = rec.messages;
        expect(m!.to, name).toEqual([role === 'outbound' ? ROLES.outbound.to : 'alice@example.com']);
        if (role === 'outbound') expect(m!.from, name).toMatch(/^prvs=\d{4}[0-9a-f]{6}=alice@example\.com$/);
        else expect(m!.from, name).toBe('');
        // The whole client body, after our Received: header, as the one message.
        expect(m!.body.endsWith(`\r\n${normalised(body)}\r\n`), `${name}: ${JSON.stringify(m!.body.slice(-200))}`).toBe(true);
      }
    });
  });

  describe('bareLineEnds reject', () => {
    it.each(LINE_RULES)('the client gets 550 5.5.2 for every separator, and a %s receiver completes no message', async (rule) => {
      const rec = receivers.get(rule)!;
      const proxy = proxies.get(`${rule}/reject`)!;
      for (const [name, sep] of SEPARATORS) {
        rec.reset();
        const replies = await send(port(proxy), role, payload(role, `${rule}-reject-${name}`, sep));
        expect(replies[4], name).toBe(REFUSED);
        expect(rec.messages, name).toHaveLength(0);
        expect(rec.mailCommands.length, name).toBeLessThanOrEqual(1);
      }
    });

    it('a clean message still passes byte for byte', async () => {
      const rec = receivers.get('crlf')!;
      rec.reset();
      const body = 'Subject: clean\r\n\r\nline\r\n..dotted\r\n';
      const replies = await send(port(proxies.get('crlf/reject')!), role, body);
      expect(replies[4]).toBe('250 2.0.0 Ok: queued');
      expect(rec.messages).toHaveLength(1);
      expect(rec.messages[0]!.body.endsWith('\r\nSubject: clean\r\n\r\nline\r\n.dotted\r\n\r\n')).toBe(true);
    });
  });
});
