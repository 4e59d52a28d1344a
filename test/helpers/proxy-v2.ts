/**
 * Writes PROXY protocol version 2 headers as HAProxy's send-proxy-v2 does, for tests that play the load
 * balancer (test/smtp/proxy-header.test.ts, test/ops/proxy-protocol.test.ts).
 */
import { isIPv6 } from 'node:net';
import { PROXY_V2_SIGNATURE } from '../../src/smtp/proxy-header.js';
import { parseIPv6 } from '../../src/tags/address.js';

/** A version 2 header for a TCP client (what HAProxy's send-proxy-v2 writes). */
export function proxyV2Header(src: { address: string; port: number }, dst: { address: string; port: number }, opts: { tlvs?: Buffer; command?: 'PROXY' | 'LOCAL' } = {}): Buffer {
  const v6 = isIPv6(src.address);
  const addr = (a: string): Buffer => (v6 ? ipv6Bytes(a) : Buffer.from(a.split('.').map(Number)));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(src.port, 0);
  ports.writeUInt16BE(dst.port, 2);
  const body = Buffer.concat([addr(src.address), addr(dst.address), ports, opts.tlvs ?? Buffer.alloc(0)]);
  const head = Buffer.alloc(4);
  head[0] = opts.command === 'LOCAL' ? 0x20 : 0x21;
  head[1] = v6 ? 0x21 : 0x11;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, body]);
}

function ipv6Bytes(a: string): Buffer {
  const p = parseIPv6(a);
  if (!p) throw new Error(`not an IPv6 address: ${a}`);
  return Buffer.from(p.bytes);
}
