/**
 * Backscatterer.org lookups in "safe mode" (docs/architecture.md, "Inbound verdicts"): consulted only for bounces (`<>`) and mail from
 * `postmaster@`, never to refuse ordinary mail. Answers are cached honouring their DNS TTL; failures fail
 * open (the caller decides what to count and does not refuse on them).
 */
import { Resolver } from 'node:dns/promises';
import { isIPv4 } from 'node:net';
import { parseIPv6 } from '../tags/address.js';
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';

/** Options for {@link createDnsbl}. */
export interface DnsblOptions {
  /** DNSBL zone (default `ips.backscatterer.org`). */
  zone?: string;
  /** Resolvers such as `127.0.0.1:5353` or `[::1]:53`; the system resolver when absent. */
  servers?: string[];
  /** Upper bound for a whole lookup in ms (default 1500). */
  timeoutMs?: number;
  /** Most cached answers kept (default 10 000). */
  cacheMax?: number;
  /** How long "not listed" (NXDOMAIN / no data) is cached, in ms (default 300 000). */
  negativeTtlMs?: number;
  /** Cap on a positive answer's TTL, in ms (default one day). */
  maxTtlMs?: number;
  /** Answer "not listed" without asking for RFC 1918, link-local, CGNAT and ULA addresses (default false). */
  skipPrivate?: boolean;
  /** Time source for cache expiry. */
  clock: Clock;
}

/** A definite answer from the list (or the cache). */
export interface DnsblAnswer {
  listed: boolean;
  /** The A record that says "listed", e.g. `127.0.0.2`. */
  code?: string;
  /** The TXT listing reason, when the list gave one. */
  text?: string;
  /** True when served from the cache without a query. */
  cached: boolean;
  /** True when the address was not looked up because of `skipPrivate`. */
  skipped?: boolean;
}

/** No answer: the caller should fail open and count it. */
export interface DnsblError {
  error: 'timeout' | 'servfail' | 'bad-ip';
}

/** What {@link Dnsbl.lookup} resolves to: an answer, or an error to fail open on. */
export type DnsblResult = DnsblAnswer | DnsblError;

/** A DNSBL client made by {@link createDnsbl}. */
export interface Dnsbl {
  /** Looks an IPv4/IPv6 address up; never throws and never takes longer than `timeoutMs`. */
  lookup(ip: string): Promise<DnsblResult>;
  /** Safe mode: see {@link applies}. */
  applies(mailFrom: string): boolean;
  /** The DNS name queried for `ip`, or null for a malformed address. */
  queryName(ip: string): string | null;
  /** Number of cached answers. */
  readonly cacheSize: number;
  /** Cancels outstanding queries (they resolve as timeouts). */
  close(): void;
}

interface CachedAnswer {
  listed: boolean;
  code?: string;
  text?: string;
}

/**
 * Safe mode: true only when the envelope sender is the null sender (`''` or `<>`) or its local part is
 * `postmaster` (any case), so the list is never consulted for ordinary mail.
 */
export function applies(mailFrom: string): boolean {
  let s = mailFrom.trim();
  if (s.startsWith('<') && s.endsWith('>')) s = s.slice(1, -1).trim();
  if (s === '') return true;
  if (s.startsWith('@')) s = s.slice(s.indexOf(':') + 1); // obsolete source route "@a,@b:user@c"
  const at = s.lastIndexOf('@');
  let local = at < 0 ? s : s.slice(0, at);
  if (local.length >= 2 && local.startsWith('"') && local.endsWith('"')) {
    local = local.slice(1, -1).replace(/\\(.)/g, '$1');
  }
  return local.toLowerCase() === 'postmaster';
}

/** Normalises an address into IPv4 octets or IPv6 bytes; IPv4-mapped IPv6 becomes IPv4. */
function parseIp(raw: string): { v4: number[] } | { v6: number[] } | null {
  let s = raw.trim();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  if (/^ipv6:/i.test(s)) s = s.slice(5); // SMTP address literal
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  if (isIPv4(s)) return { v4: s.split('.').map(Number) };
  const b = parseIPv6(s)?.bytes;
  if (!b) return null;
  if (b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return { v4: b.slice(12) };
  return { v6: b };
}

function isPrivate(ip: { v4: number[] } | { v6: number[] }): boolean {
  if ('v4' in ip) {
    const [a = 0, b = 0] = ip.v4;
    return a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) ||
      (a === 169 && b === 254) || (a === 100 && b >= 64 && b <= 127);
  }
  const [a = 0, b = 0] = ip.v6;
  return (a & 0xfe) === 0xfc || (a === 0xfe && (b & 0xc0) === 0x80);
}

/**
 * The DNSBL query name for an address: reversed octets for IPv4 (`1.2.3.4` → `4.3.2.1.<zone>`), 32 reversed
 * nibbles for IPv6, IPv4-mapped IPv6 treated as IPv4. Null for anything that is not an IP address.
 */
export function dnsblQueryName(ip: string, zone = 'ips.backscatterer.org'): string | null {
  const p = parseIp(ip);
  if (!p) return null;
  const z = zone.replace(/^\.+|\.+$/g, '');
  if ('v4' in p) return `${[...p.v4].reverse().join('.')}.${z}`;
  const nibbles: string[] = [];
  for (let i = 15; i >= 0; i--) {
    const byte = p.v6[i] ?? 0;
    nibbles.push((byte & 0x0f).toString(16), (byte >> 4).toString(16));
  }
  return `${nibbles.join('.')}.${z}`;
}

function errCode(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : '';
}

/**
 * Makes a DNSBL client. Throws only on a malformed `servers` entry (a configuration error).
 *
 * @example
 *   const bl = createDnsbl({ clock: systemClock });
 *   if (bl.applies(session.mailFrom)) { const r = await bl.lookup(session.remoteAddress); ... }
 */
export function createDnsbl(opts: DnsblOptions): Dnsbl {
  const zone = opts.zone ?? 'ips.backscatterer.org';
  const timeoutMs = opts.timeoutMs ?? 1500;
  const negativeTtlMs = opts.negativeTtlMs ?? 300_000;
  const maxTtlMs = opts.maxTtlMs ?? 86_400_000;
  const { clock } = opts;
  const resolver = new Resolver({ timeout: Math.max(1, Math.ceil(timeoutMs)), tries: 1 });
  if (opts.servers?.length) resolver.setServers(opts.servers);
  // ttlResolution 0: read the clock on every check, so a fixed test clock moved forward takes effect at once.
  const cache = new LRUCache<string, CachedAnswer>({ max: opts.cacheMax ?? 10_000, perf: clock, ttlResolution: 0 });
  const inflight = new Map<string, Promise<DnsblResult>>();

  const store = (name: string, v: CachedAnswer, ttlMs: number, start: number): void => {
    const ttl = Math.min(ttlMs, maxTtlMs);
    if (ttl > 0) cache.set(name, v, { ttl, start }); // TTL 0 means "do not cache" in DNS
  };

  const query = (name: string): Promise<DnsblResult> =>
    new Promise<DnsblResult>((resolve) => {
      let done = false;
      let partial: DnsblAnswer | undefined; // listed, still waiting for the TXT reason
      const finish = (r: DnsblResult): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(r);
      };
      const timer = setTimeout(() => finish(partial ?? { error: 'timeout' }), timeoutMs);
      const start = clock.now();

      resolver.resolve4(name, { ttl: true }).then(
        async (records) => {
          const ttlMs = records.length ? Math.min(...records.map((r) => r.ttl)) * 1000 : negativeTtlMs;
          // Only 127.0.0.0/8 answers mean "listed"; anything else is a hijacking resolver or a mistake.
          const hit = records.find((r) => r.address.startsWith('127.'));
          if (!hit) {
            store(name, { listed: false }, ttlMs, start);
            finish({ listed: false, cached: false });
            return;
          }
          const base: CachedAnswer = { listed: true, code: hit.address };
          store(name, base, ttlMs, start);
          partial = { ...base, cached: false };
          try {
            const txt = await resolver.resolveTxt(name);
            const text = txt.map((chunks) => chunks.join('')).join(' ').trim();
            if (text) {
              store(name, { ...base, text }, ttlMs, start);
              partial = { ...partial, text };
            }
          } catch {
            // The reason is best effort; the A record alone decides.
          }
          finish(partial);
        },
        (e: unknown) => {
          const code = errCode(e);
          if (code === 'ENOTFOUND' || code === 'ENODATA') {
            store(name, { listed: false }, negativeTtlMs, start);
            finish({ listed: false, cached: false });
          } else if (code === 'ETIMEOUT' || code === 'ECANCELLED') {
            finish({ error: 'timeout' });
          } else {
            finish({ error: 'servfail' });
          }
        },
      );
    });

  return {
    applies,
    queryName: (ip) => dnsblQueryName(ip, zone),
    get cacheSize() {
      return cache.size;
    },
    close: () => resolver.cancel(),
    async lookup(ip: string): Promise<DnsblResult> {
      const parsed = parseIp(ip);
      const name = parsed ? dnsblQueryName(ip, zone) : null;
      if (!parsed || !name) return { error: 'bad-ip' };
      if (opts.skipPrivate && isPrivate(parsed)) return { listed: false, cached: false, skipped: true };
      const hit = cache.get(name);
      if (hit) return { ...hit, cached: true };
      let p = inflight.get(name);
      if (!p) {
        p = query(name).finally(() => inflight.delete(name));
        inflight.set(name, p);
      }
      const r = await p;
      return { ...r };
    },
  };
}
