/**
 * Inbound gate end to end over loopback: bounces to valid, expired, forged, case-munged and foreign tags,
 * SRS bounces reversed and relayed, the untaggedBounces modes with real bounce samples, forged verdict
 * headers, DNSBL and abuse limits. Exact reply lines at the client, exact recipients at the sinks.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { startTestProxy, testKeyring, T0 } from '../helpers/proxy.js';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { MS_PER_DAY } from '../../src/clock.js';

const ring = testKeyring();
const tag = (a: string, at = T0) => {
  const r = batvSign(a, ring.signing, at);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};
const srs = (a: string, at = T0) => {
  const r = srsForward(a, ring, { ...SRS_DEFAULTS, domain: 'srs.example.net' }, at);
  if (r.kind !== 'rewritten') throw new Error('not rewritten');
  return r.address;
};
const fixture = (name: string) => readFileSync(path.join(import.meta.dirname, '..', 'fixtures', 'bounces', `${name}.eml`));
const BOUNCE = 'From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nSorry.\r\n';

async function session(proxy: Proxy, from = ''): Promise<Talk> {
  const t = talk(proxy.inbound.port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd('EHLO mx.example.net')).toMatch(/^250/);
  expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
  return t;
}

describe('inbound verdicts at RCPT time', () => {
  let mailbox: Sink;
  let outbound: Sink;
  let proxy: Proxy;
  let clock: { set(ms: number): void };
  beforeAll(async () => {
    mailbox = await startSink();
    outbound = await startSink();
    ({ proxy, clock } = await startTestProxy({
      outbound: { relay: `smtp://127.0.0.1:${outbound.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}`, untaggedBounces: 'reject' },
    }));
  });
  afterAll(async () => {
    await proxy.close(100);
    await mailbox.close();
    await outbound.close();
  });
  afterEach(() => {
    mailbox.reset();
    outbound.reset();
    clock.set(T0);
  });

  it('accepts a bounce to a valid tag and delivers it to the untagged address, with a verdict header', async () => {
    const t = await session(proxy);
    expect(await t.cmd(`RCPT TO:<${tag('alice@example.com')}>`)).toBe('250 Accepted');
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await mailbox.waitForMessages(1);
    expect(m!.mailFrom).toBe('');
    expect(m!.rcptTo).toEqual(['alice@example.com']);
    expect(m!.body.toString()).toMatch(/^Received: from mx\.example\.net \(\[127\.0\.0\.1\]\)\r\n\tby proxy\.test \(batv-proxy\) with ESMTP id [0-9A-F]{12}\r\n\tfor <alice@example\.com>;\r\n\tThu, 1 Jan 2026 12:00:00 \+0000\r\nX-BATV-Proxy: batv-valid; key=0; age=0d; by=proxy\.test\r\nFrom: MAILER-DAEMON/);
  });

  it('takes RCPT TO:<postmaster> without a domain (RFC 5321 4.1.1.3) and delivers it to postmaster@ the first domain', async () => {
    for (const rcpt of ['postmaster', 'PostMaster']) {
      const t = await session(proxy);
      expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe('250 Accepted');
      expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
      await t.quit();
      const [m] = await mailbox.waitForMessages(1);
      expect(m!.rcptTo).toEqual(['postmaster@example.com']);
      mailbox.reset();
    }
    const t = await session(proxy);
    // any other address without a domain is refused by smtp-server's own syntax check
    expect(await t.cmd('RCPT TO:<webmaster>')).toBe('501 Error: Bad recipient address syntax');
    await t.quit();
  });

  it('accepts tags up to 7 days old and refuses them at 8 with "BATV signature expired"', async () => {
    const tagged = tag('alice@example.com');
    clock.set(T0 + 7 * MS_PER_DAY);
    const t = await session(proxy);
    expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe('250 Accepted');
    await t.quit();
    clock.set(T0 + 8 * MS_PER_DAY);
    const u = await session(proxy);
    expect(await u.cmd(`RCPT TO:<${tagged}>`)).toBe(`550 5.7.1 <${tagged}>: BATV signature expired`);
    await u.quit();
  });

  it('refuses forged, malformed and unknown-key tags with the reason, for bounces and ordinary mail alike', async () => {
    const good = tag('alice@example.com');
    const forged = good.replace(/^(prvs=\d{4})[0-9a-f]{6}/, '$1000000');
    const unknownKey = good.replace(/^prvs=0/, 'prvs=7');
    for (const from of ['', 'someone@example.net']) {
      const t = await session(proxy, from);
      expect(await t.cmd(`RCPT TO:<${forged}>`)).toBe(`550 5.7.1 <${forged}>: BATV signature invalid`);
      expect(await t.cmd('RCPT TO:<prvs=12=alice@example.com>')).toBe('550 5.7.1 <prvs=12=alice@example.com>: malformed BATV tag');
      expect(await t.cmd(`RCPT TO:<${unknownKey}>`)).toBe(`550 5.7.1 <${unknownKey}>: BATV key unknown`);
      await t.quit();
    }
    expect(mailbox.messages).toHaveLength(0);
  });

  it('accepts a case-munged tag (uppercase hex and prefix)', async () => {
    const good = tag('alice@example.com');
    const munged = `PRVS=${good.slice(5, 9)}${good.slice(9, 15).toUpperCase()}${good.slice(15)}`;
    const t = await session(proxy);
    expect(await t.cmd(`RCPT TO:<${munged}>`)).toBe('250 Accepted');
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    expect((await mailbox.waitForMessages(1))[0]!.rcptTo).toEqual(['alice@example.com']);
  });

  it('refuses a recipient outside our domains: never an open relay', async () => {
    const t = await session(proxy, 'someone@example.net');
    expect(await t.cmd('RCPT TO:<victim@elsewhere.example>')).toBe('550 5.7.1 <victim@elsewhere.example>: relaying denied');
    expect(await t.cmd(`RCPT TO:<${tag('alice@elsewhere.example')}>`)).toBe(`550 5.7.1 <${tag('alice@elsewhere.example')}>: relaying denied`);
    expect(await t.cmd('RCPT TO:<alice@example.com.evil.example>')).toBe('550 5.7.1 <alice@example.com.evil.example>: relaying denied');
    await t.quit();
  });

  it('refuses an untagged bounce (reject mode) but delivers ordinary mail and mail to postmaster', async () => {
    const t = await session(proxy);
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused');
    expect(await t.cmd('RCPT TO:<postmaster@example.com>')).toBe('250 Accepted');
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const u = await session(proxy, 'friend@example.net');
    expect(await u.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
    expect((await u.data('Subject: hi\r\n\r\nhello\r\n')).end).toBe('250 Ok: queued as sink');
    await u.quit();
    const ms = await mailbox.waitForMessages(2);
    expect(ms.map((m) => [m.mailFrom, m.rcptTo])).toEqual([['', ['postmaster@example.com']], ['friend@example.net', ['alice@example.com']]]);
  });

  it('keeps valid recipients flowing when others in the transaction are refused', async () => {
    const t = await session(proxy);
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toMatch(/^550 5\.7\.1 /);
    expect(await t.cmd(`RCPT TO:<${tag('bob@example.org')}>`)).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${tag('carol@example.com')}>`)).toBe('250 Accepted');
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    expect((await mailbox.waitForMessages(1))[0]!.rcptTo).toEqual(['bob@example.org', 'carol@example.com']);
  });

  it('reverses a valid SRS bounce and relays it through the outbound next hop', async () => {
    const addr = srs('Original.Sender@Foreign.example');
    const t = await session(proxy);
    expect(await t.cmd(`RCPT TO:<${addr}>`)).toBe('250 Accepted');
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await outbound.waitForMessages(1);
    expect(m!.mailFrom).toBe('');
    expect(m!.rcptTo).toEqual(['Original.Sender@Foreign.example']);
    expect(mailbox.messages).toHaveLength(0);
  });

  it('refuses an SRS address for ordinary mail (bounces only), and invalid or expired SRS addresses', async () => {
    const addr = srs('someone@foreign.example');
    const t = await session(proxy, 'spammer@example.net');
    expect(await t.cmd(`RCPT TO:<${addr}>`)).toBe(`550 5.7.1 <${addr}>: SRS addresses accept only bounces (null sender)`);
    await t.quit();
    const forged = addr.replace(/^SRS0=..../, 'SRS0=AAAA');
    clock.set(T0 + 22 * MS_PER_DAY);
    const u = await session(proxy);
    expect(await u.cmd(`RCPT TO:<${forged}>`)).toBe(`550 5.7.1 <${forged}>: SRS hash invalid`);
    expect(await u.cmd(`RCPT TO:<${addr}>`)).toBe(`550 5.7.1 <${addr}>: SRS address expired`);
    expect(await u.cmd('RCPT TO:<postmaster@srs.example.net>')).toBe('550 5.1.1 <postmaster@srs.example.net>: no such address (the SRS domain receives only SRS addresses)');
    await u.quit();
  });

  it('one transaction, one next hop: an SRS bounce after a mailbox recipient gets 452 4.5.3', async () => {
    const t = await session(proxy);
    expect(await t.cmd(`RCPT TO:<${tag('alice@example.com')}>`)).toBe('250 Accepted');
    const addr = srs('x@foreign.example');
    expect(await t.cmd(`RCPT TO:<${addr}>`)).toBe(`452 4.5.3 <${addr}>: send this recipient in a separate transaction`);
    expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    expect((await mailbox.waitForMessages(1))[0]!.rcptTo).toEqual(['alice@example.com']);
    expect(outbound.messages).toHaveLength(0);
  });

  it('removes a forged verdict header that arrived from outside before adding its own', async () => {
    const t = await session(proxy, 'friend@example.net');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
    const forged = 'X-BATV-Proxy: batv-valid; key=0; by=proxy.test\r\nSubject: hi\r\nx-batv-proxy: batv-valid;\r\n  folded continuation\r\n\r\nX-BATV-Proxy: in the body stays\r\n';
    expect((await t.data(forged)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await mailbox.waitForMessages(1);
    const body = m!.body.toString();
    expect(body.match(/^x-batv-proxy:/gim)).toHaveLength(2);
    expect(body).toContain('\r\nX-BATV-Proxy: untagged; by=proxy.test\r\nSubject: hi\r\n\r\nX-BATV-Proxy: in the body stays\r\n');
  });

  it('removes a forged verdict hidden behind a bare CR, a bare LF or a NUL in its name (each a field at the mailbox host)', async () => {
    // The next hop gets bare CR/LF as CR LF and no NUL (docs/smuggling.md), so each of these is a field
    // there; the rewriter reads the header block the same way.
    const t = await session(proxy, 'friend@example.net');
    expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
    const forged = 'Subject: hi\rX-BATV-Proxy: batv-valid; key=0\r\nTo: a\nX-BATV-\0Proxy: batv-valid; key=1\r\n\r\nbody\r\n';
    expect((await t.data(forged)).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const [m] = await mailbox.waitForMessages(1);
    const body = m!.body.toString('latin1');
    expect(body.match(/^x-batv-proxy:/gim)).toEqual(['X-BATV-Proxy:']);
    expect(body).toContain('\r\nX-BATV-Proxy: untagged; by=proxy.test\r\nSubject: hi\r\nTo: a\r\n\r\nbody\r\n');
  });
});

describe('inbound untaggedBounces modes with real bounce samples', () => {
  let mailbox: Sink;
  beforeAll(async () => { mailbox = await startSink(); });
  afterAll(async () => { await mailbox.close(); });
  afterEach(() => mailbox.reset());

  async function withMode(mode: string, extra: Record<string, unknown>, fn: (p: Proxy) => Promise<void>) {
    const { proxy } = await startTestProxy({ inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}`, untaggedBounces: mode, ...extra } });
    try {
      await fn(proxy);
    } finally {
      await proxy.close(100);
    }
  }

  it('classify: refuses delivery-status reports at end of DATA, lets MDNs and auto-replies through', async () => {
    await withMode('classify', {}, async (proxy) => {
      const outcomes: Record<string, string> = {};
      for (const name of ['postfix-ndr', 'exchange-ndr', 'qmail-bounce', 'mdn', 'outlook-ooo', 'vacation']) {
        const t = await session(proxy);
        expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
        const raw = fixture(name).toString('latin1').replace(/^\./gm, '..');
        outcomes[name] = (await t.data(Buffer.from(raw, 'latin1'))).end;
        await t.quit();
      }
      expect(outcomes['postfix-ndr']).toBe('550 5.7.1 Delivery status report to an untagged address refused as backscatter (multipart/report; report-type=delivery-status)');
      expect(outcomes['exchange-ndr']).toMatch(/^550 5\.7\.1 Delivery status report to an untagged address refused as backscatter \(/);
      expect(outcomes['qmail-bounce']).toMatch(/^550 5\.7\.1 /);
      expect(outcomes['mdn']).toBe('250 Ok: queued as sink');
      expect(outcomes['outlook-ooo']).toBe('250 Ok: queued as sink');
      expect(outcomes['vacation']).toBe('250 Ok: queued as sink');
      expect(mailbox.messages).toHaveLength(3);
    });
  });

  it('tag: delivers an untagged bounce with a header saying so', async () => {
    await withMode('tag', {}, async (proxy) => {
      const t = await session(proxy);
      expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
      expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
      await t.quit();
      expect((await mailbox.waitForMessages(1))[0]!.body.toString()).toContain('\r\nX-BATV-Proxy: untagged-bounce-tag; by=proxy.test\r\n');
    });
  });

  it('reject with a grace date in the future: lets the untagged bounce through and counts it', async () => {
    await withMode('reject', { graceUntil: '2026-02-01T00:00:00Z' }, async (proxy) => {
      const t = await session(proxy);
      expect(await t.cmd('RCPT TO:<alice@example.com>')).toBe('250 Accepted');
      expect((await t.data(BOUNCE)).end).toBe('250 Ok: queued as sink');
      await t.quit();
      expect(await proxy.metrics.registry.getSingleMetricAsString('batv_proxy_would_refuse_total')).toContain('batv_proxy_would_refuse_total{reason="untagged-bounce"} 1');
    });
  });
});

describe('inbound abuse limits', () => {
  it('cools a client off with 421 4.7.0 after too many refused bounces, and lets it back after the cooling-off time', async () => {
    const { proxy, clock } = await startTestProxy({ inbound: { limits: { refusedPerClient: 3, coolingOffSec: 60 } } });
    try {
      const t = await session(proxy);
      for (let i = 0; i < 3; i++) expect(await t.cmd(`RCPT TO:<user${i}@example.com>`)).toMatch(/^550 5\.7\.1 /);
      expect(await t.cmd('RCPT TO:<user9@example.com>')).toBe('421 4.7.0 Too many refused bounces from 127.0.0.1; try again later');
      await t.quit();
      const u = talk(proxy.inbound.port);
      expect(await u.greeting).toBe('421 4.7.0 Too many refused bounces from 127.0.0.1; try again later');
      u.destroy();
      clock.set(T0 + 61_000);
      const v = await session(proxy);
      expect(await v.cmd(`RCPT TO:<${tag('alice@example.com')}>`)).toBe('250 Accepted');
      await v.quit();
    } finally {
      await proxy.close(100);
    }
  });

  it('caps accepted bounces per valid tag per window (a harvested tag cannot flood)', async () => {
    const { proxy, clock } = await startTestProxy({ inbound: { limits: { bouncesPerTag: 2, tagWindowSec: 3600 } } });
    const tagged = tag('alice@example.com');
    try {
      for (let i = 0; i < 2; i++) {
        const t = await session(proxy);
        expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe('250 Accepted');
        await t.quit();
      }
      const t = await session(proxy);
      expect(await t.cmd(`RCPT TO:<${tagged}>`)).toBe(`450 4.7.1 <${tagged}>: too many bounces to this tagged address; try again later`);
      await t.quit();
      clock.set(T0 + 3601_000);
      const u = await session(proxy);
      expect(await u.cmd(`RCPT TO:<${tagged}>`)).toBe('250 Accepted');
      await u.quit();
    } finally {
      await proxy.close(100);
    }
  });
  it('counts every spelling of one tag against one allowance (separators, case), for SRS and BATV', async () => {
    const { proxy } = await startTestProxy({ inbound: { limits: { bouncesPerTag: 4, tagWindowSec: 3600 } } });
    const s = srs('someone@partner.example');
    const b = tag('alice@example.com');
    // SRS: =, + and - after SRS0, and the whole local part in upper case (Mail::SRS accepts all of them)
    const srsSpellings = ['=', '+', '-'].map((sep) => s.replace(/^SRS0=/, `SRS0${sep}`)).concat([s.toUpperCase().replace(/@SRS\.EXAMPLE\.NET$/, '@srs.example.net')]);
    // BATV hashes the address as given (docs/wire-formats.md), so only the tag type's case varies a valid tag
    const batvSpellings = [b, b.replace(/^prvs=/, 'PRVS='), b.replace(/^prvs=/, 'Prvs='), b.replace(/^prvs=/, 'pRVS=')];
    try {
      for (const spellings of [srsSpellings, batvSpellings]) {
        for (const rcpt of spellings) {
          const t = await session(proxy);
          expect(await t.cmd(`RCPT TO:<${rcpt}>`), rcpt).toBe('250 Accepted');
          await t.quit();
        }
        for (const rcpt of spellings) {
          const t = await session(proxy);
          expect(await t.cmd(`RCPT TO:<${rcpt}>`)).toBe(`450 4.7.1 <${rcpt}>: too many bounces to this tagged address; try again later`);
          await t.quit();
        }
      }
    } finally {
      await proxy.close(100);
    }
  });
});

describe('inbound Backscatterer safe mode (DNS server on loopback)', () => {
  let dns: TestDnsServer;
  beforeAll(async () => {
    dns = await startDnsServer({});
  });
  afterAll(async () => { await dns.close(); });

  it('refuses a bounce from a listed client at MAIL, never ordinary mail', async () => {
    dns.set('1.0.0.127.ips.backscatterer.org', { a: ['127.0.0.2'], txt: ['listed'], ttl: 300 });
    const { proxy } = await startTestProxy({ inbound: { dnsbl: { mode: 'reject', servers: [`127.0.0.1:${dns.port}`], timeoutMs: 500 } } });
    try {
      const t = talk(proxy.inbound.port);
      await t.greeting;
      await t.cmd('EHLO mx.example.net');
      expect(await t.cmd('MAIL FROM:<>')).toBe('554 5.7.1 Bounce from 127.0.0.1 refused: listed in ips.backscatterer.org');
      expect(await t.cmd('MAIL FROM:<friend@example.net>')).toBe('250 Accepted');
      await t.quit();
    } finally {
      await proxy.close(100);
      dns.remove('1.0.0.127.ips.backscatterer.org');
    }
  });

  it('fails open when the lookup times out', async () => {
    dns.stall('1.0.0.127.ips.backscatterer.org');
    const { proxy } = await startTestProxy({ inbound: { dnsbl: { mode: 'reject', servers: [`127.0.0.1:${dns.port}`], timeoutMs: 200 } } });
    try {
      const t = await session(proxy);
      await t.quit();
      expect(await proxy.metrics.registry.getSingleMetricAsString('batv_proxy_dnsbl_lookups_total')).toContain('result="timeout"} 1');
    } finally {
      await proxy.close(100);
      dns.unstall('1.0.0.127.ips.backscatterer.org');
    }
  });
});
