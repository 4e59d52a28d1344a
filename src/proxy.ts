/**
 * Composition root: starts the capture hops, the next-hop pool, both listeners and the metrics
 * endpoint, and holds the one current runtime snapshot (src/runtime.ts). A reload builds a whole new
 * snapshot and swaps it with one assignment, or refuses with every problem and changes nothing.
 * No policy here (docs/architecture.md).
 */
import { systemClock, MS_PER_DAY, type Clock } from './clock.js';
import { parseNextHop, parseListen, type Config } from './config.js';
import { startCapture, type Capture } from './capture.js';
import { createInbound } from './inbound.js';
import { openSharedState } from './state/redis.js';
import { silentLogger, type Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics.js';
import { startMetricsServer, type MetricsServer } from './metrics-server.js';
import { loadAccess, StatusBook } from './status/index.js';
import { createOutbound } from './outbound.js';
import { buildRuntime, configText, keyLines, loadRuntimeFiles, restartOnly, type Role, type Runtime, type RuntimeDeps } from './runtime.js';
import type { RelayContext, Transaction } from './transaction.js';
import type { Listener } from './smtp/listener.js';
import { NextHopPool, type HopAddress } from './smtp/relay.js';
import { replies } from './policy/replies.js';
import type { TagKeyring } from './tags/keyring.js';
import { thumbprint } from './keys.js';

export interface ProxyOptions {
  readonly clock?: Clock;
  readonly log?: Logger;
  /** Create a keyring when none exists (the zero-config start). Default true. */
  readonly createKeys?: boolean;
  /** Keys given directly (tests); skips keys.dir. */
  readonly keyring?: TagKeyring;
}

/** What a reload did. */
export interface ReloadResult {
  /** Keys added or removed ("key 1:active:<thumbprint> added"), and "config" when the config differs. */
  readonly changed: string[];
  /** Changes applied to the running listeners that an operator should hear about (a new certificate). */
  readonly applied: string[];
  /** Settings that differ but need a restart; the running value is kept (src/runtime.ts RESTART_ONLY). */
  readonly notApplied: string[];
}

/** A reload that cannot be applied; nothing was changed. */
export class ReloadRefused extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.length === 1 ? problems[0]! : `Reload refused:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ReloadRefused';
  }
}

export interface Proxy {
  readonly outbound: { host: string; port: number };
  readonly inbound: { host: string; port: number };
  readonly metricsAddress: { host: string; port: number } | null;
  readonly captures: { outbox: Capture | null; inbox: Capture | null };
  readonly metrics: Metrics;
  readonly pool: NextHopPool;
  /** The current runtime snapshot. */
  state(): Runtime;
  /**
   * Re-reads keys and files (and takes a new config when given); swaps the snapshot only if all of it
   * is valid. @throws ReloadRefused listing every problem (the running snapshot stays).
   */
  reload(config?: Config): Promise<ReloadResult>;
  /**
   * From now on /readyz answers 503 "draining" (a load balancer stops sending new connections here)
   * while the listeners keep accepting and serving as before; close() ends it.
   */
  drain(): void;
  /** Whether anything has asked /readyz since the start (false without a metrics listener). */
  readinessProbed(): boolean;
  /** Stops accepting, lets transactions finish within `graceMs`, then closes everything. */
  close(graceMs?: number): Promise<void>;
}

function listenAddress(addr: string): { host: string; port: number } {
  const l = parseListen(addr);
  if (typeof l === 'string') throw new Error(l);
  return l;
}

export async function startProxy(initial: Config, opts: ProxyOptions = {}): Promise<Proxy> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log ?? silentLogger;
  const metrics = createMetrics();
  const status = new StatusBook({ clock, counters: metrics });
  const metricsAccess = await loadAccess(initial.metrics, clock); // before anything listens
  const first = await loadRuntimeFiles(initial, {
    clock,
    createKeys: opts.createKeys !== false,
    ...(opts.keyring ? { keyring: opts.keyring } : {}),
    onKeysCreated: (k) => log.info(k, 'created a new keyring'),
  });
  if ('problems' in first) throw new ReloadRefused(first.problems);
  const shared = await openSharedState(initial.state, { warn: (m, f) => log.warn({ ...f, role: 'state' }, m), info: (m, f) => log.info({ ...f, role: 'state' }, m) }, (f) => metrics.sharedStateFallback.set(f ? 1 : 0));

  // Capture hops for a zero-config start.
  const captures = {
    outbox: initial.outbound.relay === null ? await startCapture(initial.outbound.captureDir, clock, (f, env) => log.info({ file: f, mail_from: env.from, rcpt_to: env.to }, 'captured outbound message')) : null,
    inbox: initial.inbound.mailbox === null ? await startCapture(initial.inbound.captureDir, clock, (f, env) => log.info({ file: f, mail_from: env.from, rcpt_to: env.to }, 'captured inbound message')) : null,
  };
  const hopOf = (url: string): HopAddress => parseNextHop(url) as HopAddress;
  const deps = (previous: Runtime | null): RuntimeDeps => ({
    clock,
    shared,
    captureHops: { outbox: captures.outbox ? hopOf(captures.outbox.url) : null, inbox: captures.inbox ? hopOf(captures.inbox.url) : null },
    previous,
  });
  const built = buildRuntime(initial, first.files, deps(null));
  if (!built.ok) {
    await Promise.all([captures.outbox?.close(), captures.inbox?.close(), shared?.close()]);
    throw new ReloadRefused(built.problems);
  }
  /** The one current snapshot: replaced whole by reload(), read once per transaction at MAIL. */
  let rt: Runtime = built.runtime;

  // Worked out at each scrape from the current snapshot's keys (a key scheduled to sign shows as active
  // from its instant on, as the keyring computes it).
  metrics.setKeyAges((g) => {
    g.reset();
    const now = clock.now();
    const signing = rt.keyring?.signingAt(now).num;
    for (const k of rt.keys) {
      if (!k.created) continue;
      const status = k.num === signing ? 'active' : k.status === 'active' ? 'verify' : k.status;
      g.set({ key: String(k.num), status }, (now - Date.parse(k.created)) / MS_PER_DAY);
    }
  });

  let listeners: Record<Role, Listener> | null = null;
  const pool = new NextHopPool({
    maxIdlePerHop: 64,
    idleMs: 10_000,
    sessionOptions: (hop) => rt.nextHop(hop),
    // Advertise to clients only what the next hop offers.
    onExtensions: (hop, ext) => {
      if (hop.url === rt.hops.outbound.url) listeners?.outbound.advertise(ext);
      if (hop.url === rt.hops.mailbox.url) listeners?.inbound.advertise(ext);
    },
  });

  const ctx: RelayContext = {
    runtime: () => rt,
    clock,
    pool,
    log,
    metrics,
    finishTransaction(txn: Transaction | null, outcome: string) {
      if (!txn || txn.done) return;
      txn.done = true;
      metrics.transactions.inc({ role: txn.role, outcome });
      status.transaction(txn, outcome);
      if (!log.isLevelEnabled('info')) return;
      log.info({
        id: txn.id, role: txn.role, ...txn.fields, sender: txn.sender, ...(txn.rewritten !== txn.sender ? { sender_rewritten: txn.rewritten } : {}),
        rcpts: txn.rcpts, outcome, ms: clock.now() - txn.startedMs,
      }, 'transaction');
    },
  };

  const ls: Record<Role, Listener> = { outbound: createOutbound(ctx), inbound: createInbound(ctx) };
  listeners = ls;
  for (const [role, l] of Object.entries(ls)) {
    l.onError((e: Error) => log.error({ role, err: e.message }, 'listener error'));
    // Every socket smtp-server accepts, counted until it closes (also those refused at connect).
    l.onSocket((socket) => {
      metrics.connections.inc({ role });
      socket.once('close', () => metrics.connections.dec({ role }));
    });
  }
  const bind = async (role: Role) => {
    const addr = initial[role].listen;
    try {
      const a = listenAddress(addr);
      return await ls[role].listen(a.host, a.port);
    } catch (e) {
      throw new Error(`Cannot listen on ${addr}: ${(e as Error).message}`);
    }
  };
  let outAddr: { host: string; port: number };
  let inAddr: { host: string; port: number };
  try {
    outAddr = await bind('outbound');
    inAddr = await bind('inbound');
  } catch (e) {
    await Promise.all([ls.outbound.close(0, replies.shuttingDown()), ls.inbound.close(0, replies.shuttingDown())]);
    await Promise.all([captures.outbox?.close(), captures.inbox?.close(), shared?.close()]);
    throw e;
  }

  let metricsServer: MetricsServer | null = null;
  /** Set by drain(): readiness fails at once, without probing the next hops. */
  let draining = false;
  if (initial.metrics.listen) {
    metricsServer = await startMetricsServer(initial.metrics.listen, metrics, async () => {
      if (draining) return ['draining'];
      const problems: string[] = [];
      const { keyring, hops } = rt;
      if (!keyring) problems.push('no signing key');
      for (const hop of new Map([hops.outbound, hops.mailbox].map((h) => [h.url, h])).values()) {
        try {
          const s = await pool.open(hop);
          pool.release(hop, s);
        } catch (e) {
          problems.push(`${hop.url}: ${(e as Error).message}`);
        }
      }
      return problems;
    }, {
      readyDetail: () => (shared?.status.fallback ? [`shared state: fallback to local limits since ${shared.status.since} (${shared.status.reason})`] : []),
      clock,
      access: metricsAccess,
      status: {
        book: status,
        listeners: () => [
          { name: 'outbound', address: `${outAddr.host}:${outAddr.port}`, nextHop: rt.hops.outbound.url, capture: rt.config.outbound.relay ? null : captures.outbox?.dir ?? null },
          { name: 'inbound', address: `${inAddr.host}:${inAddr.port}`, nextHop: rt.hops.mailbox.url, capture: rt.config.inbound.mailbox ? null : captures.inbox?.dir ?? null },
        ],
        keys: () => [...rt.keys],
        graceUntil: () => rt.config.inbound.graceUntil,
        hostname: () => rt.config.hostname,
      },
    });
  }

  // Learn the next hops' extensions at start (a failure here only means defaults are advertised).
  for (const hop of [rt.hops.outbound, rt.hops.mailbox]) {
    pool.open(hop).then((s) => pool.release(hop, s), (e: Error) => log.warn({ nexthop: hop.url, err: e.message }, 'next hop not answering at start'));
  }
  for (const k of rt.keys) log.info({ key: k.num, status: k.status, thumbprint: await thumbprint(k.secret) }, 'key loaded');
  log.info({ outbound: `${outAddr.host}:${outAddr.port}`, relay: rt.hops.outbound.url, capture: captures.outbox?.dir }, 'outbound listening');
  log.info({ inbound: `${inAddr.host}:${inAddr.port}`, mailbox: rt.hops.mailbox.url, capture: captures.inbox?.dir }, 'inbound listening');

  let reloading: Promise<unknown> = Promise.resolve();
  const reloadNow = async (next?: Config): Promise<ReloadResult> => {
    const before = rt;
    const c = next ?? before.config;
    // Build everything first; swap only when all of it is valid.
    const loaded = await loadRuntimeFiles(c, { clock, createKeys: false, ...(opts.keyring ? { keyring: opts.keyring } : {}) });
    if ('problems' in loaded) throw new ReloadRefused(loaded.problems);
    const b = buildRuntime(c, loaded.files, deps(before));
    if (!b.ok) throw new ReloadRefused(b.problems);
    const after = b.runtime;
    const changed: string[] = [];
    const [was, now] = await Promise.all([keyLines(before.keys), keyLines(after.keys)]);
    for (const k of now) if (!was.has(k)) changed.push(`key ${k} added`);
    for (const k of was) if (!now.has(k)) changed.push(`key ${k} removed`);
    if (configText(c) !== configText(before.config)) changed.push('config');
    const notApplied = restartOnly(before, after);
    rt = after; // the one swap: transactions that began before keep `before` to their end
    const applied = [...ls.outbound.apply(after.listeners.outbound), ...ls.inbound.apply(after.listeners.inbound)].filter((x, i, a) => a.indexOf(x) === i);
    if (before.dnsbl && before.dnsbl !== after.dnsbl) {
      // A transaction still on the old snapshot may be waiting on it: close it after its timeout.
      const old = before.dnsbl;
      setTimeout(() => old.close(), before.config.inbound.dnsbl.timeoutMs + 1000).unref();
    }
    log.info({ changed, applied, not_applied: notApplied }, notApplied.length ? 'reloaded; some settings need a restart' : 'reloaded');
    return { changed, applied, notApplied };
  };

  return {
    outbound: outAddr,
    inbound: inAddr,
    metricsAddress: metricsServer?.address ?? null,
    captures,
    metrics,
    pool,
    state: () => rt,
    drain() { draining = true; },
    readinessProbed: () => metricsServer?.readinessProbed ?? false,
    reload(next?: Config): Promise<ReloadResult> {
      // One reload at a time (SIGHUP and the key-directory watcher may fire together).
      const run = reloading.then(() => reloadNow(next));
      reloading = run.catch(() => undefined);
      return run;
    },
    async close(graceMs = 10_000) {
      // Stop listening; a connection between transactions is told 421 at once, one in the middle of a
      // transaction may finish it (within graceMs) and is then told 421 too.
      draining = true;
      const reply = replies.shuttingDown();
      await Promise.all([ls.outbound.close(graceMs, reply), ls.inbound.close(graceMs, reply)]);
      await pool.close();
      rt.dnsbl?.close();
      await shared?.close();
      await Promise.all([captures.outbox?.close(), captures.inbox?.close(), metricsServer?.close()]);
    },
  };
}
