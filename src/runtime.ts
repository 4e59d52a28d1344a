/**
 * The runtime snapshot: everything a transaction decides with (config, keyring, sign and verify
 * policies, next hops, network lists, limits, DNSBL, AUTH, listener and next-hop session options), built
 * from a config and the files it names, frozen, and swapped by the proxy with one assignment. A
 * transaction takes the snapshot once at MAIL and keeps it to its end, so it never mixes two configs
 * (docs/architecture.md, "One runtime snapshot").
 *
 *   loadRuntimeFiles(config)  ─▶ keyring, users, TLS files (I/O; every problem collected)
 *   buildRuntime(config, files, deps) ─▶ { ok: true, runtime } | { ok: false, problems }
 *   restartOnly(before, after) ─▶ what a reload cannot apply (listen addresses, TLS on/off, ...)
 */
import { promises as fs } from 'node:fs';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { createAuth, loadUsers, type Auth, type UserEntry } from './auth.js';
import { createDnsbl, type Dnsbl } from './inbound/dnsbl.js';
import { createLimits, type AbuseLimits } from './inbound/limits.js';
import { initKeys, KeyringError, keyringPath, loadKeyring, thumbprint, type StoredKey } from './keys.js';
import { networkList, type NetworkList } from './net/cidr.js';
import { replies } from './policy/replies.js';
import type { SignPolicy } from './policy/sign.js';
import type { VerifyPolicy } from './policy/verify.js';
import type { NextHopOptions } from './smtp/client.js';
import type { ListenerOptions } from './smtp/listener.js';
import type { HopAddress } from './smtp/relay.js';
import type { SharedState } from './state/redis.js';
import type { TagKeyring } from './tags/keyring.js';

export type Role = 'outbound' | 'inbound';

export interface Runtime {
  readonly config: Config;
  readonly keyring: TagKeyring | null;
  /** The stored keys behind the keyring (status, age, schedule); empty when the keyring was given directly. */
  readonly keys: readonly StoredKey[];
  readonly sign: SignPolicy;
  readonly verify: VerifyPolicy;
  /** Where each role's mail goes: the configured next hop, or the local capture hop. */
  readonly hops: { readonly outbound: HopAddress; readonly mailbox: HopAddress };
  /** outbound.allowNetworks */
  readonly relayNetworks: NetworkList;
  /** limits.bareLineEndsExempt */
  readonly bareLineEndsExempt: NetworkList;
  readonly auth: Auth;
  readonly limits: AbuseLimits;
  readonly dnsbl: Dnsbl | null;
  /** inbound.graceUntil as epoch ms (null: none). */
  readonly graceUntilMs: number | null;
  readonly listeners: { readonly outbound: ListenerOptions; readonly inbound: ListenerOptions };
  /** Options for a new session to a next hop. */
  nextHop(hop: HopAddress): NextHopOptions;
}

/** What buildRuntime needs read from disk first. */
export interface RuntimeFiles {
  readonly keyring: TagKeyring | null;
  readonly keys: readonly StoredKey[];
  readonly users: Map<string, UserEntry> | null;
  readonly tls: { readonly key: Buffer; readonly cert: Buffer } | null;
}

export interface RuntimeDeps {
  readonly clock: Clock;
  readonly shared: SharedState | null;
  /** The capture hops started for a zero-config start (used when no next hop is configured). */
  readonly captureHops: { readonly outbox: HopAddress | null; readonly inbox: HopAddress | null };
  /** The snapshot being replaced: its limits and DNSBL cache are kept when their settings are unchanged. */
  readonly previous: Runtime | null;
}

export type Built = { readonly ok: true; readonly runtime: Runtime } | { readonly ok: false; readonly problems: readonly string[] };

/** A comparable text of (part of) a config. */
export const configText = (v: unknown): string => JSON.stringify(v);

/**
 * Builds a snapshot, or returns every problem that prevents it. Creates objects only (limits, DNSBL
 * resolver, AUTH): no I/O, nothing swapped, nothing started.
 */
export function buildRuntime(config: Config, files: RuntimeFiles, deps: RuntimeDeps): Built {
  const problems: string[] = [];
  const prev = deps.previous;
  const { clock, shared } = deps;

  const outboundHop = config.outbound.relay ?? deps.captureHops.outbox;
  const mailboxHop = config.inbound.mailbox ?? deps.captureHops.inbox;
  if (!outboundHop) problems.push('outbound.relay: no next hop and no capture (set outbound.relay)');
  if (!mailboxHop) problems.push('inbound.mailbox: no next hop and no capture (set inbound.mailbox)');

  const graceUntilMs = config.inbound.graceUntil === null ? null : Date.parse(config.inbound.graceUntil);

  let dnsbl: Dnsbl | null = null;
  if (config.inbound.dnsbl.mode === 'reject') {
    if (prev?.dnsbl && configText(prev.config.inbound.dnsbl) === configText(config.inbound.dnsbl)) dnsbl = prev.dnsbl;
    else {
      try {
        const d = config.inbound.dnsbl;
        dnsbl = createDnsbl({ zone: d.zone, servers: [...d.servers], timeoutMs: d.timeoutMs, clock });
      } catch (e) {
        problems.push(`inbound.dnsbl.servers: ${(e as Error).message}`);
      }
    }
  }
  if (problems.length) {
    if (dnsbl && dnsbl !== prev?.dnsbl) dnsbl.close();
    return { ok: false, problems };
  }

  const limits = prev && configText(prev.config.inbound.limits) === configText(config.inbound.limits)
    ? prev.limits
    : createLimits(config.inbound.limits, clock, shared);
  const auth = createAuth(files.users, clock, undefined, shared);
  const srs = config.srs.domain === null ? null : { ...config.srs, domain: config.srs.domain };

  const listener = (role: Role): ListenerOptions => Object.freeze({
    name: config.hostname,
    maxClients: config.limits.maxClients,
    perClient: { max: config.limits.maxClientsPerIp, reply: replies.tooManyFromClient },
    maxMessageBytes: config.limits.maxMessageBytes,
    maxRecipients: config.limits.maxRecipients,
    clientIdleMs: config.timeouts.clientIdleMs,
    tls: files.tls,
    authMethods: role === 'outbound' && auth.enabled ? ['PLAIN', 'LOGIN'] : [],
    allowInsecureAuth: config.outbound.allowInsecureAuth,
    useProxy: [...config[role].proxyProtocolFrom],
    useXClient: [...config[role].xclientFrom],
  });

  const relay = config.outbound.relay;
  const runtime: Runtime = {
    config,
    keyring: files.keyring,
    keys: Object.freeze([...files.keys]),
    sign: Object.freeze({ domains: config.domains, srs, exemptSenders: config.outbound.exemptSenders, exemptRecipients: config.outbound.exemptRecipients, overlong: config.outbound.overlong }),
    verify: Object.freeze({ domains: config.domains, srs, batvMaxAgeDays: config.batv.maxAgeDays, untaggedBounces: config.inbound.untaggedBounces, graceUntilMs, postmaster: config.postmaster }),
    hops: Object.freeze({ outbound: outboundHop!, mailbox: mailboxHop! }),
    relayNetworks: networkList(config.outbound.allowNetworks),
    bareLineEndsExempt: networkList(config.limits.bareLineEndsExempt),
    auth,
    limits,
    dnsbl,
    graceUntilMs,
    listeners: Object.freeze({ outbound: listener('outbound'), inbound: listener('inbound') }),
    nextHop: (hop) => ({
      host: hop.host,
      port: hop.port,
      secure: hop.secure,
      requireTls: config.relayTls.require,
      tls: { rejectUnauthorized: config.relayTls.rejectUnauthorized, servername: hop.host },
      name: config.hostname,
      // Credentials go to the configured relay only, never to a capture hop or the mailbox host.
      ...(config.relayAuth && relay && hop.url === relay.url ? { auth: { ...config.relayAuth } } : {}),
      connectTimeoutMs: config.timeouts.connectMs,
      greetingTimeoutMs: config.timeouts.greetingMs,
      commandTimeoutMs: config.timeouts.commandMs,
      dataTimeoutMs: config.timeouts.dataMs,
    }),
  };
  return { ok: true, runtime: Object.freeze(runtime) };
}

export interface FileOptions {
  readonly clock: Clock;
  /** Create a keyring when none exists (the zero-config start; never on reload). */
  readonly createKeys: boolean;
  /** Keys given directly (tests); skips keys.dir. */
  readonly keyring?: TagKeyring;
  readonly onKeysCreated?: (info: { file: string; key: number; thumbprint: string }) => void;
}

/** Reads the files a config names (keyring, users file, TLS key and certificate); every problem at once. */
export async function loadRuntimeFiles(config: Config, opts: FileOptions): Promise<{ files: RuntimeFiles } | { problems: string[] }> {
  // The files are read at once; each keeps its own problem slot so they are reported in a fixed order.
  const slots: Array<string | null> = [null, null, null, null];
  const attempt = async <T>(slot: number, read: () => Promise<T>, describe: (e: Error) => string = (e) => e.message): Promise<T | null> => {
    try {
      return await read();
    } catch (e) {
      slots[slot] = describe(e as Error);
      return null;
    }
  };
  const keyring = attempt(0, async (): Promise<{ ring: TagKeyring; keys: StoredKey[] }> => {
    if (opts.keyring) return { ring: opts.keyring, keys: [] };
    try {
      return await loadKeyring(config.keys.dir);
    } catch (e) {
      if (!(opts.createKeys && e instanceof KeyringError && e.message.startsWith('No keyring'))) throw e;
      const k = await initKeys(config.keys.dir, opts.clock.now());
      opts.onKeysCreated?.({ file: keyringPath(config.keys.dir), key: k.num, thumbprint: await thumbprint(k.secret) });
      return loadKeyring(config.keys.dir);
    }
  });
  const users = config.outbound.usersFile ? attempt(1, () => loadUsers(config.outbound.usersFile!)) : null;
  const withTls = Boolean(config.tls.key && config.tls.cert);
  const tlsFile = (slot: number, f: string | null, what: string) =>
    withTls && f ? attempt(slot, () => fs.readFile(f), (e) => `tls.${what}: cannot read ${f}: ${e.message}`) : null;
  const [k, u, key, cert] = await Promise.all([keyring, users, tlsFile(2, config.tls.key, 'key'), tlsFile(3, config.tls.cert, 'cert')]);
  const problems = slots.filter((p): p is string => p !== null);
  if (problems.length || !k) return { problems };
  return { files: { keyring: k.ring, keys: k.keys, users: u, tls: key && cert ? { key, cert } : null } };
}

/**
 * Settings a running proxy cannot change (they need a restart), each with the reason; reload reports
 * any that differ, and check-config lists them.
 */
export const RESTART_ONLY: readonly { readonly path: string; readonly why: string }[] = [
  { path: 'outbound.listen', why: 'the listener stays bound to its address' },
  { path: 'inbound.listen', why: 'the listener stays bound to its address' },
  { path: 'metrics.listen', why: 'the metrics listener stays bound to its address' },
  { path: 'metrics.token', why: 'the metrics listener keeps its credentials' },
  { path: 'metrics.tokenFile', why: 'the metrics listener keeps its credentials' },
  { path: 'metrics.usersFile', why: 'the metrics listener keeps its credentials' },
  { path: 'outbound.captureDir', why: 'the capture hop keeps its folder' },
  { path: 'inbound.captureDir', why: 'the capture hop keeps its folder' },
  { path: 'keys.dir', why: 'the keys directory is watched from the start' },
  { path: 'state', why: 'the Redis connection is opened at start' },
  { path: 'log.level', why: 'the logger is made at start' },
  { path: 'outbound.proxyProtocolFrom', why: 'the listener keeps its PROXY protocol allowlist' },
  { path: 'inbound.proxyProtocolFrom', why: 'the listener keeps its PROXY protocol allowlist' },
  { path: 'outbound.xclientFrom', why: 'the listener keeps its XCLIENT allowlist' },
  { path: 'inbound.xclientFrom', why: 'the listener keeps its XCLIENT allowlist' },
];

const at = (c: unknown, path: string): unknown => path.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), c);

/**
 * What a reload from `before` to `after` cannot apply, one line per setting: the value kept and the
 * value that takes effect at the next restart. TLS files with TLS on both times are applied (the
 * certificate is reloaded); switching TLS or AUTH on or off is not (the EHLO offer is fixed at start).
 */
export function restartOnly(before: Runtime, after: Runtime): string[] {
  const out: string[] = [];
  for (const { path, why } of RESTART_ONLY) {
    const a = at(before.config, path);
    const b = at(after.config, path);
    if (configText(a) !== configText(b)) out.push(`${path}: not applied (${why}); still ${show(path, a)}, ${show(path, b)} after a restart`);
  }
  if ((before.listeners.inbound.tls === null) !== (after.listeners.inbound.tls === null)) {
    out.push(`tls: not applied (STARTTLS is offered or not from the start); still ${before.listeners.inbound.tls ? 'on' : 'off'}, ${after.listeners.inbound.tls ? 'on' : 'off'} after a restart`);
  }
  if (before.auth.enabled !== after.auth.enabled) {
    out.push(`outbound.usersFile: AUTH not ${after.auth.enabled ? 'offered' : 'withdrawn'} (the AUTH offer is fixed at start); restart to ${after.auth.enabled ? 'offer' : 'withdraw'} it`);
  }
  return out;
}

function show(path: string, v: unknown): string {
  if (path.startsWith('metrics.token') && v !== null && v !== undefined) return '***';
  if (path === 'state') return JSON.stringify({ ...(v as object), redis: (v as { redis: unknown }).redis ? '***' : null });
  return JSON.stringify(v);
}

/** One line per key, for comparing keyrings across a reload ("num:status:thumbprint"). */
export async function keyLines(keys: readonly StoredKey[]): Promise<Set<string>> {
  return new Set(await Promise.all(keys.map(async (k) => `${k.num}:${k.status}:${await thumbprint(k.secret)}`)));
}
