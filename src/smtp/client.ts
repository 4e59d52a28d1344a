/**
 * The command-level next-hop SMTP client: one command at a time, each reply handed back whatever its code,
 * so the relay can answer its own client with exactly what the next hop said (docs/architecture.md). nodemailer's
 * SMTPConnection.send() does MAIL, RCPT and DATA in one call and cannot do that.
 *
 *   reply = *( code "-" text CRLF ) code [ SP text ] CRLF     (RFC 5321 §4.2; bare LF accepted)
 *   code  = %x32-35 2DIGIT                                    (the same code on every line)
 *
 * Transport failures reject with a {@link NextHopError} (stage + kind), mapped to a 4xx for the proxy's
 * client in one place ({@link NextHopError.toSmtpReply}); replies, 4xx and 5xx included, are never errors.
 */
import net from 'node:net';
import os from 'node:os';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import { DotStuffer, writeStuffed } from './dotstuff.js';
import { NextHopError, firstLine, type NextHopErrorKind, type NextHopStage, type Reply } from './hop-reply.js';

/** Longest reply line accepted, in bytes; a longer one is a protocol error (bounded memory). */
export const MAX_REPLY_LINE_BYTES = 4096;
/** Most lines accepted in one multi-line reply; more is a protocol error. */
export const MAX_REPLY_LINES = 100;
/** Timeouts used when NextHopOptions leaves them out, in ms; together below smtp-server's 60 s socketTimeout. */
export const DEFAULT_TIMEOUTS_MS = { connect: 10_000, greeting: 20_000, command: 20_000, data: 45_000 } as const;

/** Where and how to reach the next hop. Timeouts not given take DEFAULT_TIMEOUTS_MS. */
export interface NextHopOptions {
  host: string;
  port: number;
  /** Implicit TLS from the first byte (smtps, port 465). */
  secure?: boolean;
  /** Fail at 'starttls' unless the session ends up encrypted. */
  requireTls?: boolean;
  /** Node TLS options (rejectUnauthorized, ca, servername, ...) for implicit TLS and STARTTLS. */
  tls?: tls.ConnectionOptions;
  /** Our EHLO/HELO name; defaults to os.hostname(). */
  name?: string;
  /** AUTH PLAIN, or AUTH LOGIN when only that is offered. */
  auth?: { user: string; pass: string };
  connectTimeoutMs?: number;
  greetingTimeoutMs?: number;
  /** Wait for the reply to each command. */
  commandTimeoutMs?: number;
  /** Wait for the reply after end-of-data, and for the next hop to take more body bytes. */
  dataTimeoutMs?: number;
}

/** One open SMTP session with the next hop. Calls are queued and run one at a time. */
export interface NextHopSession {
  /** EHLO keywords, upper-cased, to their parameters: SIZE → "10240000", 8BITMIME → "". Empty after HELO. */
  readonly extensions: Map<string, string>;
  /** Whether the session runs over TLS (implicit or STARTTLS). */
  readonly secure: boolean;
  /** True once the connection is gone or quit()/abort() was called. */
  readonly closed: boolean;
  /** Sends one command line (no CRLF; not DATA/BDAT/STARTTLS) and resolves with the reply, whatever its code. */
  command(line: string): Promise<Reply>;
  /**
   * Sends DATA; unless the reply is 354, resolves with it and leaves `body` untouched. Else streams `body`
   * dot-stuffed with backpressure, terminates it and resolves with the final reply (also with a 4xx/5xx the
   * next hop sends before the end, after which the session is closed). A body that errors or is destroyed
   * before its end is never terminated: the session is aborted and data() rejects with the body's error.
   * When it stops reading early it lets the rest of `body` drain. `beforeEnd` runs once the whole body is
   * read, before its last chunk and the final "." are written (in one write); an Error it returns or throws
   * aborts likewise (that last chunk is never sent) and data() rejects with it.
   */
  data(body: Readable, beforeEnd?: () => Error | null | undefined): Promise<Reply>;
  /** RSET; resolves with the reply. */
  rset(): Promise<Reply>;
  /** QUIT, waiting at most commandTimeoutMs for the reply, then closes. Never rejects. */
  quit(): Promise<Reply | null>;
  /** Destroys the connection at once; a message in flight is never terminated. */
  abort(): void;
  /** Calls `listener` once when the connection goes: with null if we closed it, else with what ended it. */
  onClose(listener: (err: NextHopError | null) => void): void;
}

/**
 * Opens a session: TCP (TCP_NODELAY), greeting, EHLO (HELO if EHLO gets 5xx), STARTTLS when offered (or
 * implicit TLS), EHLO again, AUTH when configured. Rejects with a {@link NextHopError} on any failure,
 * a non-2xx greeting included, and leaves nothing open behind.
 *
 * @example
 *   const s = await connectNextHop({ host: '127.0.0.1', port: 2600, name: 'proxy.example', commandTimeoutMs: 5000 });
 *   const r = await s.command('MAIL FROM:<a@b.example> SIZE=12'); // { code: 250, enhanced: '2.1.0', ... }
 */
export async function connectNextHop(opts: NextHopOptions): Promise<NextHopSession> {
  const session = new Session(opts);
  await session.open().catch((err: unknown) => {
    session.abort();
    throw err;
  });
  return session;
}

interface Waiter {
  stage: NextHopStage;
  timeoutMs: number;
  /** false while waiting for a socket event: a reply then is unsolicited. */
  wantsReply: boolean;
  /**
   * Installed synchronously when this one is done (its event fired, or it got a 354 for DATA), so that a
   * reply in the same read (the greeting right after a TLS handshake, an early reply mid-body) finds it.
   */
  next: Waiter | null;
  timer?: NodeJS.Timeout;
  settled: boolean;
  settle(reply: Reply | null, err?: Error): void;
}

const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/;
const REPLY_LINE = /^([2-5]\d\d)(?:([ -])(.*))?$/s;
const STAGE_OF: Record<string, NextHopStage> = { MAIL: 'mail', RCPT: 'rcpt', RSET: 'rset', QUIT: 'quit', EHLO: 'ehlo', HELO: 'ehlo', AUTH: 'auth' };
const REFUSED: Record<string, string> = {
  ECONNREFUSED: 'connection refused', EHOSTUNREACH: 'host unreachable', ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host not found', EAI_AGAIN: 'name lookup failed', EADDRNOTAVAIL: 'address not available',
};

class Session implements NextHopSession {
  extensions = new Map<string, string>();
  secure = false;
  closed = false;
  private readonly hop: string;
  private readonly t: { connect: number; greeting: number; command: number; data: number };
  private socket!: net.Socket;
  private phase: 'tcp' | 'tls' | 'smtp' = 'tcp';
  private stage: NextHopStage = 'connect';
  private partial: Buffer | null = null;
  private lines: string[] = [];
  private lineCode = 0;
  private waiter: Waiter | null = null;
  private failure: NextHopError | null = null;
  private byUs = false;
  private opened = false;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly closeListeners: Array<(err: NextHopError | null) => void> = [];

  constructor(private readonly opts: NextHopOptions) {
    if (opts.name !== undefined && !/^[\x21-\x7e]+$/.test(opts.name)) {
      throw new TypeError(`Cannot use EHLO name "${opts.name}": it must be printable ASCII without spaces`);
    }
    this.hop = `${opts.host}:${opts.port}`;
    const d = DEFAULT_TIMEOUTS_MS;
    this.t = { connect: opts.connectTimeoutMs ?? d.connect, greeting: opts.greetingTimeoutMs ?? d.greeting,
      command: opts.commandTimeoutMs ?? d.command, data: opts.dataTimeoutMs ?? d.data };
  }

  async open(): Promise<void> {
    this.socket = net.connect({ host: this.opts.host, port: this.opts.port }).setNoDelay(true);
    this.attach(this.socket);
    const g = this.makeWaiter('greeting', this.t.greeting);
    await this.wait('connect', this.t.connect, [this.socket, 'connect'], this.opts.secure ? null : g.waiter);
    if (this.opts.secure) await this.startTls('connect', this.t.connect, g.waiter);
    const greeting = await g.promise;
    if (greeting.code >= 300) throw this.fail('greeting', 'refused', `greeting ${firstLine(greeting)}`, greeting);
    await this.hello();
    if (!this.secure && this.extensions.has('STARTTLS')) {
      const r = await this.send('STARTTLS', 'starttls', this.t.command);
      if (r.code === 220) {
        if (this.partial) throw this.fail('starttls', 'protocol', 'bytes after the 220 to STARTTLS');
        await this.startTls('starttls', this.t.command);
        await this.hello();
      } else if (this.opts.requireTls) {
        throw this.fail('starttls', 'tls', `STARTTLS refused: ${firstLine(r)}`, r);
      }
    }
    if (this.opts.requireTls && !this.secure) throw this.fail('starttls', 'tls', 'STARTTLS not offered');
    if (this.opts.auth) await this.authenticate(this.opts.auth);
    this.opened = true;
  }

  command(line: string): Promise<Reply> {
    const verb = /^\S*/.exec(line)?.[0].toUpperCase() ?? '';
    if (/[\r\n]/.test(line)) return Promise.reject(new TypeError('Cannot send command: it contains CR or LF'));
    if (verb === 'DATA' || verb === 'BDAT' || verb === 'STARTTLS') {
      return Promise.reject(new TypeError(`Cannot send ${verb} with command(): use data() (STARTTLS is automatic)`));
    }
    return this.enqueue(() => this.send(line, STAGE_OF[verb] ?? 'command', this.t.command));
  }

  rset(): Promise<Reply> {
    return this.enqueue(() => this.send('RSET', 'rset', this.t.command));
  }

  quit(): Promise<Reply | null> {
    return this.enqueue(async () => {
      if (this.closed) return null;
      this.byUs = true;
      const reply = await this.send('QUIT', 'quit', this.t.command).catch(() => null);
      return this.withdraw(reply, 'quit');
    });
  }

  abort(): void {
    this.withdraw(null, 'aborted by the proxy');
  }

  onClose(listener: (err: NextHopError | null) => void): void {
    if (this.closed) queueMicrotask(() => listener(this.byUs ? null : this.failure));
    else this.closeListeners.push(listener);
  }

  data(body: Readable, beforeEnd?: () => Error | null | undefined): Promise<Reply> {
    if (body.readableEnded || body.destroyed) {
      return Promise.reject(new TypeError('Cannot send a body that has already ended or been destroyed'));
    }
    return this.enqueue(async () => {
      const final = this.makeWaiter('body', 0);
      const first = await this.send('DATA', 'data', this.t.command, final.waiter);
      if (first.code !== 354) return first;
      const stuffer = new DotStuffer();
      this.stage = 'body';
      const onStuck = (): unknown => this.fail('body', 'timeout', `could not write for ${this.t.data} ms`);
      const outcome = await writeStuffed(body, this.socket, stuffer, { idleTimeoutMs: this.t.data, onStuck, stop: final.promise })
        .catch((err: unknown) => {
          drain(body);
          throw this.withdraw(err, 'message source failed before its end');
        });
      if (outcome.outcome === 'stopped' || final.waiter.settled) {
        drain(body);
        const early = await final.promise; // rejects when the session failed
        if (early.code < 400) throw this.fail('body', 'protocol', `reply before end of data: ${firstLine(early)}`, early);
        return this.withdraw(early, `answered ${early.code} before end of data`);
      }
      const veto = ((): unknown => { try { return beforeEnd?.() ?? null; } catch (err) { return err; } })();
      if (veto !== null) throw this.withdraw(veto, 'message withheld by the proxy before its end');
      final.waiter.stage = this.stage = 'data-end';
      final.waiter.timer = setTimeout(() => this.fail('data-end', 'timeout', `no reply in ${this.t.data} ms`), this.t.data);
      // The body's last chunk and the terminator in one write (writeStuffed held the chunk back).
      this.socket.write(outcome.last.length ? Buffer.concat([outcome.last, stuffer.end()]) : stuffer.end());
      return final.promise;
    });
  }

  private async hello(): Promise<void> {
    const name = this.opts.name ?? os.hostname();
    const ehlo = await this.send(`EHLO ${name}`, 'ehlo', this.t.command);
    if (ehlo.code < 300) {
      const kw = ehlo.lines.slice(1).map((l) => /^(\S+)\s*(.*)$/.exec(l.trim())).filter((m) => m !== null);
      this.extensions = new Map(kw.map((m) => [(m[1] as string).toUpperCase(), (m[2] as string).trim()]));
      return;
    }
    if (ehlo.code < 500) throw this.fail('ehlo', 'refused', `EHLO answered ${firstLine(ehlo)}`, ehlo);
    const helo = await this.send(`HELO ${name}`, 'ehlo', this.t.command);
    if (helo.code >= 300) throw this.fail('ehlo', 'refused', `HELO answered ${firstLine(helo)}`, helo);
    this.extensions = new Map();
  }

  private async authenticate(auth: { user: string; pass: string }): Promise<void> {
    const offered = (this.extensions.get('AUTH') ?? '').toUpperCase().split(/\s+/);
    const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
    const say = (line: string): Promise<Reply> => this.send(line, 'auth', this.t.command);
    let r: Reply;
    if (offered.includes('PLAIN')) r = await say(`AUTH PLAIN ${b64(`\0${auth.user}\0${auth.pass}`)}`);
    else if (offered.includes('LOGIN')) {
      r = await say('AUTH LOGIN');
      if (r.code === 334) r = await say(b64(auth.user));
      if (r.code === 334) r = await say(b64(auth.pass));
    } else throw this.fail('auth', 'auth', this.extensions.has('AUTH') ? 'no PLAIN or LOGIN offered' : 'AUTH not offered');
    if (r.code !== 235) throw this.fail('auth', 'auth', firstLine(r), r);
  }

  private async startTls(stage: NextHopStage, timeoutMs: number, next: Waiter | null = null): Promise<void> {
    const plain = this.socket.off('data', this.onData);
    const o: tls.ConnectionOptions = { host: this.opts.host, ...this.opts.tls, socket: plain };
    if (o.servername === undefined && !net.isIP(this.opts.host)) o.servername = this.opts.host;
    this.phase = 'tls';
    this.socket = tls.connect(o);
    this.attach(this.socket);
    await this.wait(stage, timeoutMs, [this.socket, 'secureConnect'], next);
    this.secure = true;
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private send(line: string, stage: NextHopStage, timeoutMs: number, next: Waiter | null = null): Promise<Reply> {
    const f = this.failure;
    if (f && this.opened) return Promise.reject(new NextHopError(this.hop, stage, 'closed', `gone: ${f.message}`, null, { cause: f }));
    const p = this.wait(stage, timeoutMs, undefined, next);
    this.socket.write(`${line}\r\n`);
    return p;
  }

  /** Makes the one current waiter: for the next reply, or for a socket event (connect, TLS handshake). */
  private wait(stage: NextHopStage, timeoutMs: number, event?: [net.Socket, string], next: Waiter | null = null): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    const { waiter, promise } = this.makeWaiter(stage, timeoutMs, next);
    waiter.wantsReply = !event;
    this.install(waiter);
    event?.[0].once(event[1], () => {
      if (this.waiter !== waiter) return; // it failed meanwhile
      this.phase = 'smtp';
      this.install(next);
      waiter.settle(null);
    });
    return promise;
  }

  private install(w: Waiter | null): void {
    this.waiter = w;
    if (!w) return;
    this.stage = w.stage;
    if (w.timeoutMs > 0) w.timer = setTimeout(() => this.fail(w.stage, 'timeout', `no reply in ${w.timeoutMs} ms`), w.timeoutMs);
  }

  private makeWaiter(stage: NextHopStage, timeoutMs: number, next: Waiter | null = null): { waiter: Waiter; promise: Promise<Reply> } {
    let waiter!: Waiter;
    const promise = new Promise<Reply>((resolve, reject) => {
      const w: Waiter = waiter = {
        stage, timeoutMs, next, wantsReply: true, settled: false,
        settle(reply, err) {
          if (w.settled) return;
          w.settled = true;
          clearTimeout(w.timer);
          if (err) reject(err);
          else resolve(reply as Reply);
        },
      };
    });
    promise.catch(() => undefined); // whoever awaits it sees the rejection; it is never unhandled
    return { waiter, promise };
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? 'error';
      const refused = REFUSED[code];
      if (this.phase === 'tcp') this.fail(this.stage, refused ? 'refused' : 'closed', refused ?? code, null, err);
      else if (this.phase === 'tls') this.fail(this.stage, 'tls', err.message, null, err);
      else this.fail(this.stage, 'closed', code, null, err);
    });
    socket.on('close', () => this.fail(this.stage, this.phase === 'tls' ? 'tls' : 'closed', 'connection closed by the next hop'));
  }

  /** Splits the input into lines (a partial one is kept, bounded) and hands them to onLine. */
  private readonly onData = (chunk: Buffer): void => {
    let start = 0;
    while (!this.failure) {
      const nl = chunk.indexOf(0x0a, start);
      const piece = chunk.subarray(start, nl === -1 ? chunk.length : nl);
      const line = this.partial ? Buffer.concat([this.partial, piece]) : piece;
      if (line.length > MAX_REPLY_LINE_BYTES + 1) return void this.fail(this.stage, 'protocol', `reply line over ${MAX_REPLY_LINE_BYTES} bytes`);
      if (nl === -1) return void (this.partial = line.length > 0 ? Buffer.from(line) : null);
      this.partial = null;
      start = nl + 1;
      this.onLine(line.toString('utf8', 0, line[line.length - 1] === 0x0d ? line.length - 1 : line.length));
    }
  };

  private onLine(text: string): void {
    const m = REPLY_LINE.exec(text);
    if (!m) return void this.fail(this.stage, 'protocol', `not a reply line: "${text.slice(0, 80)}"`);
    const code = Number(m[1]);
    if (this.lines.length > 0 && code !== this.lineCode) return void this.fail(this.stage, 'protocol', 'reply codes differ between lines');
    this.lineCode = code;
    this.lines.push(m[3] ?? '');
    if (this.lines.length > MAX_REPLY_LINES) return void this.fail(this.stage, 'protocol', `reply over ${MAX_REPLY_LINES} lines`);
    if (m[2] === '-') return;
    const reply: Reply = { code, enhanced: ENHANCED.exec(this.lines[0] ?? '')?.[1] ?? null, lines: this.lines };
    this.lines = [];
    const w = this.waiter;
    if (!w || !w.wantsReply) {
      const kind = code === 421 ? 'closed' : 'protocol';
      return void this.fail(this.stage, kind, `unsolicited ${kind === 'closed' ? '' : 'reply '}${firstLine(reply)}`, reply);
    }
    this.install(code === 354 ? w.next : null);
    w.settle(reply);
  }

  /** Closes the session on our side (no final "." ever follows) and returns `value`. */
  private withdraw<T>(value: T, why: string): T {
    if (!this.closed) {
      this.byUs = true;
      this.fail(this.stage, 'closed', why);
    }
    return value;
  }

  /** The first failure ends the session: it rejects what is waiting, destroys the socket, tells listeners. */
  private fail(stage: NextHopStage, kind: NextHopErrorKind, detail: string, reply: Reply | null = null, cause?: unknown): NextHopError {
    const w = this.waiter;
    this.waiter = null;
    if (this.failure) {
      w?.settle(null, this.failure);
      return this.failure;
    }
    const err = new NextHopError(this.hop, stage, kind, detail, reply, cause === undefined ? undefined : { cause });
    this.failure = err;
    this.closed = true;
    w?.settle(null, err);
    this.socket?.destroy();
    for (const l of this.closeListeners.splice(0)) l(this.byUs ? null : err);
    return err;
  }
}

/** Lets the rest of a body we stopped reading drain unread, its errors included. */
function drain(body: Readable): void {
  body.on('error', () => undefined).resume();
}
