/**
 * The config's textual values checked one at a time: listen addresses, next-hop URLs, our EHLO name, DNS
 * names and resolvers, exemption entries. Each function returns what is wrong (a phrase that follows the
 * setting's name) or the parsed value; pure, no I/O.
 */
import { isIP, isIPv4, isIPv6 } from 'node:net';
import { isValidDomain, parseMailbox } from '../tags/address.js';
import { cidrProblem } from '../net/cidr.js';

export interface NextHop {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** smtps:// (implicit TLS) */
  readonly secure: boolean;
}

/** Parses a next-hop URL: smtp://host[:port] (default 25) or smtps://host[:port] (default 465). */
export function parseNextHop(url: string): NextHop | string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `"${url}" is not a URL; write smtp://host:port`;
  }
  if (u.protocol !== 'smtp:' && u.protocol !== 'smtps:') return `"${url}" must start with smtp:// or smtps://`;
  if (!u.hostname) return `"${url}" has no host`;
  if (u.username || u.password) {
    return `${u.protocol}//${u.host}: a user or password in the URL is not used (and would be logged); set relayAuth instead`;
  }
  const secure = u.protocol === 'smtps:';
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { url, host, port: u.port ? Number(u.port) : secure ? 465 : 25, secure };
}

/** "host:port" / "[v6]:port" → parts; a string describing the problem otherwise. */
export function parseListen(s: string): { host: string; port: number } | string {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) return `"${s}" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525`;
  return { host: (m[1] ?? m[2])!, port };
}

/** A quoted value for a message, cut short when long (a setting can hold a whole file by mistake). */
export const quote = (s: string): string => JSON.stringify(s.length > 60 ? `${s.slice(0, 57)}...` : s);

const LDH_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/;

/**
 * RFC 1035 §2.3.1 / RFC 5321 §4.1.2 host names: letters, digits and hyphens in dot-separated labels of
 * at most 63 characters, at most 253 in all, no trailing dot. Null when `s` is one.
 */
function dnsNameProblem(s: string, what: string): string | null {
  if (s.length > 253) return `${quote(s)} is longer than 253 characters`;
  const labels = s.split('.');
  if (labels.some((l) => l.length > 63)) return `${quote(s)} has a label longer than 63 characters`;
  if (labels.every((l) => LDH_LABEL.test(l))) return null;
  return `${quote(s)} is not ${what}`;
}

/**
 * Our name in EHLO and Received: lines (RFC 5321 §4.1.1.1): a domain name, or an address literal
 * `[192.0.2.1]` / `[IPv6:2001:db8::1]`.
 *
 * @example
 *   hostnameProblem('mx1.example.com'); // null
 *   hostnameProblem('192.0.2.1');       // '"192.0.2.1" is an IP address; write it as an address literal, [192.0.2.1]'
 */
export function hostnameProblem(s: string): string | null {
  const lit = /^\[(.*)\]$/.exec(s);
  if (lit) {
    const inner = lit[1]!;
    if (isIPv4(inner)) return null;
    if (/^IPv6:/i.test(inner) && isIPv6(inner.slice(5)) && !inner.includes('%')) return null;
    return `${quote(s)} is not an address literal (write [192.0.2.1] or [IPv6:2001:db8::1])`;
  }
  if (isIPv4(s)) return `${quote(s)} is an IP address; write it as an address literal, [${s}]`;
  if (isIPv6(s)) return `${quote(s)} is an IP address; write it as an address literal, [IPv6:${s}]`;
  return dnsNameProblem(s, 'a domain name (letters, digits, hyphens and dots, e.g. mx1.example.com) or an address literal ([192.0.2.1])');
}

/** A DNS zone such as inbound.dnsbl.zone: a domain name (letters, digits, hyphens and dots). */
export function zoneProblem(s: string): string | null {
  return dnsNameProblem(s, 'a domain name');
}

/**
 * A resolver for inbound.dnsbl.servers in the forms node's dns.Resolver#setServers takes: an IP address,
 * optionally with a port (192.0.2.53, 192.0.2.53:5353, 2001:db8::53, [2001:db8::53], [2001:db8::53]:53).
 * setServers wraps ports above 65535 and aborts the process on port 0, so the port is checked here.
 */
export function dnsServerProblem(s: string): string | null {
  const m = /^(?:\[([^\]]*)\]|(\d+\.\d+\.\d+\.\d+))(?::(\d+))?$/.exec(s);
  const addr = m ? (m[1] ?? m[2])! : s;
  const family = m ? (m[1] !== undefined ? (isIPv6(addr) ? 6 : 0) : (isIPv4(addr) ? 4 : 0)) : (isIPv6(s) ? 6 : 0);
  if (family === 0) return `${quote(s)} is not an IP address, optionally with a port (e.g. 192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)`;
  const port = m?.[3];
  if (port !== undefined && !(Number(port) >= 1 && Number(port) <= 65535)) return `${quote(s)} has a port outside 1-65535`;
  return null;
}

/**
 * An entry of an address list (outbound.exemptSenders / exemptRecipients, a user's senders in the users
 * file): a whole address (local@domain, matched exactly but for case) or a domain ("example.com" or
 * "@example.com", matching every address in it); see policy/sign.ts matchesEntry.
 */
export function addressEntryProblem(s: string): string | null {
  if (s.startsWith('@') ? isValidDomain(s.slice(1)) : s.includes('@') ? parseMailbox(s).ok : isValidDomain(s)) return null;
  return `${quote(s)} is neither an address (local@domain) nor a domain (example.com or @example.com)`;
}

/** An IP address of a trusted front MTA (XCLIENT), or "*" for any. */
export function frontProblem(s: string): string | null {
  return s === '*' || isIP(s) !== 0 ? null : `"${s}" is not an IP address (or "*")`;
}

/** A load balancer allowed to send the PROXY header: an address, an address/bits range, or "*" for any. */
export function proxyFromProblem(s: string): string | null {
  return s === '*' || cidrProblem(s) === null ? null : `"${s}" is not an IP address, an address/bits range or "*"`;
}
