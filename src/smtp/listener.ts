/**
 * The listener adapter (docs/architecture.md, "The listener adapter"): smtp-server with the proxy's
 * defaults, its run-time settings and its shutdown in one class; async hooks turned into callbacks
 * exactly once; and body plumbing that never destroys smtp-server's own DATA stream (destroying it would
 * end the DATA phase early and let the rest of the client's message be read as commands). Private
 * internals are touched only in internals.ts, beside this file.
 */
import net, { type AddressInfo, type Socket } from 'node:net';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SmtpReply, isSmtpReply, replyKind, transportReplies } from '../reply.js';
import { NextHopError } from './hop-reply.js';
import { drainConnections, installConnectionHooks } from './internals.js';
import { hasBareLineEnd } from './dotstuff.js';
import { takeProxyHeader } from './proxy-socket.js';
import { networkList, type NetworkList } from '../net/cidr.js';

export interface ListenerOptions {
  readonly name: string;
  readonly maxClients: number;
  readonly maxMessageBytes: number;
  readonly maxRecipients: number;
  readonly clientIdleMs: number;
  readonly tls: { key: Buffer; cert: Buffer } | null;
  readonly authMethods: readonly string[];
  readonly allowInsecureAuth: boolean;
  /**
   * Connections one client IP may hold at once (limits.maxClientsPerIp), and the reply the next one gets
   * before it is closed; absent = no per-client cap.
   */
  readonly perClient?: { readonly max: number; readonly reply: (ip: string) => SmtpReply };
  /**
   * Peers (addresses or ranges, or "*") that must send the HAProxy PROXY protocol header, version 1 or 2
   * (replicas behind a TCP load balancer); read by the listener itself (src/smtp/proxy-header.ts).
   */
  readonly useProxy?: readonly string[];
  /** Peers allowed to pass the real client on with XCLIENT (a front MTA). */
  readonly useXClient?: readonly string[];
}

/** The EHLO extensions a listener offers only when its next hop does (advertise()). */
const FOLLOWED = ['8BITMIME', 'SMTPUTF8', 'DSN', 'REQUIRETLS'] as const;

/**
 * One smtp-server listener and every contact the proxy has with it (apart from the hooks in
 * internals.ts): creating it, binding it, changing the settings a reload may change, following the next
 * hop's extensions, and closing it. smtp-server reads `options` at each connection and command and has
 * no public API for changing them, so apply() and advertise() write them here and nowhere else;
 * test/smtp/listener.test.ts pins that EHLO and the size check follow.
 */
export class Listener {
  private readonly smtp: SMTPServer;
  private opts: ListenerOptions;
  private readonly cap: { max: number; reply: (ip: string) => SmtpReply } | null;
  private hopExtensions: ReadonlyMap<string, string> | null = null;
  /** Set by close(): the reply every MAIL gets while the listener drains. */
  private drainReply: SmtpReply | null = null;
  /**
   * The listening socket. Ours, not smtp-server's: every accepted socket goes to smtp-server's public
   * connect(), after the PROXY header when the peer must send one (smtp-server reads only version 1).
   */
  private readonly net: net.Server;
  /** Sockets still sending their PROXY header (no SMTP session yet); destroyed by a drain. */
  private readonly pending = new Set<Socket>();
  private readonly proxyFrom: NetworkList | 'all' | null;

  /** Creates the server (not listening yet); `hooks` are smtp-server's on* handlers. */
  constructor(opts: ListenerOptions, hooks: Partial<SMTPServerOptions>, onRefused?: (kind: string) => void) {
    installConnectionHooks();
    this.opts = opts;
    this.cap = opts.perClient ? { ...opts.perClient } : null;
    if (this.cap) hooks = { ...hooks, ...perClientCap(this.cap, hooks) };
    const onMailFrom = hooks.onMailFrom;
    hooks = {
      ...hooks,
      // Draining: no new transaction (a 421 closes the connection); those under way finish.
      onMailFrom: (address, session, cb) => (this.drainReply ? cb(this.drainReply) : onMailFrom ? onMailFrom(address, session, cb) : cb()),
    };
    if (onRefused) hooks = countRefusals(hooks, onRefused);
    this.smtp = new SMTPServer({
      name: opts.name,
      banner: 'batv-proxy',
      logger: false,
      disableReverseLookup: true,
      // A client's FIN ends only its side: replies it is still owed are written, then we close
      // (src/smtp/internals.ts, half-closing clients).
      allowHalfOpen: true,
      secure: false,
      // STARTTLS only with a configured certificate (smtp-server's built-in one has a published key);
      // AUTH only when there is a users file.
      ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : {}),
      disabledCommands: [...(opts.tls ? [] : ['STARTTLS']), ...(opts.authMethods.length ? [] : ['AUTH'])],
      authMethods: [...opts.authMethods],
      authOptional: true,
      allowInsecureAuth: opts.allowInsecureAuth,
      size: opts.maxMessageBytes,
      maxClients: opts.maxClients,
      // The recipient limit is enforced by the roles, with the proxy's own reply line (452 4.5.3).
      maxRecipients: 0,
      socketTimeout: opts.clientIdleMs,
      closeTimeout: 30_000,
      // The PROXY header is read before smtp-server sees the socket (accept below).
      useProxy: false,
      // An empty list trusts nobody (smtp-server treats a non-empty list as an allowlist).
      useXClient: opts.useXClient && opts.useXClient.length ? [...opts.useXClient] : false,
      ...hooks,
    } as SMTPServerOptions);
    const from = opts.useProxy ?? [];
    this.proxyFrom = from.includes('*') ? 'all' : from.length ? networkList(from) : null;
    this.net = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
  }

  /** Hands a new socket to smtp-server, after its PROXY header when its peer must send one. */
  private accept(socket: Socket): void {
    const peer = socket.remoteAddress ?? '';
    if (!this.proxyFrom || (this.proxyFrom !== 'all' && !this.proxyFrom.has(peer))) {
      this.smtp.connect(socket);
      return;
    }
    this.pending.add(socket);
    takeProxyHeader(socket, this.opts.clientIdleMs).then(
      (client) => {
        this.pending.delete(socket);
        this.smtp.connect(socket, client ? { remoteAddress: client.address, remotePort: client.port } : {});
      },
      () => {
        // The header was refused or never came: nothing is known of the client, so no SMTP session.
        this.pending.delete(socket);
        socket.on('error', () => undefined);
        if (socket.writable) socket.end('* BAD Invalid PROXY header\r\n');
        setTimeout(() => socket.destroy(), 200).unref();
      },
    );
  }

  private get options(): Record<string, unknown> {
    return this.smtp.options as unknown as Record<string, unknown>;
  }

  /** Binds to host:port (port 0: any free port) and resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.net.once('error', onError);
      this.net.listen(port, host, () => {
        this.net.off('error', onError);
        const a = this.net.address() as AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** Errors of the listening socket. */
  onError(fn: (e: Error) => void): void {
    this.smtp.on('error', fn);
    this.net.on('error', fn);
  }

  /** Every accepted socket (also those refused at connect), for counting open connections. */
  onSocket(fn: (socket: Socket) => void): void {
    this.net.on('connection', fn);
  }

  /**
   * Takes the settings of a new snapshot that smtp-server can change while running: the EHLO name, the
   * size limit, the client limits and the idle timeout (for connections from now on), and the TLS
   * certificate when TLS stays on. Returns what it applied that an operator should hear about.
   * Switching TLS or AUTH on or off, and the PROXY/XCLIENT allowlists, need a restart (src/runtime.ts).
   */
  apply(next: ListenerOptions): string[] {
    const notes: string[] = [];
    const o = this.options;
    o.name = next.name;
    o.maxClients = next.maxClients;
    o.socketTimeout = next.clientIdleMs;
    if (this.cap && next.perClient) this.cap.max = next.perClient.max;
    if (this.opts.tls && next.tls && (!this.opts.tls.key.equals(next.tls.key) || !this.opts.tls.cert.equals(next.tls.cert))) {
      this.smtp.updateSecureContext({ key: next.tls.key, cert: next.tls.cert });
      notes.push('tls: certificate and key reloaded (new connections use them)');
    }
    this.opts = { ...next, tls: this.opts.tls && next.tls ? next.tls : this.opts.tls };
    this.offer();
    return notes;
  }

  /** Offers clients only what the next hop offers (8BITMIME, SMTPUTF8, DSN, REQUIRETLS, SIZE). */
  advertise(extensions: ReadonlyMap<string, string>): void {
    this.hopExtensions = extensions;
    this.offer();
  }

  private offer(): void {
    const o = this.options;
    const ext = this.hopExtensions;
    const limit = this.opts.maxMessageBytes;
    if (ext) for (const k of FOLLOWED) o[`hide${k}`] = !ext.has(k);
    const hopSize = Number(ext?.get('SIZE') ?? 0);
    o.size = hopSize > 0 ? Math.min(hopSize, limit) : limit;
  }

  /**
   * Stops accepting and drains (src/smtp/internals.ts, drainConnections): a connection between
   * transactions is told `reply` at once; a transaction under way may finish within `graceMs` (its
   * client may then QUIT and hear 221); a MAIL from now on is refused with `reply`; after `graceMs`
   * whatever is left is told `reply` too.
   */
  close(graceMs: number, reply: SmtpReply): Promise<void> {
    this.drainReply = reply;
    for (const socket of this.pending) socket.destroy(); // no session that could finish
    return drainConnections(this.smtp, this.net, graceMs, reply.responseCode, `${reply.enhanced} ${reply.text}`);
  }
}

/**
 * Creates a listener (not listening yet); `hooks` are smtp-server's on* handlers. `onRefused` hears the
 * kind (replyKind) of every 4xx/5xx reply of the proxy's own that a hook answers with, whichever hook it
 * was; a next hop's reply passed through is not the proxy's and is not counted.
 */
export function createListener(opts: ListenerOptions, hooks: Partial<SMTPServerOptions>, onRefused?: (kind: string) => void): Listener {
  return new Listener(opts, hooks, onRefused);
}

const ANSWERING_HOOKS = ['onConnect', 'onAuth', 'onMailFrom', 'onRcptTo', 'onData'] as const;

/** The hooks with their callbacks watched for the proxy's own refusals (one closure per call). */
function countRefusals(hooks: Partial<SMTPServerOptions>, onRefused: (kind: string) => void): Partial<SMTPServerOptions> {
  const out: Record<string, unknown> = { ...hooks };
  for (const name of ANSWERING_HOOKS) {
    const h = hooks[name] as ((...args: unknown[]) => unknown) | undefined;
    if (!h) continue;
    out[name] = (...args: unknown[]) => {
      const cb = args[args.length - 1] as (err?: unknown, ...rest: unknown[]) => void;
      args[args.length - 1] = (err?: unknown, ...rest: unknown[]) => {
        if (err && isSmtpReply(err) && err.responseCode >= 400) {
          const kind = replyKind(err);
          if (kind) onRefused(kind);
        }
        cb(err, ...rest);
      };
      return h(...args);
    };
  }
  return out as Partial<SMTPServerOptions>;
}

/**
 * Counts open connections per client IP (the PROXY/XCLIENT address when one was given) and refuses the
 * one over `cap.max` (read at each connection, so a reload changes it) before any other hook runs.
 * smtp-server calls onClose once for every connection, the refused ones included, so only counted
 * sessions are uncounted.
 */
function perClientCap(cap: { readonly max: number; readonly reply: (ip: string) => SmtpReply }, hooks: Partial<SMTPServerOptions>): Pick<SMTPServerOptions, 'onConnect' | 'onClose'> {
  const open = new Map<string, number>();
  const counted = new WeakMap<object, string>();
  const { onConnect, onClose } = hooks;
  return {
    onConnect(session, cb) {
      const ip = session.remoteAddress;
      const n = open.get(ip) ?? 0;
      if (n >= cap.max) return cb(cap.reply(ip));
      open.set(ip, n + 1);
      counted.set(session, ip);
      if (onConnect) onConnect(session, cb);
      else cb();
    },
    onClose(session, ...rest) {
      const ip = counted.get(session);
      if (ip !== undefined) {
        counted.delete(session);
        const n = (open.get(ip) ?? 1) - 1;
        if (n > 0) open.set(ip, n);
        else open.delete(ip);
      }
      if (onClose) (onClose as (...a: unknown[]) => void).call(this, session, ...rest);
    },
  };
}

/** Anything thrown in a hook, as the reply the client gets. */
export function toReply(e: unknown): SmtpReply {
  if (isSmtpReply(e)) return e;
  if (e instanceof NextHopError) return e.toSmtpReply();
  return transportReplies.internal();
}

/**
 * Runs an async hook body and calls smtp-server's callback exactly once: with nothing on success, with
 * the message text when the body returns one (DATA), or with the error reply.
 */
export function hook(
  body: () => Promise<string | void>,
  cb: (err?: Error | null, message?: string) => void,
  onUnexpected: (e: unknown) => void,
): void {
  let done = false;
  body().then(
    (message) => {
      if (done) return;
      done = true;
      if (typeof message === 'string') cb(null, message);
      else cb();
    },
    (e: unknown) => {
      if (done) return;
      done = true;
      if (!isSmtpReply(e) && !(e instanceof NextHopError)) onUnexpected(e);
      cb(toReply(e));
    },
  );
}

/** Fails with a 552 once more than `limit` bytes have passed. */
export class SizeLimit extends Transform {
  private seen = 0;
  private lastCR = false;
  /**
   * @param refuseBareLineEnds the reply that refuses a message with a bare CR, a bare LF or a NUL
   *   (limits.bareLineEnds "reject"; docs/smuggling.md), or null to let the next-hop encoder normalise it.
   */
  constructor(private readonly limit: number, private readonly refuseBareLineEnds: SmtpReply | null = null) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) return cb(transportReplies.messageTooLarge(this.limit));
    if (this.refuseBareLineEnds) {
      const bad = hasBareLineEnd(chunk, this.lastCR);
      this.lastCR = chunk[chunk.length - 1] === 0x0d;
      if (bad) return cb(this.refuseBareLineEnds);
    }
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    cb(this.refuseBareLineEnds && this.lastCR ? this.refuseBareLineEnds : null);
  }
  get bytes(): number {
    return this.seen;
  }
}

/** The client's connection closed before the end of the message (the transaction logs `client-left`). */
export class ClientLeft extends SmtpReply {
  constructor() {
    const r = transportReplies.clientLeft();
    super(r.responseCode, r.enhanced, r.text);
  }
}

/**
 * Pipes smtp-server's DATA stream through `stages` and returns the last stage as the body to relay.
 *
 * Every stage has an 'error' listener from the start: a stage can fail (size limit, header limit, the
 * client vanishing) before the relay has started reading, and an unheard 'error' would be an uncaught
 * exception that ends the process. The first failure is kept (`failure()`) and reported once through
 * `onFailure`, so the caller can abort the next-hop session at once: a message cut short is never
 * terminated. When the client vanishes (the source is destroyed before its end) the stages are destroyed
 * with a 451. `drain()` detaches our stages and lets smtp-server read the rest of the message itself.
 */
export function bodyFrom(
  source: Readable,
  stages: readonly Transform[],
  onFailure: (e: Error) => void = () => undefined,
): { body: Readable; drain(): void; failure(): Error | null } {
  let failed: Error | null = null;
  const fail = (e: Error) => {
    if (failed) return;
    failed = e;
    onFailure(e);
  };
  let last: Readable = source;
  for (const s of stages) {
    s.on('error', fail);
    last.pipe(s);
    if (last !== source) last.on('error', (e: Error) => s.destroy(e));
    last = s;
  }
  const first = stages[0];
  let ended = false;
  source.once('end', () => { ended = true; });
  source.once('close', () => {
    if (!ended && first && !first.destroyed) first.destroy(new ClientLeft());
  });
  // Our listener keeps smtp-server from destroying the stream silently; the 'close' above handles it.
  source.on('error', () => undefined);
  return {
    body: last,
    failure: () => failed,
    drain() {
      if (first) source.unpipe(first);
      for (const s of stages) if (!s.destroyed) s.destroy();
      source.resume();
    },
  };
}
