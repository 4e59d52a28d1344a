/**
 * Composition root: builds keys, pool, listeners, capture hops and the metrics endpoint from a Config,
 * and swaps config and keys on reload only when all of it is valid. No policy here.
 */
import { promises as fs } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { SMTPServer } from 'smtp-server';
import { systemClock, type Clock } from './clock.js';
import { parseNextHop, parseListen, type Config } from './config.js';
import { createAuth, loadUsers, type Auth } from './auth.js';
import { startCapture, type Capture } from './capture.js';
import { createInbound } from './inbound.js';
import { createDnsbl, type Dnsbl } from './inbound/dnsbl.js';
import { createLimits } from './inbound/limits.js';
import { openSharedState } from './state/redis.js'; // issue 12: shared limits
import { initKeys, KeyringError, keyringPath, loadKeyring, thumbprint, type StoredKey } from './keys.js';
import { silentLogger, type Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics.js';
import { startMetricsServer, type MetricsServer } from './metrics-server.js';
import { loadAccess, StatusBook } from './status/index.js'; // status page (issue 13)
import { createOutbound } from './outbound.js';
import type { SignPolicy } from './policy/sign.js';
import type { VerifyPolicy } from './policy/verify.js';
import type { ProxyState, RoleContext, Transaction } from './role.js';
import type { ListenerOptions } from './smtp/listener.js';
import { NextHopPool, type HopAddress } from './smtp/relay.js';
import { replies } from './policy/replies.js';
import type { TagKeyring } from './tags/keyring.js';
import { MS_PER_DAY } from './clock.js';

/** What close() looks at in smtp-server's connection objects. */
interface IdleProbe {
  session?: { envelope?: { mailFrom?: unknown } };
  _dataStream?: unknown;
  _closing?: boolean;
  send(code: number, text: string): void;
  close(): void;
}

export interface ProxyOptions {
  readonly clock?: Clock;
  readonly log?: Logger;
  /** Create a keyring when none exists (the zero-config start). Default true. */
  readonly createKeys?: boolean;
  /** Keys given directly (tests); skips keys.dir. */
  readonly keyring?: TagKeyring;
}

export interface Proxy {
  readonly outbound: { host: string; port: number };
  readonly inbound: { host: string; port: number };
  readonly metricsAddress: { host: string; port: number } | null;
  readonly captures: { outbox: Capture | null; inbox: Capture | null };
  readonly metrics: Metrics;
  readonly pool: NextHopPool;
  state(): ProxyState;
  /** Re-reads keys (and takes a new config when given); swaps only if everything is valid. */
  reload(config?: Config): Promise<{ changed: string[] }>;
  /** Stops accepting, lets transactions finish within `graceMs`, then closes everything. */
  close(graceMs?: number): Promise<void>;
}

/** A comparable text of (part of) a config; network ranges hold BigInts, which JSON cannot write. */
function configText(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));
}

function srsOptions(c: Config) {
  return c.srs.domain === null ? null : { ...c.srs, domain: c.srs.domain };
}

async function listen(server: SMTPServer, addr: string): Promise<{ host: string; port: number }> {
  const l = parseListen(addr);
  if (typeof l === 'string') throw new Error(l);
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(new Error(`Cannot listen on ${addr}: ${e.message}`));
    server.server.once('error', onError);
    server.listen(l.port, l.host, () => {
      server.server.off('error', onError);
      resolve();
    });
  });
  const a = server.server.address() as AddressInfo;
  return { host: a.address, port: a.port };
}

async function readKeyring(config: Config, opts: ProxyOptions, clock: Clock, log: Logger): Promise<{ ring: TagKeyring; keys: StoredKey[] }> {
  if (opts.keyring) return { ring: opts.keyring, keys: [] };
  try {
    return await loadKeyring(config.keys.dir);
  } catch (e) {
    if (opts.createKeys !== false && e instanceof KeyringError && e.message.startsWith('No keyring')) {
      const k = await initKeys(config.keys.dir, clock.now());
      log.info({ file: keyringPath(config.keys.dir), key: k.num, thumbprint: await thumbprint(k.secret) }, 'created a new keyring');
      return loadKeyring(config.keys.dir);
    }
    throw e;
  }
}

export async function startProxy(initial: Config, opts: ProxyOptions = {}): Promise<Proxy> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log ?? silentLogger;
  const metrics = createMetrics();
  const status = new StatusBook({ clock, counters: metrics }); // status page (issue 13)
  const metricsAccess = await loadAccess(initial.metrics, clock); // status page (issue 13): before anything listens
  let config = initial;
  let { ring, keys } = await readKeyring(config, opts, clock, log);
  const shared = await openSharedState(config.state, { warn: (m, f) => log.warn({ ...f, role: 'state' }, m), info: (m, f) => log.info({ ...f, role: 'state' }, m) }, (f) => metrics.sharedStateFallback.set(f ? 1 : 0)); // issue 12
  let auth: Auth = createAuth(config.outbound.usersFile ? await loadUsers(config.outbound.usersFile) : null, clock, undefined, shared); // issue 12: shared brake
  let limits = createLimits(config.inbound.limits, clock, shared);
  let dnsbl: Dnsbl | null = null;
  const makeDnsbl = (c: Config) => (c.inbound.dnsbl.mode === 'reject'
    ? createDnsbl({ zone: c.inbound.dnsbl.zone, servers: [...c.inbound.dnsbl.servers], timeoutMs: c.inbound.dnsbl.timeoutMs, clock })
    : null);
  dnsbl = makeDnsbl(config);

  const setKeyMetrics = () => {
    metrics.keyAge.reset();
    for (const k of keys) if (k.created) metrics.keyAge.set({ key: String(k.num), status: k.status }, (clock.now() - Date.parse(k.created)) / MS_PER_DAY);
  };
  setKeyMetrics();

  // Capture hops for a zero-config start.
  const captures = {
    outbox: config.outbound.relay === null ? await startCapture(config.outbound.captureDir, clock, (f, env) => log.info({ file: f, mail_from: env.from, rcpt_to: env.to }, 'captured outbound message')) : null,
    inbox: config.inbound.mailbox === null ? await startCapture(config.inbound.captureDir, clock, (f, env) => log.info({ file: f, mail_from: env.from, rcpt_to: env.to }, 'captured inbound message')) : null,
  };
  const hopOf = (url: string): HopAddress => parseNextHop(url) as HopAddress;
  // Parsed once here, not per transaction.
  const captureHops = { outbox: captures.outbox ? hopOf(captures.outbox.url) : null, inbox: captures.inbox ? hopOf(captures.inbox.url) : null };
  const outboundHop = () => (config.outbound.relay ?? captureHops.outbox!);
  const mailboxHop = () => (config.inbound.mailbox ?? captureHops.inbox!);

  let servers: { outbound: SMTPServer; inbound: SMTPServer } | null = null;
  const pool = new NextHopPool({
    maxIdlePerHop: 64,
    idleMs: 10_000,
    sessionOptions: (hop) => ({
      host: hop.host,
      port: hop.port,
      secure: hop.secure,
      requireTls: config.relayTls.require,
      tls: { rejectUnauthorized: config.relayTls.rejectUnauthorized, servername: hop.host },
      name: config.hostname,
      ...(config.relayAuth && config.outbound.relay && hop.url === config.outbound.relay.url ? { auth: { ...config.relayAuth } } : {}),
      connectTimeoutMs: config.timeouts.connectMs,
      greetingTimeoutMs: config.timeouts.greetingMs,
      commandTimeoutMs: config.timeouts.commandMs,
      dataTimeoutMs: config.timeouts.dataMs,
    }),
    onExtensions: (hop, ext) => {
      // Advertise to clients only what the next hop offers.
      const targets = [hop.url === outboundHop().url ? servers?.outbound : undefined, hop.url === mailboxHop().url ? servers?.inbound : undefined];
      for (const s of targets) {
        if (!s) continue;
        const o = s.options as unknown as Record<string, unknown>;
        o.hide8BITMIME = !ext.has('8BITMIME');
        o.hideSMTPUTF8 = !ext.has('SMTPUTF8');
        o.hideDSN = !ext.has('DSN');
        o.hideREQUIRETLS = !ext.has('REQUIRETLS');
        const hopSize = Number(ext.get('SIZE') ?? 0);
        o.size = hopSize > 0 ? Math.min(hopSize, config.limits.maxMessageBytes) : config.limits.maxMessageBytes;
      }
    },
  });

  let signPolicy: SignPolicy;
  let verifyPolicy: VerifyPolicy;
  const derive = () => {
    signPolicy = { domains: config.domains, srs: srsOptions(config), exemptSenders: config.outbound.exemptSenders, exemptRecipients: config.outbound.exemptRecipients, overlong: config.outbound.overlong };
    verifyPolicy = { domains: config.domains, srs: srsOptions(config), batvMaxAgeDays: config.batv.maxAgeDays, untaggedBounces: config.inbound.untaggedBounces, graceUntilMs: config.inbound.graceUntil === null ? null : Date.parse(config.inbound.graceUntil), postmaster: config.postmaster };
  };
  derive();

  const tlsFiles = config.tls.key && config.tls.cert ? { key: await fs.readFile(config.tls.key), cert: await fs.readFile(config.tls.cert) } : null;
  const listenerOptions = (role: 'outbound' | 'inbound'): ListenerOptions => ({
    name: config.hostname,
    maxClients: config.limits.maxClients,
    perClient: { max: config.limits.maxClientsPerIp, reply: replies.tooManyFromClient },
    maxMessageBytes: config.limits.maxMessageBytes,
    maxRecipients: config.limits.maxRecipients,
    clientIdleMs: config.timeouts.clientIdleMs,
    tls: tlsFiles,
    authMethods: role === 'outbound' && auth.enabled ? ['PLAIN', 'LOGIN'] : [],
    allowInsecureAuth: config.outbound.allowInsecureAuth,
    useProxy: [...config[role].proxyProtocolFrom],
    useXClient: [...config[role].xclientFrom],
  });

  const ctx: RoleContext = {
    state: () => ({ config, keyring: ring }),
    clock,
    pool,
    log,
    metrics,
    get auth() { return auth; },
    signPolicy: () => signPolicy,
    verifyPolicy: () => verifyPolicy,
    outboundHop,
    mailboxHop,
    listenerOptions,
    finishTransaction(txn: Transaction | null, outcome: string) {
      if (!txn || txn.done) return;
      txn.done = true;
      metrics.transactions.inc({ role: txn.role, outcome });
      status.transaction(txn, outcome); // status page (issue 13)
      if (!log.isLevelEnabled('info')) return;
      log.info({
        id: txn.id, role: txn.role, ...txn.fields, sender: txn.sender, ...(txn.rewritten !== txn.sender ? { sender_rewritten: txn.rewritten } : {}),
        rcpts: txn.rcpts, outcome, ms: clock.now() - txn.startedMs,
      }, 'transaction');
    },
  };

  const outbound = createOutbound(ctx);
  const inbound = createInbound(ctx, { limits: () => limits, dnsbl: () => dnsbl });
  servers = { outbound, inbound };
  for (const [role, s] of Object.entries(servers)) {
    s.on('error', (e: Error) => log.error({ role, err: e.message }, 'listener error'));
    // Every socket smtp-server accepts, counted until it closes (also those refused at connect).
    s.server.on('connection', (socket: import('node:net').Socket) => {
      metrics.connections.inc({ role });
      socket.once('close', () => metrics.connections.dec({ role }));
    });
  }
  let outAddr: { host: string; port: number };
  let inAddr: { host: string; port: number };
  try {
    outAddr = await listen(outbound, config.outbound.listen);
    inAddr = await listen(inbound, config.inbound.listen);
  } catch (e) {
    await Promise.all([outbound, inbound].map((s) => new Promise<void>((r) => s.close(() => r()))));
    await Promise.all([captures.outbox?.close(), captures.inbox?.close()]);
    throw e;
  }
  let metricsServer: MetricsServer | null = null;
  if (config.metrics.listen) {
    metricsServer = await startMetricsServer(config.metrics.listen, metrics, async () => {
      const problems: string[] = [];
      if (!ring) problems.push('no signing key');
      for (const hop of new Set([outboundHop().url, mailboxHop().url])) {
        try {
          const s = await pool.open(hopOf(hop));
          pool.release(hopOf(hop), s);
        } catch (e) {
          problems.push(`${hop}: ${(e as Error).message}`);
        }
      }
      return problems;
    }, { // status page (issue 13): begin
      readyDetail: () => (shared?.status.fallback ? [`shared state: fallback to local limits since ${shared.status.since} (${shared.status.reason})`] : []), // issue 12
      clock,
      access: metricsAccess,
      status: {
        book: status,
        listeners: () => [
          { name: 'outbound', address: `${outAddr.host}:${outAddr.port}`, nextHop: outboundHop().url, capture: config.outbound.relay ? null : captures.outbox?.dir ?? null },
          { name: 'inbound', address: `${inAddr.host}:${inAddr.port}`, nextHop: mailboxHop().url, capture: config.inbound.mailbox ? null : captures.inbox?.dir ?? null },
        ],
        keys: () => keys,
        graceUntil: () => config.inbound.graceUntil,
        hostname: () => config.hostname,
      },
    }); // status page (issue 13): end
  }

  // Learn the next hops' extensions at start (a failure here only means defaults are advertised).
  for (const hop of [outboundHop(), mailboxHop()]) {
    pool.open(hop).then((s) => pool.release(hop, s), (e: Error) => log.warn({ nexthop: hop.url, err: e.message }, 'next hop not answering at start'));
  }
  for (const k of keys) log.info({ key: k.num, status: k.status, thumbprint: await thumbprint(k.secret) }, 'key loaded');
  log.info({ outbound: `${outAddr.host}:${outAddr.port}`, relay: outboundHop().url, capture: captures.outbox?.dir }, 'outbound listening');
  log.info({ inbound: `${inAddr.host}:${inAddr.port}`, mailbox: mailboxHop().url, capture: captures.inbox?.dir }, 'inbound listening');

  return {
    outbound: outAddr,
    inbound: inAddr,
    metricsAddress: metricsServer?.address ?? null,
    captures,
    metrics,
    pool,
    state: () => ({ config, keyring: ring }),
    async reload(next?: Config) {
      const c = next ?? config;
      // Build everything first; swap only when all of it is valid.
      const loaded = await readKeyring(c, { ...opts, createKeys: false }, clock, log);
      const newAuth = createAuth(c.outbound.usersFile ? await loadUsers(c.outbound.usersFile) : null, clock, undefined, shared); // issue 12
      const changed: string[] = [];
      const before = new Set(await Promise.all(keys.map(async (k) => `${k.num}:${k.status}:${await thumbprint(k.secret)}`)));
      const after = new Set(await Promise.all(loaded.keys.map(async (k) => `${k.num}:${k.status}:${await thumbprint(k.secret)}`)));
      for (const k of after) if (!before.has(k)) changed.push(`key ${k} added`);
      for (const k of before) if (!after.has(k)) changed.push(`key ${k} removed`);
      if (configText(c) !== configText(config)) changed.push('config');
      ring = loaded.ring;
      keys = loaded.keys;
      if (c !== config) {
        if (configText(c.inbound.limits) !== configText(config.inbound.limits)) limits = createLimits(c.inbound.limits, clock, shared);
        if (configText(c.inbound.dnsbl) !== configText(config.inbound.dnsbl)) { dnsbl?.close(); dnsbl = makeDnsbl(c); }
        config = c;
      }
      auth = newAuth;
      derive();
      setKeyMetrics();
      log.info({ changed }, 'reloaded');
      return { changed };
    },
    async close(graceMs = 10_000) {
      // Stop listening; a connection between transactions is told 421 at once, one in the middle of a
      // transaction may finish it (within graceMs) and is then told 421 too.
      const stop = (s: SMTPServer) => new Promise<void>((r) => {
        (s.options as unknown as Record<string, unknown>).closeTimeout = graceMs;
        s.close(() => r());
      });
      const stopped = Promise.all([stop(outbound), stop(inbound)]);
      const reply = replies.shuttingDown();
      const sweep = () => {
        for (const s of [outbound, inbound]) {
          for (const c of (s as unknown as { connections: Set<IdleProbe> }).connections) {
            if (!c.session?.envelope?.mailFrom && !c._dataStream && !c._closing) {
              c._closing = true;
              c.send(reply.responseCode, reply.message);
              c.close();
            }
          }
        }
      };
      sweep();
      const timer = setInterval(sweep, 50);
      await stopped;
      clearInterval(timer);
      await pool.close();
      dnsbl?.close();
      await shared?.close(); // issue 12
      await Promise.all([captures.outbox?.close(), captures.inbox?.close(), metricsServer?.close()]);
    },
  };
}
