/**
 * src/smtp/proxy-header.ts: the PROXY protocol header, versions 1 and 2, read as HAProxy writes it
 * (haproxy.org/download/2.6/doc/proxy-protocol.txt). Exact verdicts for each form, and properties: any
 * prefix of a valid header asks for more, a valid header followed by SMTP bytes is read to its exact
 * length, and random bytes never throw.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseProxyHeader, PROXY_V2_MAX_BODY, PROXY_V2_SIGNATURE } from '../../src/smtp/proxy-header.js';
import { proxyV2Header } from '../helpers/proxy-v2.js';

const v1 = (s: string) => Buffer.from(s, 'latin1');

describe('version 1', () => {
  it('TCP4 and TCP6 name the client and its port; the header length is up to and with CRLF', () => {
    expect(parseProxyHeader(v1('PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n'))).toEqual({ kind: 'header', version: 1, client: { address: '192.0.2.7', port: 40000 }, length: 44 });
    expect(parseProxyHeader(v1('PROXY TCP6 2001:DB8::7 2001:db8::1 40000 25\r\n'))).toEqual({ kind: 'header', version: 1, client: { address: '2001:db8::7', port: 40000 }, length: 45 });
  });
  it('UNKNOWN carries no client', () => {
    expect(parseProxyHeader(v1('PROXY UNKNOWN\r\n'))).toEqual({ kind: 'header', version: 1, client: null, length: 15 });
    expect(parseProxyHeader(v1('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n'))).toMatchObject({ kind: 'header', client: null });
  });
  it('refuses what is not exactly the format', () => {
    const why = (s: string) => (parseProxyHeader(v1(s)) as { why?: string }).why;
    expect(why('PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\n')).toBe('version 1 header does not end in CRLF');
    expect(why('PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n')).toBe('version 1 addresses are not TCP4 addresses');
    expect(why('PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n')).toBe('version 1 ports must be decimal numbers from 0 to 65535');
    expect(why('PROXY TCP4 192.0.2.7 198.51.100.1 040000 25\r\n')).toBe('version 1 ports must be decimal numbers from 0 to 65535');
    expect(why('PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n')).toBe('version 1 protocol "UDP4" is not TCP4, TCP6 or UNKNOWN');
    expect(why('PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n')).toBe('version 1 header needs protocol, two addresses and two ports');
    expect(why(`PROXY TCP4 ${'1'.repeat(120)}`)).toBe('version 1 header longer than 107 bytes');
    expect(why('EHLO mx.example\r\n')).toBe('not a PROXY protocol header');
    expect(why('PRXY TCP4\r\n')).toBe('not a PROXY protocol header');
  });
  it('a header not complete yet asks for more', () => {
    expect(parseProxyHeader(v1('PROX'))).toEqual({ kind: 'more' });
    expect(parseProxyHeader(v1('PROXY TCP4 192.0.2.7 198.51.100.1 400'))).toEqual({ kind: 'more' });
  });
});

describe('version 2', () => {
  it('TCP over IPv4 and IPv6 (PROXY command) name the client; TLVs are skipped', () => {
    const h4 = proxyV2Header({ address: '192.0.2.7', port: 40000 }, { address: '198.51.100.1', port: 25 });
    expect(h4.length).toBe(28);
    expect(parseProxyHeader(Buffer.concat([h4, v1('EHLO x\r\n')]))).toEqual({ kind: 'header', version: 2, client: { address: '192.0.2.7', port: 40000 }, length: 28 });
    const h6 = proxyV2Header({ address: '2001:db8:0:0:1:0:0:7', port: 1 }, { address: '2001:db8::1', port: 25 }, { tlvs: Buffer.from([0x04, 0x00, 0x02, 0xab, 0xcd]) });
    expect(parseProxyHeader(h6)).toEqual({ kind: 'header', version: 2, client: { address: '2001:db8::1:0:0:7', port: 1 }, length: 16 + 36 + 5 });
  });
  it('LOCAL (the balancer\'s own health check) and an unspecified family carry no client', () => {
    expect(parseProxyHeader(proxyV2Header({ address: '192.0.2.7', port: 1 }, { address: '192.0.2.1', port: 25 }, { command: 'LOCAL' }))).toMatchObject({ kind: 'header', version: 2, client: null });
    expect(parseProxyHeader(Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21, 0x00, 0x00, 0x00])]))).toEqual({ kind: 'header', version: 2, client: null, length: 16 });
  });
  it('refuses other versions, commands and transports, short address blocks and oversized headers', () => {
    const with_ = (b12: number, b13: number, len: number) => {
      const h = Buffer.alloc(16 + Math.min(len, 64));
      PROXY_V2_SIGNATURE.copy(h);
      h[12] = b12; h[13] = b13; h.writeUInt16BE(len, 14);
      return (parseProxyHeader(h) as { why?: string }).why;
    };
    expect(with_(0x11, 0x11, 12)).toBe('version 2 signature with version 1');
    expect(with_(0x22, 0x11, 12)).toBe('version 2 command 2 is neither LOCAL nor PROXY');
    expect(with_(0x21, 0x12, 12)).toBe('version 2 family/transport 0x12 is not TCP over IPv4 or IPv6');
    expect(with_(0x21, 0x31, 12)).toBe('version 2 family/transport 0x31 is not TCP over IPv4 or IPv6');
    expect(with_(0x21, 0x11, 8)).toBe('version 2 TCP over IPv4 with fewer than 12 address bytes');
    expect(with_(0x21, 0x21, 12)).toBe('version 2 TCP over IPv6 with fewer than 36 address bytes');
    expect(with_(0x21, 0x11, PROXY_V2_MAX_BODY + 1)).toBe(`version 2 header of ${PROXY_V2_MAX_BODY + 1} bytes is above the ${PROXY_V2_MAX_BODY} this listener reads`);
    expect((parseProxyHeader(Buffer.from([0x0d, 0x0a, 0x0d, 0x0b])) as { why?: string }).why).toBe('not a PROXY protocol header');
  });
});

describe('properties', () => {
  const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((t) => t.join('.'));
  const port = fc.integer({ min: 0, max: 65535 });
  const header = fc.oneof(
    fc.tuple(ipv4, ipv4, port, port).map(([s, d, sp, dp]) => ({ bytes: v1(`PROXY TCP4 ${s} ${d} ${sp} ${dp}\r\n`), client: { address: s, port: sp } })),
    fc.tuple(ipv4, ipv4, port, port, fc.uint8Array({ maxLength: 40 })).map(([s, d, sp, dp, tlv]) => ({ bytes: proxyV2Header({ address: s, port: sp }, { address: d, port: dp }, { tlvs: Buffer.from(tlv) }), client: { address: s, port: sp } })),
  );

  it('every proper prefix of a valid header asks for more; the whole one (with SMTP after it) is read to its exact length', () => {
    fc.assert(fc.property(header, fc.uint8Array({ maxLength: 30 }), ({ bytes, client }, after) => {
      for (let n = 0; n < bytes.length; n++) expect(parseProxyHeader(bytes.subarray(0, n))).toEqual({ kind: 'more' });
      const r = parseProxyHeader(Buffer.concat([bytes, Buffer.from(after)]));
      expect(r).toMatchObject({ kind: 'header', client, length: bytes.length });
    }), { numRuns: 300, seed: 42 });
  });

  it('random bytes never throw, and a verdict of "header" always fits in what was read', () => {
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 60 }).map((b) => Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from(b)]))), (b) => {
      const buf = Buffer.from(b);
      const r = parseProxyHeader(buf);
      if (r.kind === 'header') expect(r.length).toBeLessThanOrEqual(buf.length);
    }), { numRuns: 2000, seed: 7 });
  });
});
