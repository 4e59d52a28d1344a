/**
 * src/net/cidr.ts: range text checked by cidrProblem(), matched by networkList() on one net.BlockList
 * (IPv4, IPv6, IPv4-mapped IPv6 both ways, /0, bare addresses, garbage never throws), inNetworks() over
 * a config's string array, and a property against a plain 32-bit reference for IPv4.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cidrProblem, inNetworks, networkList } from '../../src/net/cidr.js';
import { fcParams } from '../helpers/fuzz-env.js';

describe('cidrProblem()', () => {
  it('accepts addresses and address/bits ranges of both families', () => {
    for (const ok of ['127.0.0.0/8', '192.0.2.7', '192.0.2.7/32', '0.0.0.0/0', '::1/128', '::1', '2001:db8::/32', '::/0', '::ffff:0:0/96', '10.1.2.3/8']) {
      expect(cidrProblem(ok)).toBe(null);
    }
  });

  it('says what is wrong with anything else, in the messages the config shows', () => {
    expect(cidrProblem('nope')).toBe('"nope" is not an address or address/bits range');
    expect(cidrProblem('192.0.2.300')).toBe('"192.0.2.300" is not an address or address/bits range');
    expect(cidrProblem('192.0.2.0/24/8')).toBe('"192.0.2.0/24/8" is not an address or address/bits range');
    expect(cidrProblem('')).toBe('"" is not an address or address/bits range');
    expect(cidrProblem('/8')).toBe('"/8" is not an address or address/bits range');
    expect(cidrProblem('10.0.0.0/33')).toBe('"10.0.0.0/33" has a prefix length outside 0-32');
    expect(cidrProblem('10.0.0.0/')).toBe('"10.0.0.0/" has a prefix length outside 0-32');
    expect(cidrProblem('10.0.0.0/x')).toBe('"10.0.0.0/x" has a prefix length outside 0-32');
    expect(cidrProblem('10.0.0.0/-1')).toBe('"10.0.0.0/-1" has a prefix length outside 0-32');
    expect(cidrProblem('2001:db8::/129')).toBe('"2001:db8::/129" has a prefix length outside 0-128');
  });
});

describe('networkList()', () => {
  it('matches IPv4 ranges and bare IPv4 addresses', () => {
    const l = networkList(['192.0.2.0/24', '198.51.100.7']);
    expect(['192.0.2.0', '192.0.2.255', '198.51.100.7'].map((ip) => l.has(ip))).toEqual([true, true, true]);
    expect(['192.0.3.0', '192.0.1.255', '198.51.100.8', '::1'].map((ip) => l.has(ip))).toEqual([false, false, false, false]);
    expect(l.texts).toEqual(['192.0.2.0/24', '198.51.100.7']);
  });

  it('matches IPv6 ranges and bare IPv6 addresses, however the address is written', () => {
    const l = networkList(['2001:db8::/32', '::1']);
    expect(['2001:db8::1', '2001:DB8:ffff::', '0:0:0:0:0:0:0:1', '::1'].map((ip) => l.has(ip))).toEqual([true, true, true, true]);
    expect(['2001:db9::1', '::2', '127.0.0.1'].map((ip) => l.has(ip))).toEqual([false, false, false]);
  });

  it('matches an IPv4-mapped IPv6 client (dual-stack sockets) against IPv4 ranges, and an IPv4 client against ::ffff:0:0/96 ranges', () => {
    const v4 = networkList(['127.0.0.0/8']);
    expect(['::ffff:127.0.0.1', '::FFFF:127.1.2.3', '::ffff:7f00:1'].map((ip) => v4.has(ip))).toEqual([true, true, true]);
    expect(v4.has('::ffff:128.0.0.1')).toBe(false);
    const mapped = networkList(['::ffff:0:0/96']);
    expect([mapped.has('192.0.2.7'), mapped.has('::ffff:192.0.2.7'), mapped.has('2001:db8::1')]).toEqual([true, true, false]);
    const mapped24 = networkList(['::ffff:192.0.2.0/120']);
    expect([mapped24.has('192.0.2.200'), mapped24.has('192.0.3.1')]).toEqual([true, false]);
  });

  it('takes /0 as every address of its family only', () => {
    expect([networkList(['0.0.0.0/0']).has('203.0.113.9'), networkList(['0.0.0.0/0']).has('2001:db8::1')]).toEqual([true, false]);
    expect([networkList(['::/0']).has('2001:db8::1'), networkList(['::/0']).has('::ffff:203.0.113.9')]).toEqual([true, true]);
  });

  it('masks the host bits of a range written with them (10.1.2.3/8 is 10.0.0.0/8)', () => {
    expect([networkList(['10.1.2.3/8']).has('10.200.0.1'), networkList(['10.1.2.3/8']).has('11.0.0.1')]).toEqual([true, false]);
  });

  it('answers false, never throws, for anything that is not an IP address', () => {
    const l = networkList(['0.0.0.0/0', '::/0']);
    for (const junk of ['', 'not-an-ip', '192.0.2.300', '192.0.2.7/32', ' 192.0.2.7', '::ffff:999.0.0.1', 'fe80::1%', '[::1]', undefined as unknown as string, 42 as unknown as string]) {
      expect(l.has(junk)).toBe(false);
    }
    expect(networkList([]).has('127.0.0.1')).toBe(false);
  });

  it('refuses a range cidrProblem() refuses', () => {
    expect(() => networkList(['127.0.0.0/8', 'nope'])).toThrow('"nope" is not an address or address/bits range');
  });
});

describe('inNetworks()', () => {
  it('takes a config\'s string array (built once per array) or a NetworkList', () => {
    const nets = ['127.0.0.0/8', '::1/128'];
    expect([inNetworks('127.0.0.1', nets), inNetworks('::1', nets), inNetworks('::ffff:127.0.0.1', nets), inNetworks('10.0.0.1', nets)]).toEqual([true, true, true, false]);
    expect(inNetworks('10.0.0.1', networkList(['10.0.0.0/8']))).toBe(true);
    expect(inNetworks('10.0.0.1', [])).toBe(false);
  });

  it('sees a change to the array it was given', () => {
    const nets = ['127.0.0.0/8'];
    expect(inNetworks('10.0.0.1', nets)).toBe(false);
    nets.push('10.0.0.0/8');
    expect(inNetworks('10.0.0.1', nets)).toBe(true);
  });
});

describe('networkList() property', () => {
  const toInt = (o: readonly number[]) => ((o[0]! << 24) | (o[1]! << 16) | (o[2]! << 8) | o[3]!) >>> 0;
  const dotted = (o: readonly number[]) => o.join('.');
  const octets = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255));
  /** The plain reference: the top `bits` bits are equal. */
  const inRange = (ip: number, base: number, bits: number) => bits === 0 || ip >>> (32 - bits) === base >>> (32 - bits);

  it('agrees with a 32-bit prefix comparison for random IPv4 ranges and addresses, plain and IPv4-mapped', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(octets, fc.integer({ min: 0, max: 32 })), { minLength: 1, maxLength: 5 }),
      octets,
      fc.boolean(),
      (ranges, addr, near) => {
        // Half the time take the address from inside the first range's neighbourhood, so matches are common.
        const ip = near ? [...ranges[0]![0].slice(0, 3), addr[3]] : addr;
        const list = networkList(ranges.map(([base, bits]) => `${dotted(base)}/${bits}`));
        const expected = ranges.some(([base, bits]) => inRange(toInt(ip), toInt(base), bits));
        expect(list.has(dotted(ip))).toBe(expected);
        expect(list.has(`::ffff:${dotted(ip)}`)).toBe(expected);
      },
    ), fcParams(500));
  });
});
