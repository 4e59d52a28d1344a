/**
 * Network ranges for relay permission and exemptions ("127.0.0.0/8", "::1/128", "192.0.2.7"), matched
 * with node's net.BlockList.
 *
 *   range   = address [ "/" bits ]     ; bits 0-32 for IPv4, 0-128 for IPv6; no bits = one address
 *
 * The config keeps the ranges as the text the admin wrote (validated with {@link cidrProblem}); a
 * {@link NetworkList} is built from that text where addresses are checked. An IPv4-mapped IPv6 client
 * address (::ffff:192.0.2.7, as node reports clients on a dual-stack socket) matches IPv4 ranges, and an
 * IPv4 client matches ::ffff:0:0/96-style ranges, both as BlockList does.
 */
import { BlockList, isIP } from 'node:net';
import { LRUCache } from 'lru-cache';

/**
 * Why `s` is not a range, or null when it is one.
 *
 * @example
 *   cidrProblem('10.0.0.0/8');   // null
 *   cidrProblem('10.0.0.0/33');  // '"10.0.0.0/33" has a prefix length outside 0-32'
 */
export function cidrProblem(s: string): string | null {
  const [addr, bitsText, extra] = s.split('/');
  const family = isIP(addr ?? '');
  if (extra !== undefined || family === 0) return `"${s}" is not an address or address/bits range`;
  const max = family === 4 ? 32 : 128;
  if (bitsText !== undefined && (!/^\d+$/.test(bitsText) || Number(bitsText) > max)) return `"${s}" has a prefix length outside 0-${max}`;
  return null;
}

/** Ranges to match client addresses against, built once from their text. */
export interface NetworkList {
  /** The ranges as written. */
  readonly texts: readonly string[];
  /** Is `ip` (as the socket reports it) inside any of the ranges? False for anything that is not an IP address. */
  has(ip: string): boolean;
}

/** Addresses whose answer a list remembers. */
const MEMO_MAX = 4096;

const familyName = (family: number): 'ipv4' | 'ipv6' => (family === 6 ? 'ipv6' : 'ipv4');

/**
 * One BlockList holding every range.
 *
 * @throws Error naming the first entry {@link cidrProblem} refuses (the config validates them first).
 * @example
 *   networkList(['127.0.0.0/8', '::1/128']).has('::ffff:127.0.0.1'); // true
 */
export function networkList(texts: readonly string[]): NetworkList {
  const list = new BlockList();
  for (const text of texts) {
    const problem = cidrProblem(text);
    if (problem !== null) throw new Error(problem);
    const [addr, bits] = text.split('/') as [string, string | undefined];
    const type = familyName(isIP(addr));
    if (bits === undefined) list.addAddress(addr, type);
    else list.addSubnet(addr, Number(bits), type);
  }
  const frozen = Object.freeze([...texts]);
  if (frozen.length === 0) return { texts: frozen, has: () => false }; // check() costs as much on an empty list
  // Answers per address, bounded: BlockList.check builds a SocketAddress each time (about 1 µs, one in a
  // hundred of the proxy's CPU per message), and the same few clients ask at every MAIL.
  const memo = new LRUCache<string, boolean>({ max: MEMO_MAX });
  const check = (ip: string): boolean => {
    const family = isIP(ip);
    if (family === 0) return false;
    try {
      return list.check(ip, familyName(family));
    } catch {
      return false; // an address node's parser takes but BlockList does not (e.g. an unknown zone id)
    }
  };
  return {
    texts: frozen,
    has(ip: string): boolean {
      if (typeof ip !== 'string') return false;
      let answer = memo.get(ip);
      if (answer === undefined) memo.set(ip, (answer = check(ip)));
      return answer;
    },
  };
}

const built = new WeakMap<readonly string[], NetworkList>();

const sameTexts = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((t, i) => t === b[i]);

/**
 * Does `ip` fall inside any of the ranges? A plain array (such as a Config list) is built into a
 * NetworkList once and kept for as long as the array lives (built again should its entries change).
 *
 * @example
 *   inNetworks('192.0.2.7', ['192.0.2.0/24']); // true
 */
export function inNetworks(ip: string, nets: readonly string[] | NetworkList): boolean {
  if (!Array.isArray(nets)) return (nets as NetworkList).has(ip);
  const texts = nets as readonly string[];
  let list = built.get(texts);
  if (!list || !sameTexts(list.texts, texts)) {
    list = networkList(texts);
    built.set(texts, list);
  }
  return list.has(ip);
}
