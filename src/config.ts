/**
 * Configuration: ONE schema (valibot) from which the Config type, the embedded DEFAULTS and every
 * validation message come; parsed from `unknown` with every problem collected into one ConfigError (the
 * proxy refuses to start on any of them). docs/config.md describes the rules and the messages. Reading
 * the file and the BATV_PROXY_* variables, and hiding secrets for display, is src/config/load.ts.
 */
import os from 'node:os';
import * as v from 'valibot';
import { isValidDomain, sameDomain } from './tags/address.js';
import { BATV_DEFAULT_MAX_AGE_DAYS } from './tags/batv.js';
import { SRS_DEFAULTS } from './tags/srs.js';
import { cidrProblem } from './net/cidr.js';
import { flag, list, nextHop, oneOf, ruleCheck, section, text, textOrNull, whole, type Problem as Check } from './config/fields.js';
import { formatProblem, issuePath, unknownSettings, type Problem } from './config/problems.js';
import {
  dnsServerProblem, addressEntryProblem, frontProblem, proxyFromProblem, hostnameProblem, parseListen, parseNextHop, zoneProblem, type NextHop,
} from './config/text.js';

export { parseListen, parseNextHop, type NextHop };

const ourDomain: Check<string> = (d) => (isValidDomain(d) && !d.startsWith('[') ? null : `"${d}" is not a domain name`);
const anyDomain: Check<string> = (d) => (isValidDomain(d) ? null : `"${d}" is not a domain name`);
const listenAddress: Check<string> = (s) => { const r = parseListen(s); return typeof r === 'string' ? r : null; };
const address: Check<string> = (s) => (/^[^\s@<>]+@[^\s@<>]+$/.test(s) ? null : `"${s}" is not an address (write user@domain)`);
const isoDate: Check<string> = (s) => (Number.isNaN(Date.parse(s)) ? `"${s}" is not an ISO 8601 date` : null);
const headerName: Check<string> = (s) => (/^[!-9;-~]+$/.test(s) ? null : `"${s}" is not a header field name`);
const longToken: Check<string> = (s) => (s.length < 16 ? 'must be at least 16 characters (e.g. from "openssl rand -base64 32")' : null);
const redisUrl: Check<string> = (s) => {
  let u: URL | null = null;
  try { u = new URL(s); } catch { /* reported below */ }
  return u && (u.protocol === 'redis:' || u.protocol === 'rediss:') && u.hostname ? null : 'must be redis://host:port[/db] or rediss://host:port[/db]';
};

/** os.hostname() when it is a usable EHLO name (it is on most machines), else "localhost". */
function defaultHostname(): string {
  const h = os.hostname();
  return hostnameProblem(h) === null ? h : 'localhost';
}

/** The next-hop waits the client's idle timer must outlast, largest first (a tie names the first). */
const NEXT_HOP_WAITS = ['dataMs', 'commandMs', 'greetingMs', 'connectMs'] as const;

/** Every setting: its type, its default, its checks (docs/config.md lists them). */
export const Settings = v.object({
  /** Our own domains: their senders get BATV tags; their tagged recipients are checked inbound. */
  domains: v.optional(v.pipe(list(ourDomain), v.minLength(1, 'list at least one domain of ours')), ['example.com']),
  /** Name in our EHLO and Received: lines. */
  hostname: v.optional(text(hostnameProblem), defaultHostname()),
  /** Where RCPT TO:<postmaster> (no domain, RFC 5321 4.1.1.3) goes: postmaster@ the first of domains unless set. */
  postmaster: v.optional(textOrNull(address), null),
  srs: section({
    /** The forwarder domain for SRS addresses; null disables SRS (foreign senders pass unchanged). */
    domain: v.optional(textOrNull(anyDomain), 'srs.example.com'),
    maxAgeDays: v.optional(whole(1, 1000), SRS_DEFAULTS.maxAgeDays),
    separator: v.optional(oneOf(['=', '+', '-']), '='),
    hashLength: v.optional(whole(4, 27), 4),
    hashMin: v.optional(whole(1, 27), 4),
    alphabet: v.optional(oneOf(['base64', 'base64url']), 'base64'),
    alwaysRewrite: v.optional(flag(), false),
  }, {
    reads: ['hashMin', 'hashLength'],
    problem: (s) => (s.hashMin > s.hashLength ? { at: ['hashMin'], text: `${s.hashMin} is above srs.hashLength (${s.hashLength})` } : null),
  }),
  batv: section({ maxAgeDays: v.optional(whole(0, 100), BATV_DEFAULT_MAX_AGE_DAYS) }),
  keys: section({ dir: v.optional(text(), 'keys') }),
  outbound: section({
    listen: v.optional(text(listenAddress), '127.0.0.1:2525'),
    /** The next hop (smtp://host:port or smtps://host:port); null = write .eml files to captureDir. */
    relay: v.optional(nextHop(), null),
    captureDir: v.optional(text(), 'mail/outbox'),
    /** Client networks allowed to relay, as written ("127.0.0.0/8", "::1/128", "192.0.2.7"); see net/cidr.ts. */
    allowNetworks: v.optional(list(cidrProblem), ['127.0.0.0/8', '::1/128']),
    /** File of "user:hash" lines (scrypt or bcrypt); null = no AUTH offered. */
    usersFile: v.optional(textOrNull(), null),
    /** Offer AUTH without TLS (only for loopback tests). */
    allowInsecureAuth: v.optional(flag(), false),
    /** Sender addresses or domains never rewritten. */
    exemptSenders: v.optional(list(addressEntryProblem), []),
    /** Recipient addresses or domains (e.g. list servers) for which the sender is never rewritten. */
    exemptRecipients: v.optional(list(addressEntryProblem), []),
    /** A tag pushing the local part over 64 octets: sign anyway (default) or send unsigned. */
    overlong: v.optional(oneOf(['sign', 'skip']), 'sign'),
    /** Load balancers that send a PROXY protocol header, v1 or v2 (addresses or ranges; "*" for any). */
    proxyProtocolFrom: v.optional(list(proxyFromProblem), []),
    /** Front MTAs allowed to pass the real client on with XCLIENT (their IPs). */
    xclientFrom: v.optional(list(frontProblem), []),
  }),
  inbound: section({
    listen: v.optional(text(listenAddress), '127.0.0.1:2526'),
    mailbox: v.optional(nextHop(), null),
    captureDir: v.optional(text(), 'mail/inbox'),
    untaggedBounces: v.optional(oneOf(['reject', 'classify', 'tag', 'accept']), 'classify'),
    /** Until this instant, untagged-bounce refusals are only logged and counted ("would refuse"). */
    graceUntil: v.optional(textOrNull(isoDate), null),
    /** The header carrying our verdict; any copy arriving from outside is removed first. */
    verdictHeader: v.optional(text(headerName), 'X-BATV-Proxy'),
    proxyProtocolFrom: v.optional(list(proxyFromProblem), []),
    xclientFrom: v.optional(list(frontProblem), []),
    /** Backscatterer.org safe mode: looked up only for bounces (<> or postmaster@ senders). */
    dnsbl: section({
      mode: v.optional(oneOf(['off', 'reject']), 'off'),
      zone: v.optional(text(zoneProblem), 'ips.backscatterer.org'),
      /** Resolvers as dns.Resolver#setServers takes them; [] = the system's. */
      servers: v.optional(list(dnsServerProblem), []),
      timeoutMs: v.optional(whole(50, 60_000), 1500),
    }),
    limits: section({
      /** Refused bounces per client IP within refusedWindowSec before it is cooled off. */
      refusedPerClient: v.optional(whole(1, 1_000_000), 50),
      refusedWindowSec: v.optional(whole(1, 86_400), 600),
      /** How long a cooled-off client gets 421 4.7.0. */
      coolingOffSec: v.optional(whole(1, 86_400), 900),
      /** Accepted bounces per valid tag within tagWindowSec (a harvested tag cannot be replayed into a flood). */
      bouncesPerTag: v.optional(whole(1, 1_000_000), 20),
      tagWindowSec: v.optional(whole(1, 86_400 * 30), 3600),
      /** Entries kept per limiter (bounded memory). */
      maxTracked: v.optional(whole(100, 10_000_000), 100_000),
    }),
  }),
  tls: section({ key: v.optional(textOrNull(), null), cert: v.optional(textOrNull(), null) }, {
    reads: ['key', 'cert'],
    problem: (t) => ((t.key === null) !== (t.cert === null) ? { at: [], text: 'set both key and cert, or neither' } : null),
  }),
  relayTls: section({ require: v.optional(flag(), false), rejectUnauthorized: v.optional(flag(), true) }),
  relayAuth: v.optional(v.union([v.null(), v.object({ user: v.string(), pass: v.string() })], 'must be null or { "user": "...", "pass": "..." }'), null),
  limits: section({
    maxClients: v.optional(whole(1, 100_000), 500),
    /** Connections one client IP may hold at once on a listener (the others get 421 4.7.0). */
    maxClientsPerIp: v.optional(whole(1, 100_000), 20),
    maxMessageBytes: v.optional(whole(1024, 2 ** 40), 50 * 1024 * 1024),
    maxRecipients: v.optional(whole(1, 100_000), 1000),
    /**
     * A bare CR, a bare LF or a NUL in DATA (SMTP smuggling, docs/smuggling.md): "normalize" sends every
     * line end as CRLF and drops NUL; "reject" refuses the message with 550 5.5.2.
     */
    bareLineEnds: v.optional(oneOf(['normalize', 'reject']), 'normalize'),
    /** Clients whose messages are normalised even when bareLineEnds is "reject" (ranges as in allowNetworks). */
    bareLineEndsExempt: v.optional(list(cidrProblem), []),
    /** Bytes per second a client must average in DATA once timeouts.dataGraceMs has passed; 0 = no minimum. */
    minDataRate: v.optional(whole(0, 2 ** 30), 1024),
  }),
  timeouts: section({
    connectMs: v.optional(whole(100, 600_000), 10_000),
    greetingMs: v.optional(whole(100, 600_000), 30_000),
    commandMs: v.optional(whole(100, 3_600_000), 60_000),
    dataMs: v.optional(whole(100, 3_600_000), 600_000),
    /** Idle client socket; kept above every next-hop wait so the next hop's answer always comes first. */
    clientIdleMs: v.optional(whole(100, 3_600_000), 660_000),
    /** Longest a client may take from the 354 to its final dot, however steadily it sends. */
    clientDataMs: v.optional(whole(1000, 86_400_000), 3_600_000),
    /** How long a client may send DATA below limits.minDataRate (slow starts, big honest messages). */
    dataGraceMs: v.optional(whole(100, 86_400_000), 60_000),
  }, {
    reads: ['dataGraceMs', 'clientDataMs'],
    problem: (t) => (t.dataGraceMs >= t.clientDataMs ? { at: ['dataGraceMs'], text: `${t.dataGraceMs} must be below timeouts.clientDataMs (${t.clientDataMs})` } : null),
  }, {
    // The client's idle timer must outlast every next-hop wait, so the next hop's answer (or our 4xx for
    // its silence) always reaches the client before the client is dropped. The longest wait is named.
    reads: ['clientIdleMs'],
    problem: (t, valid) => {
      const idle = t.clientIdleMs;
      const longest = NEXT_HOP_WAITS.filter(valid).reduce<(typeof NEXT_HOP_WAITS)[number] | null>((a, k) => (t[k] >= idle && (a === null || t[k] > t[a]) ? k : a), null);
      return longest === null ? null : { at: ['clientIdleMs'], text: `${idle} must be above timeouts.${longest} (${t[longest]}) so the next hop's answer reaches the client first` };
    },
  }),
  metrics: section({
    /** The HTTP listener for /metrics, /healthz, /readyz and the status page; null = none. */
    listen: v.optional(textOrNull(listenAddress), '127.0.0.1:9425'),
    /** A bearer token every path but /healthz and /readyz requires (also accepted as a basic-auth password). */
    token: v.optional(textOrNull(longToken, { secret: true }), null),
    /** A file holding that token (first line), instead of writing it into the config. */
    tokenFile: v.optional(textOrNull(), null),
    /** A "user:hash" file (as outbound.usersFile) for basic auth on every path but /healthz and /readyz. */
    usersFile: v.optional(textOrNull(), null),
  }, {
    reads: ['token', 'tokenFile'],
    problem: (m) => (m.token !== null && m.tokenFile !== null ? { at: [], text: 'set token or tokenFile, not both' } : null),
  }),
  log: section({ level: v.optional(oneOf(['debug', 'info', 'warn', 'error', 'silent']), 'info') }),
  /** Limits shared between replicas (issue 12). */
  state: section({
    /** redis://[user:pass@]host:port[/db] or rediss:// (TLS); null = each process keeps its own limits. */
    redis: v.optional(textOrNull(redisUrl, { secret: true }), null),
    /** A file holding the Redis password (first line), instead of writing it into the URL. */
    passwordFile: v.optional(textOrNull(), null),
    /** Prefix of every key the proxy writes. */
    prefix: v.optional(text(), 'batv:'),
    /** How long a limit check waits for Redis before answering from local limits. */
    timeoutMs: v.optional(whole(1, 10_000), 5),
  }, {
    reads: ['redis', 'passwordFile'],
    problem: (s) => (s.redis !== null && s.passwordFile !== null && new URL(s.redis).password
      ? { at: [], text: 'give the Redis password in state.redis or in state.passwordFile, not both' } : null),
  }),
}, 'must be an object of settings');

type SettingsOut = v.InferOutput<typeof Settings>;

/** The whole config: the settings, the rules across sections, and postmaster's default filled in. */
const ConfigSchema = v.pipe(
  Settings,
  ruleCheck<SettingsOut>({
    reads: ['domains', 'srs.domain'],
    problem: (c) => {
      const srs = c.srs.domain;
      return srs !== null && c.domains.some((d) => sameDomain(d, srs))
        ? { at: ['srs', 'domain'], text: `"${srs}" is one of our domains; SRS needs a domain of its own (e.g. srs.${srs})` } : null;
    },
  }),
  ruleCheck<SettingsOut>({
    reads: ['outbound.listen', 'inbound.listen'],
    problem: (c) => (c.outbound.listen === c.inbound.listen && !c.inbound.listen.endsWith(':0')
      ? { at: ['inbound', 'listen'], text: `"${c.inbound.listen}" is also outbound.listen` } : null),
  }),
  v.transform((c) => ({ ...c, postmaster: c.postmaster ?? `postmaster@${c.domains[0]!}` })),
);

type DeepReadonly<T> = T extends readonly (infer U)[] ? readonly DeepReadonly<U>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;

/** The parsed configuration (see the schema above for what each setting means). */
export type Config = DeepReadonly<v.InferOutput<typeof ConfigSchema>>;
export type UntaggedBounces = Config['inbound']['untaggedBounces'];

function deepFreeze<T>(x: T): T {
  if (typeof x === 'object' && x !== null) for (const value of Object.values(x)) deepFreeze(value);
  return Object.freeze(x);
}

/** Settings as a file writes them, every one present (the type of DEFAULTS). */
type Written<T> = T extends readonly (infer U)[] ? readonly Written<U>[] : T extends object ? { readonly [K in keyof T]-?: Written<Exclude<T[K], undefined>> } : T;

/**
 * The embedded defaults, read from the schema (valibot's getDefaults; its static type does not look into
 * sections with rules, hence the cast): with no config file at all the proxy starts on loopback and
 * captures mail.
 */
export const DEFAULTS = deepFreeze(v.getDefaults(Settings)) as unknown as Written<v.InferInput<typeof Settings>>;

/** Every problem in a configuration, one per line. */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[], source = 'configuration') {
    super(`Invalid ${source}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export type Obj = Record<string, unknown>;
export const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x);

/** Deep merge of plain objects (arrays and scalars replace). */
export function merge(base: unknown, over: unknown): unknown {
  if (!isObj(base) || !isObj(over)) return over === undefined ? base : over;
  const out: Obj = { ...base };
  // defineProperty: a "__proto__" key in a file stays a (refused, unknown) setting instead of a prototype.
  for (const [k, x] of Object.entries(over)) Object.defineProperty(out, k, { value: merge(base[k], x), enumerable: true, writable: true, configurable: true });
  return out;
}

/** Validates input (merged over DEFAULTS); `names` maps paths set from the environment to their variables. */
export function validate(input: unknown, names?: ReadonlyMap<string, string>): { config: Config | null; problems: string[] } {
  const found: Problem[] = unknownSettings(input, Settings);
  const result = v.safeParse(ConfigSchema, merge(DEFAULTS, input));
  if (!result.success) found.push(...result.issues.map((i) => ({ path: issuePath(i), text: i.message })));
  return { config: found.length === 0 && result.success ? (result.output as Config) : null, problems: found.map((p) => formatProblem(p, names)) };
}

/**
 * Turns raw input (merged over DEFAULTS) into a Config, or throws one ConfigError listing every wrong
 * field and why.
 */
export function parseConfig(input: unknown): Config {
  const { config, problems } = validate(input);
  if (config === null) throw new ConfigError(problems);
  return config;
}
