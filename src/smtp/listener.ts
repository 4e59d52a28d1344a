/**
 * smtp-server with the proxy's defaults, async hooks turned into callbacks exactly once, and body
 * plumbing that never destroys smtp-server's own DATA stream (destroying it would end the DATA phase
 * early and let the rest of the client's message be read as commands).
 */
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SmtpReply, isSmtpReply } from '../reply.js';
import { NextHopError } from './client.js';
import { installConnectionHooks } from './internals.js';
import { hasBareLineEnd } from './dotstuff.js';

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
  /** Peers allowed to send the HAProxy PROXY protocol header (replicas behind a TCP load balancer). */
  readonly useProxy?: readonly string[];
  /** Peers allowed to pass the real client on with XCLIENT (a front MTA). */
  readonly useXClient?: readonly string[];
}

/** Creates the server (not listening yet); `hooks` are smtp-server's on* handlers. */
export function createListener(opts: ListenerOptions, hooks: Partial<SMTPServerOptions>): SMTPServer {
  installConnectionHooks();
  if (opts.perClient) hooks = { ...hooks, ...perClientCap(opts.perClient, hooks) };
  return new SMTPServer({
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
    // An empty list trusts nobody (smtp-server treats a non-empty list as an allowlist).
    useProxy: opts.useProxy && opts.useProxy.length ? [...opts.useProxy] : false,
    useXClient: opts.useXClient && opts.useXClient.length ? [...opts.useXClient] : false,
    ...hooks,
  } as SMTPServerOptions);
}

/**
 * Counts open connections per client IP (the PROXY/XCLIENT address when one was given) and refuses the
 * one over `max` before any other hook runs. smtp-server calls onClose once for every connection, the
 * refused ones included, so only counted sessions are uncounted.
 */
function perClientCap(cap: NonNullable<ListenerOptions['perClient']>, hooks: Partial<SMTPServerOptions>): Pick<SMTPServerOptions, 'onConnect' | 'onClose'> {
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
  return new SmtpReply(451, '4.3.0', 'Local error in processing; try again later');
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
    if (this.seen > this.limit) return cb(new SmtpReply(552, '5.3.4', `Message exceeds fixed maximum message size ${this.limit}`));
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
    super(451, '4.4.2', 'Client connection closed before the end of the message');
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
