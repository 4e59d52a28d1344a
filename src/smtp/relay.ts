/**
 * Relaying one client connection's transactions to next hops, command by command (docs/architecture.md,
 * "Relaying to the next hop").
 *
 * A RelayLink belongs to one client connection. Each transaction goes to exactly one next hop; the link
 * keeps its next-hop session between transactions and gives it back to the pool when the client leaves,
 * so a client that sends one message per connection still reuses warm next-hop sessions (no TCP connect,
 * greeting and EHLO per message).
 *
 * Nothing here decides policy: callers pass the MAIL/RCPT lines to send and get the next hop's replies.
 * Transport failures reject with NextHopError (mapped to 421/451 by the caller, never 2xx or 5xx).
 */
import type { Readable } from 'node:stream';
import type { SmtpReply } from '../reply.js';
import { connectNextHop, type NextHopOptions, type NextHopSession } from './client.js';
import { NextHopError, type Reply } from './hop-reply.js';

export interface HopAddress {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly secure: boolean;
}

export interface PoolOptions {
  /** Options for new sessions to a hop (timeouts, TLS, AUTH, EHLO name). */
  readonly sessionOptions: (hop: HopAddress) => NextHopOptions;
  /** Idle sessions kept per hop. */
  readonly maxIdlePerHop: number;
  /** How long an idle session is kept before QUIT (stay below the next hop's own idle timeout). */
  readonly idleMs: number;
  /** Called with every session's EHLO keywords after connecting (to keep advertised extensions in step). */
  readonly onExtensions?: (hop: HopAddress, ext: ReadonlyMap<string, string>) => void;
}

interface Idle {
  readonly session: NextHopSession;
  readonly timer: NodeJS.Timeout;
}

/** Warm next-hop sessions, per hop URL. */
export class NextHopPool {
  private readonly idle = new Map<string, Idle[]>();
  private closing = false;
  /** Sessions opened so far (for metrics and tests). */
  opened = 0;

  constructor(private readonly opts: PoolOptions) {}

  /** An idle session for the hop if one is open, else a new one. */
  async acquire(hop: HopAddress): Promise<{ session: NextHopSession; reused: boolean }> {
    const list = this.idle.get(hop.url);
    while (list && list.length) {
      const { session, timer } = list.pop()!;
      clearTimeout(timer);
      if (!session.closed) return { session, reused: true };
    }
    return { session: await this.open(hop), reused: false };
  }

  async open(hop: HopAddress): Promise<NextHopSession> {
    const session = await connectNextHop(this.opts.sessionOptions(hop));
    this.opened++;
    this.opts.onExtensions?.(hop, session.extensions);
    return session;
  }

  /** Takes back a session with no transaction open; quits it when the pool is full or closing. */
  release(hop: HopAddress, session: NextHopSession): void {
    if (session.closed) return;
    const list = this.idle.get(hop.url) ?? [];
    if (this.closing || list.length >= this.opts.maxIdlePerHop) {
      void session.quit();
      return;
    }
    const timer = setTimeout(() => {
      const l = this.idle.get(hop.url);
      const i = l?.findIndex((x) => x.session === session) ?? -1;
      if (l && i >= 0) l.splice(i, 1);
      void session.quit();
    }, this.opts.idleMs);
    timer.unref();
    list.push({ session, timer });
    this.idle.set(hop.url, list);
  }

  /** QUITs every idle session; later releases quit at once. */
  async close(): Promise<void> {
    this.closing = true;
    const all = [...this.idle.values()].flat();
    this.idle.clear();
    await Promise.all(all.map(({ session, timer }) => { clearTimeout(timer); return session.quit(); }));
  }

  idleCount(): number {
    return [...this.idle.values()].reduce((n, l) => n + l.length, 0);
  }
}

/**
 * One client connection's relay state: the current next-hop session and whether a transaction is open
 * on it.
 */
export class RelayLink {
  private session: NextHopSession | null = null;
  private hop: HopAddress | null = null;
  private inTransaction = false;
  /**
   * The last DATA ended in a refusal: if it was DATA itself that was refused (no 354), the next hop's
   * transaction is still open, so the session gets an RSET before its next MAIL or before it is pooled.
   */
  private needsReset = false;
  private sendingData = false;

  constructor(private readonly pool: NextHopPool) {}

  /** The extensions of the current session (after begin()). */
  get extensions(): ReadonlyMap<string, string> {
    return this.session?.extensions ?? new Map();
  }

  /**
   * Starts a transaction at `hop` with `mailLine` ("MAIL FROM:<...> params"). Resets an open transaction
   * first; switches sessions when the hop differs. A pooled session found dead at MAIL is replaced once
   * by a fresh one (nothing was accepted yet, so this is safe).
   */
  async begin(hop: HopAddress, mail: string | ((extensions: ReadonlyMap<string, string>) => string)): Promise<Reply> {
    if (this.session && (this.session.closed || this.hop?.url !== hop.url)) this.release();
    if (this.session && (this.inTransaction || this.needsReset)) {
      this.needsReset = false;
      try {
        await this.session.rset();
      } catch {
        this.abort();
      }
    }
    let reused = true;
    if (!this.session) {
      const got = await this.pool.acquire(hop);
      this.session = got.session;
      this.hop = hop;
      reused = got.reused;
    }
    this.inTransaction = true;
    // The line may depend on what this session's next hop advertised (parameters are relayed only then).
    const line = (s: NextHopSession): string => (typeof mail === 'string' ? mail : mail(s.extensions));
    try {
      return await this.session.command(line(this.session));
    } catch (e) {
      this.abort();
      if (!reused || !(e instanceof NextHopError) || e.kind !== 'closed') throw e;
      this.session = await this.pool.open(hop);
      this.hop = hop;
      this.inTransaction = true;
      try {
        return await this.session.command(line(this.session));
      } catch (e2) {
        this.abort();
        throw e2;
      }
    }
  }

  async rcpt(line: string): Promise<Reply> {
    const s = this.requireSession();
    try {
      return await s.command(line);
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  /**
   * Sends DATA and the body; the transaction is over whatever the outcome. `beforeEnd` runs once the
   * whole body is written and before the final "."; an SmtpReply from it aborts the session so the next
   * hop never gets the message, and is thrown.
   */
  async data(body: Readable, beforeEnd?: () => SmtpReply | null): Promise<Reply> {
    const s = this.requireSession();
    this.sendingData = true;
    try {
      const reply = await s.data(body, beforeEnd);
      this.inTransaction = false;
      this.needsReset = reply.code >= 400;
      return reply;
    } catch (e) {
      this.abort();
      throw e;
    } finally {
      this.sendingData = false;
    }
  }

  /** The client left: abort a transaction in flight (nothing half-sent may complete), else pool the session. */
  close(): void {
    if (!this.session) return;
    if (this.sendingData) {
      // The client vanished mid-message: the next hop must never see the end of it.
      this.abort();
      return;
    }
    if (this.inTransaction || this.needsReset) {
      // MAIL/RCPT may have been accepted, but no DATA was completed: RSET and keep the session warm.
      const { session, hop } = this;
      this.session = null;
      this.inTransaction = false;
      this.needsReset = false;
      session.rset().then(
        (r) => (r.code === 250 && hop ? this.pool.release(hop, session) : session.abort()),
        () => session.abort(),
      );
      return;
    }
    this.release();
  }

  /** Drops the session for good (after a transport failure, or when the client vanished mid-DATA). */
  abort(): void {
    this.session?.abort();
    this.session = null;
    this.inTransaction = false;
    this.needsReset = false;
  }

  private release(): void {
    if (this.session && this.hop && !this.inTransaction && !this.needsReset) this.pool.release(this.hop, this.session);
    else this.session?.abort();
    this.session = null;
    this.inTransaction = false;
    this.needsReset = false;
  }

  private requireSession(): NextHopSession {
    if (!this.session || !this.inTransaction) throw new Error('RelayLink: no transaction open');
    return this.session;
  }
}
