/**
 * Network ranges for relay permission ("127.0.0.0/8", "::1/128", "192.0.2.7"). IPv4-mapped IPv6
 * client addresses (::ffff:192.0.2.7, as Node reports them on dual-stack sockets) match IPv4 ranges.
 */
import { isIP } from 'node:net';

export interface Cidr {
  readonly text: string;
  readonly family: 4 | 6;
  readonly bits: number;
  /** Address as a 128-bit (v6) or 32-bit (v4) big integer. */
  readonly base: bigint;
}

function toBig(ip: string, family: 4 | 6): bigint {
  if (family === 4) return ip.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  let parts = ip;
  let tail: bigint | null = null;
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(ip);
  if (v4) { parts = v4[1]! + '0:0'; tail = toBig(v4[2]!, 4); }
  const [head, rest] = parts.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const r = rest !== undefined && rest !== '' ? rest.split(':') : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - r.length).fill('0'), ...r];
  let n = groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
  if (tail !== null) n = (n & ~0xffffffffn) | tail;
  return n;
}

/** Parses "addr/bits" or a bare address; a string saying what is wrong otherwise. */
export function parseCidr(s: string): Cidr | string {
  const [addr, bitsText, extra] = s.split('/');
  const family = isIP(addr ?? '');
  if (extra !== undefined || (family !== 4 && family !== 6)) return `"${s}" is not an address or address/bits range`;
  const max = family === 4 ? 32 : 128;
  const bits = bitsText === undefined ? max : Number(bitsText);
  if (!/^\d+$/.test(bitsText ?? String(max)) || bits > max) return `"${s}" has a prefix length outside 0-${max}`;
  const width = BigInt(max);
  const mask = bits === 0 ? 0n : ((1n << BigInt(bits)) - 1n) << (width - BigInt(bits));
  return { text: s, family, bits, base: toBig(addr!, family) & mask };
}

/** Does `ip` (as reported by the socket) fall inside any of the ranges? */
export function inNetworks(ip: string, nets: readonly Cidr[]): boolean {
  let addr = ip;
  let family = isIP(addr);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  if (mapped) { addr = mapped[1]!; family = 4; }
  if (family !== 4 && family !== 6) return false;
  const n = toBig(addr, family);
  return nets.some((c) => {
    if (c.family !== family) return false;
    const width = BigInt(family === 4 ? 32 : 128);
    const mask = c.bits === 0 ? 0n : ((1n << BigInt(c.bits)) - 1n) << (width - BigInt(c.bits));
    return (n & mask) === c.base;
  });
}

export interface NetworkList {
  readonly texts: readonly string[];
  has(ip: string): boolean;
}

/** A list of ranges to match client addresses against. */
export function networkList(nets: readonly Cidr[]): NetworkList {
  return { texts: nets.map((n) => n.text), has: (ip) => inNetworks(ip, nets) };
}
