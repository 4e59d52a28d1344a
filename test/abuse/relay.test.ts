/**
 * Relay abuse: neither listener relays for outsiders by any trick. Inbound (the MX, domains
 * ["example.com"]) is tried with source routes, % hacks, bang paths, quoted @, address literals,
 * uppercase domains, trailing dots, IDN look-alikes of our domain (Cyrillic а, its punycode, fullwidth
 * letters), our domain as a prefix or suffix, and foreign domains; the exact reply for each, and what
 * reached which next hop. Outbound is tried by a client outside allowNetworks (with and without AUTH
 * offered), with XCLIENT, a PROXY header, forged HELO, pipelining, and every kind of sender.
 *
 * Decision for local parts of our own domain that carry routing (user%victim.example@example.com,
 * victim.example!user@example.com, also inside a valid tag): refused with 550 5.7.1. A mailbox host that
 * still honours the percent hack or bang paths and trusts the proxy's address (e.g. Postfix with
 * allow_percent_hack = yes and the proxy in mynetworks) would otherwise turn the pair into a relay.
 * Quoted "@" is refused by smtp-server's address parser (501), as is a trailing dot.
 */
import { domainToASCII } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../src/auth.js';
import { inNetworks } from '../../src/net/cidr.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { startTestProxy, T0, testKeyring } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ring = testKeyring();
const tag = (a: string) => { const r = batvSign(a, ring.signing, T0); if (r.kind !== 'signed') throw new Error('unsigned'); return r.address; };
const BODY = 'Subject: relay test\r\n\r\nhello\r\n';
const cyrillic = 'ex\u0430mple.com';
const punycode = domainToASCII(cyrillic);
const fullwidth = '\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com';

async function session(port: number, helo = 'mx.outside.example'): Promise<Talk> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd(`EHLO ${helo}`)).toMatch(/^250-/);
  return t;
}

describe('inbound (MX for example.com) never relays for outsiders', () => {
  let mailbox: Sink;
  let outside: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    mailbox = await startSink();
    outside = await startSink();
    ({ proxy } = await startTestProxy({
      domains: ['example.com'],
      outbound: { relay: `smtp://127.0.0.1:${outside.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}`, untaggedBounces: 'reject' },
    }));
  });
  afterAll(async () => {
    await proxy.close(50);
    await mailbox.close();
    await outside.close();
  });
  afterEach(() => {
    // whatever a test tried, nothing ever reaches the outbound next hop (the internet) from an ordinary sender
    expect(outside.messages).toEqual([]);
  });

  const denied = (a: string) => `550 5.7.1 <${a}>: relaying denied`;
  const refusedCases: Array<[string, string, string]> = [
    ['a foreign domain', 'user@victim.example', denied('user@victim.example')],
    ['a source route through us to a foreign domain', '@example.com:user@victim.example', denied('user@victim.example')],
    ['a two-hop source route', '@example.com,@mx.example.com:user@victim.example', denied('user@victim.example')],
    ['an IPv4 address literal (even loopback)', 'user@[127.0.0.1]', denied('user@[127.0.0.1]')],
    ['an IPv6 address literal', 'user@[IPv6:::1]', denied('user@[IPv6:::1]')],
    ['a Cyrillic look-alike of our domain', `user@${cyrillic}`, Buffer.from(denied(`user@${cyrillic}`), 'utf8').toString('latin1')],
    ['the punycode of that look-alike', `user@${punycode}`, denied(`user@${punycode}`)],
    ['fullwidth letters (IDNA maps them to example.com, the proxy does not)', `user@${fullwidth}`, Buffer.from(denied(`user@${fullwidth}`), 'utf8').toString('latin1')],
    ['our domain as a prefix of another', 'user@example.com.victim.example', denied('user@example.com.victim.example')],
    ['a subdomain of ours that is not ours', 'user@mail.example.com', denied('user@mail.example.com')],
    ['our domain as a suffix without a dot', 'user@notexample.com', denied('user@notexample.com')],
    ['a valid BATV tag (our key) of a foreign address', tag('user@victim.example'), denied(tag('user@victim.example'))],
    ['postmaster of a foreign domain', 'postmaster@victim.example', denied('postmaster@victim.example')],
    ['quoted @ in the local part', '"user@victim.example"@example.com', '501 Error: Bad recipient address syntax'],
    ['a trailing dot on our domain', 'user@example.com.', '501 Error: Bad recipient address syntax'],
    ['two @', 'user@victim.example@example.com', '501 Error: Bad recipient address syntax'],
    ['a NUL byte before a foreign domain', 'user@example.com\u0000@victim.example', '501 Error: Bad recipient address syntax'],
    ['the SRS domain with an ordinary sender', 'postmaster@srs.example.net', '550 5.1.1 <postmaster@srs.example.net>: no such address (the SRS domain receives only SRS addresses)'],
  ];
  for (const [what, rcpt, reply] of refusedCases) {
    it(`refuses ${what}: ${JSON.stringify(rcpt)}`, async () => {
      const before = mailbox.messages.length;
      const t = await session(proxy.inbound.port);
      expect(await t.cmd('MAIL FROM:<spammer@outside.example> SMTPUTF8')).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe(reply);
      expect((await t.data(BODY)).start).toBe('503 Error: need RCPT command');
      await t.quit();
      expect(mailbox.messages.length).toBe(before);
    });
  }

  it('refuses the same tricks from the null sender (a "bounce"): nothing reaches either next hop', async () => {
    const before = mailbox.messages.length;
    const t = await session(proxy.inbound.port);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    for (const [, rcpt, reply] of refusedCases.filter(([w]) => w !== 'the SRS domain with an ordinary sender')) {
      expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe(reply);
    }
    expect((await t.data(BODY)).start).toBe('503 Error: need RCPT command');
    await t.quit();
    expect(mailbox.messages.length).toBe(before);
  });

  const oursCases: Array<[string, string, string]> = [
    ['our domain in upper case', 'user@EXAMPLE.COM', 'user@EXAMPLE.COM'],
    ['a source route through a foreign host to us (the route is dropped)', '@victim.example:user@example.com', 'user@example.com'],
  ];
  for (const rcpt of ['user%victim.example@example.com', 'victim.example!user@example.com']) {
    it(`refuses routing in a local part of ours, whoever sends: ${rcpt}`, async () => {
      const before = mailbox.messages.length;
      const t = await session(proxy.inbound.port);
      expect(await t.cmd('MAIL FROM:<friend@outside.example>')).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe(`550 5.7.1 <${rcpt}>: routing characters (% or !) in the local part are not accepted`);
      await t.quit();
      expect(mailbox.messages.length).toBe(before);
    });
  }
  for (const [what, rcpt, delivered] of oursCases) {
    it(`passes ${what} to our own mailbox host only: ${JSON.stringify(rcpt)}`, async () => {
      const before = mailbox.messages.length;
      const t = await session(proxy.inbound.port);
      expect(await t.cmd('MAIL FROM:<friend@outside.example>')).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe('250 Accepted');
      expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
      await t.quit();
      const [m] = (await mailbox.waitForMessages(before + 1)).slice(before);
      expect(m!.rcptTo).toEqual([delivered]);
    });
  }

  it('an untagged bounce to a % hack local part is refused for its routing', async () => {
    const t = await session(proxy.inbound.port);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<user%victim.example@example.com>')).toBe('550 5.7.1 <user%victim.example@example.com>: routing characters (% or !) in the local part are not accepted');
    await t.quit();
  });

  it('a valid tag wrapped around a % hack local part is refused too: nothing reaches the mailbox host', async () => {
    const tagged = tag('user%victim.example@example.com');
    const before = mailbox.messages.length;
    const t = await session(proxy.inbound.port);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe(`550 5.7.1 <${tagged}>: routing characters (% or !) in the local part are not accepted`);
    await t.quit();
    expect(mailbox.messages.length).toBe(before);
  });

  it('a recipient refused in a transaction never rides along with an accepted one', async () => {
    const before = mailbox.messages.length;
    const t = await session(proxy.inbound.port);
    expect(await t.cmd('MAIL FROM:<friend@outside.example>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<user@victim.example>')).toBe(denied('user@victim.example'));
    expect(await t.cmd('RCPT TO:<@example.com:user@victim.example>')).toBe(denied('user@victim.example'));
    expect((await t.data(BODY)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = (await mailbox.waitForMessages(before + 1)).slice(before);
    expect(m!.rcptTo).toEqual(['alice@example.com']);
  });
});

describe('outbound refuses a client outside allowNetworks whatever it tries', () => {
  let sink: Sink;
  let open: Proxy;
  let withAuth: Proxy;
  beforeAll(async () => {
    sink = await startSink();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-relay-'));
    const usersFile = path.join(dir, 'users');
    writeFileSync(usersFile, `alice:${await hashPassword('alice-password', 1024)}\n`);
    ({ proxy: open } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['192.0.2.0/24'] } }));
    ({ proxy: withAuth } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['192.0.2.0/24'], usersFile, allowInsecureAuth: true } }));
  });
  afterAll(async () => {
    await open.close(50);
    await withAuth.close(50);
    await sink.close();
    expect(sink.messages).toEqual([]);
  });

  const senders = ['alice@example.com', 'alice@EXAMPLE.COM', '', 'postmaster@example.com', 'user@victim.example', tag('alice@example.com'), 'SRS0=abcd=7G=victim.example=x@srs.example.net', 'user%victim.example@example.com', '@example.com:alice@example.com'];

  it('every sender gets "554 5.7.1 Relay access denied for 127.0.0.1"; RCPT and DATA get 503', async () => {
    const t = await session(open.outbound.port);
    for (const s of senders) {
      expect(await t.cmd(`MAIL FROM:<${s}>`)).toBe('554 5.7.1 Relay access denied for 127.0.0.1');
      expect(await t.cmd('RCPT TO:<user@victim.example>')).toBe('503 Error: need MAIL command');
      expect(await t.cmd('RSET')).toMatch(/^250 /);
    }
    await t.quit();
  });

  it('with AUTH offered: "530 5.7.0 Authentication required to relay", also with an AUTH=<> parameter', async () => {
    const t = await session(withAuth.outbound.port);
    for (const s of senders) expect(await t.cmd(`MAIL FROM:<${s}>`)).toBe('530 5.7.0 Authentication required to relay');
    expect(await t.cmd('MAIL FROM:<alice@example.com> AUTH=<alice@example.com>')).toBe('530 5.7.0 Authentication required to relay');
    await t.quit();
  });

  it('XCLIENT, a PROXY header and a forged HELO do not change who the client is', async () => {
    const t = talk(open.outbound.port);
    await t.greeting;
    expect(await t.cmd('PROXY TCP4 192.0.2.7 127.0.0.1 40000 25')).toBe('500 Error: command not recognized');
    expect(await t.cmd('EHLO [192.0.2.7]')).toMatch(/^250-/);
    expect(await t.cmd('XCLIENT ADDR=192.0.2.7 NAME=trusted.example')).toBe('550 Error: Not allowed');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('554 5.7.1 Relay access denied for 127.0.0.1');
    await t.quit();
  });

  it('a whole transaction pipelined in one write delivers nothing (DATA is refused, the body is read as commands)', async () => {
    const t = talk(open.outbound.port);
    await t.greeting;
    t.write(`EHLO x\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<user@victim.example>\r\nDATA\r\n${BODY}.\r\nQUIT\r\n`);
    const replies: string[] = [];
    for (;;) {
      const r = await t.reply().catch(() => null);
      if (r === null) break;
      replies.push(r);
      if (r.startsWith('221')) break;
    }
    expect(replies.slice(1, 4)).toEqual(['554 5.7.1 Relay access denied for 127.0.0.1', '503 Error: need MAIL command', '503 Error: need RCPT command']);
    expect(replies.some((r) => r.startsWith('354'))).toBe(false);
    t.destroy();
  });

  it('failed AUTH leaves the client an outsider', async () => {
    const t = await session(withAuth.outbound.port);
    expect(await t.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`)).toBe('535 5.7.8 Authentication credentials invalid');
    expect(await t.cmd(`AUTH PLAIN ${Buffer.from('\0nobody\0alice-password').toString('base64')}`)).toBe('535 5.7.8 Authentication credentials invalid');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('530 5.7.0 Authentication required to relay');
    await t.quit();
  });

  it('IPv4-mapped IPv6 client addresses are judged by their IPv4 address, both ways', () => {
    const nets = ['192.0.2.0/24', '127.0.0.0/8'];
    const only = ['192.0.2.0/24'];
    expect(inNetworks('::ffff:127.0.0.1', only)).toBe(false);
    expect(inNetworks('::ffff:192.0.2.9', only)).toBe(true);
    expect(inNetworks('::ffff:198.51.100.1', nets)).toBe(false);
    expect(inNetworks('::ffff:7f00:1', only)).toBe(false);
    expect(inNetworks('::ffff:7f00:1', nets)).toBe(true);
    // The same address as ::ffff:192.0.2.9 written in hex groups: net.BlockList treats it as 192.0.2.9 too.
    expect(inNetworks('0:0:0:0:0:ffff:c000:209', only)).toBe(true);
    expect(inNetworks('not-an-ip', nets)).toBe(false);
    expect(inNetworks('', nets)).toBe(false);
  });
});
