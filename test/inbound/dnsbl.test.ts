import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixedClock } from '../../src/clock.js';
import { applies, createDnsbl, dnsblQueryName, type DnsblOptions } from '../../src/inbound/dnsbl.js';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.js';

const ZONE = 'ips.backscatterer.org';
let dns: TestDnsServer;

beforeAll(async () => {
  dns = await startDnsServer({
    [`2.0.0.127.${ZONE}`]: { a: ['127.0.0.2'], txt: ['Backscatter/Sender Callouts from 127.0.0.2 - see http://www.backscatterer.org/?ip=127.0.0.2'], ttl: 2100 },
    [`4.3.2.1.${ZONE}`]: { a: ['127.0.0.2'], ttl: 60 },
    [`5.3.2.1.${ZONE}`]: { a: ['192.0.2.1'], ttl: 60 },
    [`6.3.2.1.${ZONE}`]: { a: ['127.0.0.2'], txt: ['listed'], ttl: 0 },
  });
});
afterAll(async () => {
  await dns.close();
});

function make(extra: Partial<DnsblOptions> = {}) {
  const clock = fixedClock(Date.UTC(2025, 0, 1));
  const bl = createDnsbl({ servers: [dns.address], timeoutMs: 500, clock, ...extra });
  return { bl, clock };
}

describe('dnsblQueryName', () => {
  it('reverses IPv4 octets', () => {
    expect(dnsblQueryName('1.2.3.4')).toBe('4.3.2.1.ips.backscatterer.org');
    expect(dnsblQueryName('127.0.0.2', 'example.net.')).toBe('2.0.0.127.example.net');
  });
  it('writes IPv6 as 32 reversed nibbles', () => {
    expect(dnsblQueryName('2001:db8::1')).toBe(
      '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ips.backscatterer.org',
    );
    expect(dnsblQueryName('2001:DB8:0:0:8:800:200C:417A')).toBe(
      'a.7.1.4.c.0.0.2.0.0.8.0.8.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ips.backscatterer.org',
    );
    expect(dnsblQueryName('::1')).toBe(`1.${'0.'.repeat(31)}ips.backscatterer.org`);
    expect(dnsblQueryName('[2001:db8::1]')).toBe(dnsblQueryName('2001:db8::1'));
    expect(dnsblQueryName('fe80::1%eth0')).toBe(dnsblQueryName('fe80::1'));
  });
  it('treats IPv4-mapped IPv6 as IPv4', () => {
    expect(dnsblQueryName('::ffff:1.2.3.4')).toBe('4.3.2.1.ips.backscatterer.org');
    expect(dnsblQueryName('::FFFF:0102:0304')).toBe('4.3.2.1.ips.backscatterer.org');
  });
  it('refuses what is not an address', () => {
    for (const bad of ['', '1.2.3', '1.2.3.256', 'example.com', '::1::2', '1:2:3:4:5:6:7:8:9', 'gggg::1']) {
      expect(dnsblQueryName(bad)).toBeNull();
    }
  });
});

describe('applies (safe mode)', () => {
  it('is true only for the null sender and postmaster', () => {
    expect(applies('')).toBe(true);
    expect(applies('<>')).toBe(true);
    expect(applies(' < > ')).toBe(true);
    expect(applies('postmaster@example.com')).toBe(true);
    expect(applies('<PostMaster@example.com>')).toBe(true);
    expect(applies('"postmaster"@example.com')).toBe(true);
    expect(applies('user@example.com')).toBe(false);
    expect(applies('postmaster-list@example.com')).toBe(false);
    expect(applies('mailer-daemon@example.com')).toBe(false);
    expect(applies('<user@postmaster.example.com>')).toBe(false);
  });
});

describe('createDnsbl lookups', () => {
  it('reports a listed address with its code and TXT reason', async () => {
    const { bl } = make();
    const r = await bl.lookup('127.0.0.2');
    expect(r).toEqual({
      listed: true,
      code: '127.0.0.2',
      text: 'Backscatter/Sender Callouts from 127.0.0.2 - see http://www.backscatterer.org/?ip=127.0.0.2',
      cached: false,
    });
  });

  it('is listed without a reason when there is no TXT record', async () => {
    const { bl } = make();
    expect(await bl.lookup('::ffff:1.2.3.4')).toEqual({ listed: true, code: '127.0.0.2', cached: false });
  });

  it('reports NXDOMAIN as not listed, and caches it for negativeTtlMs', async () => {
    const { bl, clock } = make({ negativeTtlMs: 10_000 });
    const name = `10.2.0.192.${ZONE}`;
    expect(await bl.lookup('192.0.2.10')).toEqual({ listed: false, cached: false });
    expect(await bl.lookup('192.0.2.10')).toEqual({ listed: false, cached: true });
    expect(dns.count(name, 'A')).toBe(1);
    clock.advance(10_001);
    expect(await bl.lookup('192.0.2.10')).toEqual({ listed: false, cached: false });
    expect(dns.count(name, 'A')).toBe(2);
  });

  it('does not count an answer outside 127.0.0.0/8 as a listing', async () => {
    const { bl } = make();
    expect(await bl.lookup('1.2.3.5')).toEqual({ listed: false, cached: false });
  });

  it('serves a cache hit without querying again', async () => {
    const { bl } = make();
    const name = `2.0.0.127.${ZONE}`;
    const before = dns.count(name);
    await bl.lookup('127.0.0.2');
    expect(dns.count(name) - before).toBe(2); // A, then TXT for the reason
    const again = await bl.lookup('127.0.0.2');
    expect(again).toMatchObject({ listed: true, code: '127.0.0.2', cached: true });
    expect(again).toHaveProperty('text');
    expect(dns.count(name) - before).toBe(2);
    expect(bl.cacheSize).toBe(1);
  });

  it('re-queries once the answer TTL has passed on the clock', async () => {
    const { bl, clock } = make();
    const name = `4.3.2.1.${ZONE}`; // TTL 60 s
    const before = dns.count(name, 'A');
    await bl.lookup('1.2.3.4');
    clock.advance(59_000);
    expect(await bl.lookup('1.2.3.4')).toMatchObject({ cached: true });
    expect(dns.count(name, 'A') - before).toBe(1);
    clock.advance(2_000);
    expect(await bl.lookup('1.2.3.4')).toMatchObject({ listed: true, cached: false });
    expect(dns.count(name, 'A') - before).toBe(2);
  });

  it('does not cache an answer with TTL 0', async () => {
    const { bl } = make();
    await bl.lookup('1.2.3.6');
    expect(await bl.lookup('1.2.3.6')).toMatchObject({ listed: true, cached: false });
    expect(dns.count(`6.3.2.1.${ZONE}`, 'A')).toBe(2);
  });

  it('answers a stalled query with a timeout within timeoutMs, without throwing', async () => {
    const name = `9.9.9.10.${ZONE}`;
    dns.stall(name);
    const { bl } = make({ timeoutMs: 300 });
    const t0 = performance.now();
    const r = await bl.lookup('10.9.9.9');
    const elapsed = performance.now() - t0;
    expect(r).toEqual({ error: 'timeout' });
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(300 + 200);
    // A timeout is not cached: the next lookup asks again.
    dns.unstall(name);
    expect(await bl.lookup('10.9.9.9')).toEqual({ listed: false, cached: false });
    bl.close();
  });

  it('returns the listing without its reason when only the TXT query times out', async () => {
    const name = `8.8.0.203.${ZONE}`;
    dns.set(name, { a: ['127.0.0.2'], txt: ['slow reason'], ttl: 300 });
    dns.stall(name, 'TXT');
    const { bl } = make({ timeoutMs: 200 });
    expect(await bl.lookup('203.0.8.8')).toEqual({ listed: true, code: '127.0.0.2', cached: false });
    expect(await bl.lookup('203.0.8.8')).toEqual({ listed: true, code: '127.0.0.2', cached: true });
    dns.unstall(name);
    bl.close();
  });

  it('shares one query between concurrent lookups of the same address', async () => {
    const name = `7.7.0.203.${ZONE}`;
    dns.set(name, { a: ['127.0.0.2'], txt: ['shared'], ttl: 300 });
    const { bl } = make();
    const rs = await Promise.all([bl.lookup('203.0.7.7'), bl.lookup('203.0.7.7'), bl.lookup('::ffff:203.0.7.7')]);
    for (const r of rs) expect(r).toEqual({ listed: true, code: '127.0.0.2', text: 'shared', cached: false });
    expect(rs[0]).not.toBe(rs[1]); // callers get their own objects
    expect(dns.count(name, 'A')).toBe(1);
    expect(dns.count(name, 'TXT')).toBe(1);
  });

  it('looks up IPv6 under the nibble name', async () => {
    const v6 = '2001:db8::25';
    const name = dnsblQueryName(v6)!;
    dns.set(name, { a: ['127.0.0.2'], ttl: 300 });
    const { bl } = make();
    expect(await bl.lookup(v6)).toEqual({ listed: true, code: '127.0.0.2', cached: false });
    expect(await bl.lookup('::1')).toEqual({ listed: false, cached: false });
    expect(dns.count(bl.queryName('::1')!, 'A')).toBe(1);
  });

  it('maps SERVFAIL to an error and a malformed address to bad-ip', async () => {
    dns.servfail(`8.8.0.198.${ZONE}`);
    const { bl } = make();
    expect(await bl.lookup('198.0.8.8')).toEqual({ error: 'servfail' });
    expect(await bl.lookup('not-an-ip')).toEqual({ error: 'bad-ip' });
  });

  it('skips private addresses only when configured', async () => {
    const { bl } = make({ skipPrivate: true });
    const before = dns.count(`1.0.168.192.${ZONE}`);
    expect(await bl.lookup('192.168.0.1')).toEqual({ listed: false, cached: false, skipped: true });
    expect(await bl.lookup('fe80::1')).toMatchObject({ skipped: true });
    expect(dns.count(`1.0.168.192.${ZONE}`)).toBe(before);
    const { bl: plain } = make();
    expect(await plain.lookup('192.168.0.1')).toEqual({ listed: false, cached: false });
    expect(await bl.lookup('127.0.0.2')).toMatchObject({ listed: true });
  });

  it('uses the configured zone', async () => {
    dns.set('4.3.2.1.bl.example.net', { a: ['127.0.0.3'], ttl: 30 });
    const { bl } = make({ zone: 'bl.example.net' });
    expect(await bl.lookup('1.2.3.4')).toEqual({ listed: true, code: '127.0.0.3', cached: false });
  });
});
