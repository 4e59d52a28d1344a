/**
 * Configuration: one schema, defaults beside it, parsed from `unknown` into a typed Config with every
 * problem collected into one ConfigError (the proxy refuses to start on any of them).
 *
 * Sources, later wins: embedded defaults < the JSON/YAML file < BATV_PROXY_* environment variables.
 * An environment variable names a path with "__" between levels, e.g.
 *   BATV_PROXY_OUTBOUND__RELAY=smtp://mx.internal:25
 *   BATV_PROXY_DOMAINS=example.com,example.org         (lists are comma-separated)
 *   BATV_PROXY_INBOUND__UNTAGGED_BOUNCES=classify       (snake_case maps to camelCase)
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import { isIP } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { isValidDomain, sameDomain } from './tags/address.js';
import { parseCidr, type Cidr } from './net/cidr.js';

export type UntaggedBounces = 'reject' | 'classify' | 'tag' | 'accept';

export interface NextHop {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** smtps:// (implicit TLS) */
  readonly secure: boolean;
}

export interface Config {
  /** Our own domains: their senders get BATV tags; their tagged recipients are checked inbound. */
  readonly domains: readonly string[];
  /** Name in our EHLO and Received: lines. */
  readonly hostname: string;
  /** Where RCPT TO:<postmaster> (no domain, RFC 5321 4.1.1.3) goes: postmaster@ the first of domains unless set. */
  readonly postmaster: string;
  readonly srs: {
    /** The forwarder domain for SRS addresses; null disables SRS (foreign senders pass unchanged). */
    readonly domain: string | null;
    readonly maxAgeDays: number;
    readonly separator: '=' | '+' | '-';
    readonly hashLength: number;
    readonly hashMin: number;
    readonly alphabet: 'base64' | 'base64url';
    readonly alwaysRewrite: boolean;
  };
  readonly batv: { readonly maxAgeDays: number };
  readonly keys: { readonly dir: string };
  readonly outbound: {
    readonly listen: string;
    /** The next hop (smtp://host:port or smtps://host:port); null = write .eml files to captureDir. */
    readonly relay: NextHop | null;
    readonly captureDir: string;
    readonly allowNetworks: readonly Cidr[];
    /** File of "user:hash" lines (scrypt or bcrypt); null = no AUTH offered. */
    readonly usersFile: string | null;
    /** Offer AUTH without TLS (only for loopback tests). */
    readonly allowInsecureAuth: boolean;
    /** Sender addresses or domains never rewritten. */
    readonly exemptSenders: readonly string[];
    /** Recipient addresses or domains (e.g. list servers) for which the sender is never rewritten. */
    readonly exemptRecipients: readonly string[];
    /** A tag pushing the local part over 64 octets: sign anyway (default) or send unsigned. */
    readonly overlong: 'sign' | 'skip';
    /** Load balancers allowed to send a PROXY protocol header (their IPs; "*" for any). */
    readonly proxyProtocolFrom: readonly string[];
    /** Front MTAs allowed to pass the real client on with XCLIENT (their IPs). */
    readonly xclientFrom: readonly string[];
  };
  readonly inbound: {
    readonly listen: string;
    readonly mailbox: NextHop | null;
    readonly captureDir: string;
    readonly untaggedBounces: UntaggedBounces;
    /** Until this instant, untagged-bounce refusals are only logged and counted ("would refuse"). */
    readonly graceUntil: string | null;
    /** The header carrying our verdict; any copy arriving from outside is removed first. */
    readonly verdictHeader: string;
    readonly proxyProtocolFrom: readonly string[];
    readonly xclientFrom: readonly string[];
    /** Backscatterer.org safe mode: looked up only for bounces (<> or postmaster@ senders). */
    readonly dnsbl: { readonly mode: 'off' | 'reject'; readonly zone: string; readonly servers: readonly string[]; readonly timeoutMs: number };
    readonly limits: {
      /** Refused bounces per client IP within refusedWindowSec before it is cooled off. */
      readonly refusedPerClient: number;
      readonly refusedWindowSec: number;
      /** How long a cooled-off client gets 421 4.7.0. */
      readonly coolingOffSec: number;
      /** Accepted bounces per valid tag within tagWindowSec (a harvested tag cannot be replayed into a flood). */
      readonly bouncesPerTag: number;
      readonly tagWindowSec: number;
      /** Entries kept per limiter (bounded memory). */
      readonly maxTracked: number;
    };
  };
  readonly tls: { readonly key: string | null; readonly cert: string | null };
  readonly relayTls: { readonly require: boolean; readonly rejectUnauthorized: boolean };
  readonly relayAuth: { readonly user: string; readonly pass: string } | null;
  readonly limits: {
    readonly maxClients: number;
    /** Connections one client IP may hold at once on a listener (the others get 421 4.7.0). */
    readonly maxClientsPerIp: number;
    readonly maxMessageBytes: number;
    readonly maxRecipients: number;
    /**
     * A bare CR, a bare LF or a NUL in DATA (SMTP smuggling, docs/smuggling.md): "normalize" sends every
     * line end as CRLF and drops NUL; "reject" refuses the message with 550 5.5.2.
     */
    readonly bareLineEnds: 'normalize' | 'reject';
    /** Clients whose messages are normalised even when bareLineEnds is "reject". */
    readonly bareLineEndsExempt: readonly Cidr[];
    /** Bytes per second a client must average in DATA once timeouts.dataGraceMs has passed; 0 = no minimum. */
    readonly minDataRate: number;
  };
  readonly timeouts: {
    readonly connectMs: number;
    readonly greetingMs: number;
    readonly commandMs: number;
    readonly dataMs: number;
    /** Idle client socket; kept above the next-hop budget so the next hop's answer always comes first. */
    readonly clientIdleMs: number;
    /** Longest a client may take from the 354 to its final dot, however steadily it sends. */
    readonly clientDataMs: number;
    /** How long a client may send DATA below limits.minDataRate (slow starts, big honest messages). */
    readonly dataGraceMs: number;
  };
  readonly metrics: {
    /** The HTTP listener for /metrics, /healthz, /readyz and the status page; null = none. */
    readonly listen: string | null;
    /** A bearer token every path but /healthz and /readyz requires (also accepted as a basic-auth password). */
    readonly token: string | null;
    /** A file holding that token (first line), instead of writing it into the config. */
    readonly tokenFile: string | null;
    /** A "user:hash" file (as outbound.usersFile) for basic auth on every path but /healthz and /readyz. */
    readonly usersFile: string | null;
  };
  readonly log: { readonly level: 'debug' | 'info' | 'warn' | 'error' | 'silent' };
  /** Limits shared between replicas (issue 12). */
  readonly state: {
    /** redis://[user:pass@]host:port[/db] or rediss:// (TLS); null = each process keeps its own limits. */
    readonly redis: string | null;
    /** A file holding the Redis password (first line), instead of writing it into the URL. */
    readonly passwordFile: string | null;
    /** Prefix of every key the proxy writes. */
    readonly prefix: string;
    /** How long a limit check waits for Redis before answering from local limits. */
    readonly timeoutMs: number;
  };
}

/** The embedded defaults: with no config file at all the proxy starts on loopback and captures mail. */
export const DEFAULTS = {
  domains: ['example.com'],
  hostname: os.hostname(),
  postmaster: null,
  srs: { domain: 'srs.example.com', maxAgeDays: 21, separator: '=', hashLength: 4, hashMin: 4, alphabet: 'base64', alwaysRewrite: false },
  batv: { maxAgeDays: 7 },
  keys: { dir: 'keys' },
  outbound: {
    listen: '127.0.0.1:2525', relay: null, captureDir: 'mail/outbox', allowNetworks: ['127.0.0.0/8', '::1/128'],
    usersFile: null, allowInsecureAuth: false, exemptSenders: [], exemptRecipients: [], overlong: 'sign',
    proxyProtocolFrom: [], xclientFrom: [],
  },
  inbound: {
    listen: '127.0.0.1:2526', mailbox: null, captureDir: 'mail/inbox', untaggedBounces: 'classify', graceUntil: null,
    verdictHeader: 'X-BATV-Proxy',
    proxyProtocolFrom: [], xclientFrom: [],
    dnsbl: { mode: 'off', zone: 'ips.backscatterer.org', servers: [], timeoutMs: 1500 },
    limits: { refusedPerClient: 50, refusedWindowSec: 600, coolingOffSec: 900, bouncesPerTag: 20, tagWindowSec: 3600, maxTracked: 100_000 },
  },
  tls: { key: null, cert: null },
  relayTls: { require: false, rejectUnauthorized: true },
  relayAuth: null,
  limits: {
    maxClients: 500, maxClientsPerIp: 20, maxMessageBytes: 50 * 1024 * 1024, maxRecipients: 1000,
    bareLineEnds: 'normalize', bareLineEndsExempt: [], minDataRate: 1024,
  },
  timeouts: { connectMs: 10_000, greetingMs: 30_000, commandMs: 60_000, dataMs: 600_000, clientIdleMs: 660_000, clientDataMs: 3_600_000, dataGraceMs: 60_000 },
  metrics: { listen: '127.0.0.1:9425', token: null, tokenFile: null, usersFile: null },
  log: { level: 'info' },
  state: { redis: null, passwordFile: null, prefix: 'batv:', timeoutMs: 5 },
} as const;

/** Every problem in a configuration, one per line. */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[], source = 'configuration') {
    super(`Invalid ${source}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deep merge of plain objects (arrays and scalars replace). */
export function merge(base: unknown, over: unknown): unknown {
  if (!isObj(base) || !isObj(over)) return over === undefined ? base : over;
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v);
  return out;
}

/** Settings in `input` that the schema does not have, at any depth (a typo is never silently ignored). */
function unknownSettings(input: unknown, schema: unknown, prefix: string): string[] {
  if (!isObj(input) || !isObj(schema)) return [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(input)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (!(k in schema)) out.push(`${path}: unknown setting`);
    else if (k === 'relayAuth' && isObj(v)) out.push(...unknownSettings(v, { user: '', pass: '' }, path));
    else out.push(...unknownSettings(v, schema[k], path));
  }
  return out;
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

/**
 * Turns raw input (already merged over DEFAULTS) into a Config, or throws one ConfigError listing
 * every wrong field and why.
 */
export function parseConfig(input: unknown): Config {
  const p: string[] = [];
  const raw = merge(DEFAULTS, input) as Obj;
  p.push(...unknownSettings(input, DEFAULTS, ''));

  const get = (path: string): unknown => path.split('.').reduce<unknown>((o, k) => (isObj(o) ? o[k] : undefined), raw);
  const str = (path: string, nullable = false): string | null => {
    const v = get(path);
    if (v === null && nullable) return null;
    if (typeof v !== 'string' || v === '') { p.push(`${path}: must be a non-empty string${nullable ? ' or null' : ''}`); return nullable ? null : ''; }
    return v;
  };
  const int = (path: string, min: number, max: number): number => {
    const v = get(path);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) { p.push(`${path}: must be a whole number from ${min} to ${max}`); return min; }
    return v;
  };
  const bool = (path: string): boolean => {
    const v = get(path);
    if (typeof v !== 'boolean') { p.push(`${path}: must be true or false`); return false; }
    return v;
  };
  const oneOf = <T extends string>(path: string, values: readonly T[]): T => {
    const v = get(path);
    if (!values.includes(v as T)) { p.push(`${path}: must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`); return values[0]!; }
    return v as T;
  };
  const strList = (path: string): string[] => {
    const v = get(path);
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x !== '')) { p.push(`${path}: must be a list of non-empty strings`); return []; }
    return v as string[];
  };
  const ipList = (path: string): string[] => {
    const l = strList(path);
    for (const ip of l) if (ip !== '*' && isIP(ip) === 0) p.push(`${path}: "${ip}" is not an IP address (or "*")`);
    return l;
  };
  const listen = (path: string): string => {
    const s = str(path) ?? '';
    const r = parseListen(s);
    if (typeof r === 'string') p.push(`${path}: ${r}`);
    return s;
  };
  const hop = (path: string): NextHop | null => {
    const s = str(path, true);
    if (s === null) return null;
    const r = parseNextHop(s);
    if (typeof r === 'string') { p.push(`${path}: ${r}`); return null; }
    return r;
  };

  const domains = strList('domains');
  if (domains.length === 0 && Array.isArray(get('domains'))) p.push('domains: list at least one domain of ours');
  for (const d of domains) if (!isValidDomain(d) || d.startsWith('[')) p.push(`domains: "${d}" is not a domain name`);
  const srsDomain = str('srs.domain', true);
  if (srsDomain !== null && !isValidDomain(srsDomain)) p.push(`srs.domain: "${srsDomain}" is not a domain name`);
  if (srsDomain !== null && domains.some((d) => sameDomain(d, srsDomain))) {
    p.push(`srs.domain: "${srsDomain}" is one of our domains; SRS needs a domain of its own (e.g. srs.${srsDomain})`);
  }
  const hashLength = int('srs.hashLength', 4, 27);
  const hashMin = int('srs.hashMin', 1, 27);
  if (hashMin > hashLength) p.push(`srs.hashMin: ${hashMin} is above srs.hashLength (${hashLength})`);

  const cidrs = (path: string): Cidr[] => strList(path).flatMap((s) => {
    const c = parseCidr(s);
    if (typeof c === 'string') { p.push(`${path}: ${c}`); return []; }
    return [c];
  });
  const allowNetworks = cidrs('outbound.allowNetworks');
  const tlsKey = str('tls.key', true);
  const tlsCert = str('tls.cert', true);
  if ((tlsKey === null) !== (tlsCert === null)) p.push('tls: set both key and cert, or neither');
  const relayAuthRaw = get('relayAuth');
  let relayAuth: Config['relayAuth'] = null;
  if (relayAuthRaw !== null) {
    if (!isObj(relayAuthRaw) || typeof relayAuthRaw.user !== 'string' || typeof relayAuthRaw.pass !== 'string') {
      p.push('relayAuth: must be null or { "user": "...", "pass": "..." }');
    } else relayAuth = { user: relayAuthRaw.user, pass: relayAuthRaw.pass };
  }
  const graceUntil = str('inbound.graceUntil', true);
  if (graceUntil !== null && Number.isNaN(Date.parse(graceUntil))) p.push(`inbound.graceUntil: "${graceUntil}" is not an ISO 8601 date`);
  const verdictHeader = str('inbound.verdictHeader') ?? '';
  if (!/^[!-9;-~]+$/.test(verdictHeader)) p.push(`inbound.verdictHeader: "${verdictHeader}" is not a header field name`);

  const timeouts = {
    connectMs: int('timeouts.connectMs', 100, 600_000),
    greetingMs: int('timeouts.greetingMs', 100, 600_000),
    commandMs: int('timeouts.commandMs', 100, 3_600_000),
    dataMs: int('timeouts.dataMs', 100, 3_600_000),
    clientIdleMs: int('timeouts.clientIdleMs', 100, 3_600_000),
    clientDataMs: int('timeouts.clientDataMs', 1000, 86_400_000),
    dataGraceMs: int('timeouts.dataGraceMs', 100, 86_400_000),
  };
  if (timeouts.dataGraceMs >= timeouts.clientDataMs) {
    p.push(`timeouts.dataGraceMs: ${timeouts.dataGraceMs} must be below timeouts.clientDataMs (${timeouts.clientDataMs})`);
  }
  if (timeouts.clientIdleMs <= timeouts.dataMs) {
    p.push(`timeouts.clientIdleMs: ${timeouts.clientIdleMs} must be above timeouts.dataMs (${timeouts.dataMs}) so the next hop's answer reaches the client first`);
  }
  const metricsListen = str('metrics.listen', true);
  if (metricsListen !== null && typeof parseListen(metricsListen) === 'string') p.push(`metrics.listen: ${parseListen(metricsListen) as string}`);
  const metricsToken = str('metrics.token', true);
  if (metricsToken !== null && metricsToken.length < 16) p.push('metrics.token: must be at least 16 characters (e.g. from "openssl rand -base64 32")');
  const metricsTokenFile = str('metrics.tokenFile', true);
  if (metricsToken !== null && metricsTokenFile !== null) p.push('metrics: set token or tokenFile, not both');
  const metricsUsersFile = str('metrics.usersFile', true);

  const stateRedis = str('state.redis', true);
  if (stateRedis !== null) {
    let u: URL | null = null;
    try { u = new URL(stateRedis); } catch { /* reported below */ }
    if (!u || (u.protocol !== 'redis:' && u.protocol !== 'rediss:') || !u.hostname) p.push('state.redis: must be redis://host:port[/db] or rediss://host:port[/db]');
    else if (u.password && get('state.passwordFile') !== null) p.push('state: give the Redis password in state.redis or in state.passwordFile, not both');
  }

  const maxClients = int('limits.maxClients', 1, 100_000);
  const maxClientsPerIp = int('limits.maxClientsPerIp', 1, 100_000);
  const postmasterRaw = str('postmaster', true);
  const postmaster = postmasterRaw ?? `postmaster@${domains[0] ?? 'localhost'}`;
  if (postmasterRaw !== null && !/^[^\s@<>]+@[^\s@<>]+$/.test(postmasterRaw)) p.push(`postmaster: "${postmasterRaw}" is not an address (write user@domain)`);

  const config: Config = {
    domains,
    hostname: str('hostname') ?? '',
    postmaster,
    srs: {
      domain: srsDomain,
      maxAgeDays: int('srs.maxAgeDays', 1, 1000),
      separator: oneOf('srs.separator', ['=', '+', '-'] as const),
      hashLength,
      hashMin,
      alphabet: oneOf('srs.alphabet', ['base64', 'base64url'] as const),
      alwaysRewrite: bool('srs.alwaysRewrite'),
    },
    batv: { maxAgeDays: int('batv.maxAgeDays', 0, 100) },
    keys: { dir: str('keys.dir') ?? '' },
    outbound: {
      listen: listen('outbound.listen'),
      relay: hop('outbound.relay'),
      captureDir: str('outbound.captureDir') ?? '',
      allowNetworks,
      usersFile: str('outbound.usersFile', true),
      allowInsecureAuth: bool('outbound.allowInsecureAuth'),
      exemptSenders: strList('outbound.exemptSenders'),
      exemptRecipients: strList('outbound.exemptRecipients'),
      overlong: oneOf('outbound.overlong', ['sign', 'skip'] as const),
      proxyProtocolFrom: ipList('outbound.proxyProtocolFrom'),
      xclientFrom: ipList('outbound.xclientFrom'),
    },
    inbound: {
      listen: listen('inbound.listen'),
      mailbox: hop('inbound.mailbox'),
      captureDir: str('inbound.captureDir') ?? '',
      untaggedBounces: oneOf('inbound.untaggedBounces', ['reject', 'classify', 'tag', 'accept'] as const),
      graceUntil,
      verdictHeader,
      proxyProtocolFrom: ipList('inbound.proxyProtocolFrom'),
      xclientFrom: ipList('inbound.xclientFrom'),
      dnsbl: {
        mode: oneOf('inbound.dnsbl.mode', ['off', 'reject'] as const),
        zone: str('inbound.dnsbl.zone') ?? '',
        servers: strList('inbound.dnsbl.servers'),
        timeoutMs: int('inbound.dnsbl.timeoutMs', 50, 60_000),
      },
      limits: {
        refusedPerClient: int('inbound.limits.refusedPerClient', 1, 1_000_000),
        refusedWindowSec: int('inbound.limits.refusedWindowSec', 1, 86_400),
        coolingOffSec: int('inbound.limits.coolingOffSec', 1, 86_400),
        bouncesPerTag: int('inbound.limits.bouncesPerTag', 1, 1_000_000),
        tagWindowSec: int('inbound.limits.tagWindowSec', 1, 86_400 * 30),
        maxTracked: int('inbound.limits.maxTracked', 100, 10_000_000),
      },
    },
    tls: { key: tlsKey, cert: tlsCert },
    relayTls: { require: bool('relayTls.require'), rejectUnauthorized: bool('relayTls.rejectUnauthorized') },
    relayAuth,
    limits: {
      maxClients,
      maxClientsPerIp,
      maxMessageBytes: int('limits.maxMessageBytes', 1024, 2 ** 40),
      maxRecipients: int('limits.maxRecipients', 1, 100_000),
      bareLineEnds: oneOf('limits.bareLineEnds', ['normalize', 'reject'] as const),
      bareLineEndsExempt: cidrs('limits.bareLineEndsExempt'),
      minDataRate: int('limits.minDataRate', 0, 2 ** 30),
    },
    timeouts,
    metrics: { listen: metricsListen, token: metricsToken, tokenFile: metricsTokenFile, usersFile: metricsUsersFile },
    log: { level: oneOf('log.level', ['debug', 'info', 'warn', 'error', 'silent'] as const) },
    state: { redis: stateRedis, passwordFile: str('state.passwordFile', true), prefix: str('state.prefix') ?? 'batv:', timeoutMs: int('state.timeoutMs', 1, 10_000) },
  };
  if (config.outbound.listen === config.inbound.listen && !config.inbound.listen.endsWith(':0')) p.push(`inbound.listen: "${config.inbound.listen}" is also outbound.listen`);
  if (p.length) throw new ConfigError(p);
  return config;
}

/**
 * BATV_PROXY_A__B_C=v → { a: { bC: v } }, converted by the type the schema gives that setting: numbers,
 * booleans, comma-separated lists; "null" only where null is allowed; everything else stays a string
 * (a password of digits stays a string).
 */
export function envOverrides(env: Readonly<Record<string, string | undefined>>): Obj {
  const out: Obj = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('BATV_PROXY_') || value === undefined || name === 'BATV_PROXY_CONFIG') continue;
    const path = name.slice('BATV_PROXY_'.length).split('__').map((seg) => seg.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase()));
    const def = path.reduce<unknown>((o, k) => (isObj(o) ? o[k] : undefined), DEFAULTS);
    let v: unknown = value;
    if (typeof def === 'number' && /^-?\d+$/.test(value)) v = Number(value);
    else if (typeof def === 'boolean' && (value === 'true' || value === 'false')) v = value === 'true';
    else if (Array.isArray(def)) v = value.split(',').map((x) => x.trim()).filter(Boolean);
    else if ((def === null || typeof def === 'string') && value === 'null') v = null;
    let o = out;
    for (const seg of path.slice(0, -1)) o = (o[seg] = isObj(o[seg]) ? o[seg] : {}) as Obj;
    o[path[path.length - 1]!] = v;
  }
  return out;
}

/**
 * Reads the config file (JSON or YAML by content), applies environment overrides and parses.
 * @throws ConfigError naming the file and every problem.
 */
export async function loadConfig(file: string | null, env: Readonly<Record<string, string | undefined>> = {}): Promise<Config> {
  let fromFile: unknown = {};
  if (file !== null) {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      throw new ConfigError([`cannot read ${file}: ${(e as Error).message}`], `configuration ${file}`);
    }
    try {
      fromFile = parseYaml(text) ?? {};
    } catch (e) {
      throw new ConfigError([`cannot parse ${file}: ${(e as Error).message.split('\n')[0]}`], `configuration ${file}`);
    }
    if (!isObj(fromFile)) throw new ConfigError([`${file} must hold an object of settings`], `configuration ${file}`);
  }
  try {
    return parseConfig(merge(fromFile, envOverrides(env)));
  } catch (e) {
    if (e instanceof ConfigError && file !== null) throw new ConfigError(e.problems, `configuration ${file}`);
    throw e;
  }
}

/** A Redis URL with its password replaced by *** (state.redis). */
export function redactUrl(url: string | null): string | null {
  if (url === null) return null;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '***';
  }
}

/** The effective config with secrets hidden, for check-config and logs. */
export function redacted(c: Config): unknown {
  return JSON.parse(JSON.stringify({ ...c, relayAuth: c.relayAuth ? { user: c.relayAuth.user, pass: '***' } : null, metrics: { ...c.metrics, token: c.metrics.token === null ? null : '***' }, state: { ...c.state, redis: redactUrl(c.state.redis) } }, (_k, v: unknown) =>
    isObj(v) && 'bits' in v && 'text' in v ? (v as { text: string }).text : v,
  ));
}
