/**
 * The transaction relaying both listeners share: the context they run in (the current runtime snapshot,
 * pool, log, metrics), a transaction that keeps the snapshot it started with from MAIL to its end, and
 * the relaying of MAIL, RCPT and DATA with one log line per transaction (docs/architecture.md).
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { SMTPServerSession } from 'smtp-server';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { Role, Runtime } from './runtime.js';
import { passThrough, passThroughText, replyLine, NextHopError, type Reply } from './smtp/hop-reply.js';
import { HeaderRewriter, protocolName, receivedHeader } from './smtp/headers.js';
import { isSmtpReply, type SmtpReply } from './reply.js';
import { closeConnection } from './smtp/internals.js';
import { bodyFrom, ClientLeft, SizeLimit } from './smtp/listener.js';
import { RelayLink, type HopAddress, type NextHopPool } from './smtp/relay.js';
import { formatPath } from './tags/address.js';
import { replies } from './policy/replies.js';
import { clientParams, forNextHop } from './policy/params.js';

export interface RelayContext {
  /** The current snapshot. A transaction reads it once, at MAIL (Transaction.rt); see src/runtime.ts. */
  runtime(): Runtime;
  readonly clock: Clock;
  readonly pool: NextHopPool;
  readonly log: Logger;
  readonly metrics: Metrics;
  finishTransaction(txn: Transaction | null, outcome: string): void;
}

export interface RcptRecord {
  readonly rcpt: string;
  readonly to: string;
  verdict?: string;
  reply?: string;
}

export interface Transaction {
  readonly id: string;
  readonly role: Role;
  /** The runtime snapshot taken at MAIL: every decision of this transaction is made with it. */
  readonly rt: Runtime;
  readonly sender: string;
  readonly params: readonly string[];
  rewritten: string;
  hop: HopAddress | null;
  readonly rcpts: RcptRecord[];
  accepted: number;
  readonly startedMs: number;
  /** Extra fields for the transaction's log line. */
  readonly fields: Record<string, unknown>;
  done: boolean;
  readonly utf8: boolean;
}

/** Transaction ids: a per-process random prefix and a counter (no random bytes per transaction). */
const ID_PREFIX = randomBytes(3).toString('hex').toUpperCase();
let idSeq = 0;

/**
 * A new transaction at MAIL. Its parameters are checked here (src/policy/params.ts).
 * @throws SmtpReply 555 5.5.4 for a parameter the proxy does not relay.
 */
export function newTransaction(ctx: RelayContext, rt: Runtime, session: SMTPServerSession, role: Role, sender: string, asSent: readonly string[]): Transaction {
  const params = clientParams('MAIL', asSent, typeof session.user === 'string');
  return {
    id: `${ID_PREFIX}${(idSeq = (idSeq + 1) % 0x1000000).toString(16).toUpperCase().padStart(6, '0')}`,
    role,
    rt,
    sender,
    params,
    rewritten: sender,
    hop: null,
    rcpts: [],
    accepted: 0,
    startedMs: ctx.clock.now(),
    fields: { client: session.remoteAddress, helo: session.hostNameAppearsAs, user: typeof session.user === 'string' ? session.user : undefined, conn: session.id },
    done: false,
    utf8: params.some((p) => p.toUpperCase() === 'SMTPUTF8'),
  };
}

/** One client connection's relay link and current transaction. */
export interface Conn<T extends Transaction> {
  readonly link: RelayLink;
  txn: T | null;
}

/**
 * Per-connection state for a role, kept beside smtp-server's session (never on it), plus the two things
 * every role does with it: start over at MAIL, and clean up when the client leaves.
 */
export function connections<T extends Transaction>(ctx: RelayContext, role: Role) {
  const table = new WeakMap<SMTPServerSession, Conn<T>>();
  return {
    get(session: SMTPServerSession): Conn<T> {
      let c = table.get(session);
      if (!c) {
        c = { link: new RelayLink(ctx.pool), txn: null };
        table.set(session, c);
      }
      return c;
    },
    /** A new MAIL: whatever transaction was open is over (logged as abandoned). */
    reset(c: Conn<T>): void {
      ctx.finishTransaction(c.txn, 'abandoned');
      c.txn = null;
    },
    /** The client left: log an open transaction and release (or abort) the next-hop session. */
    close(session: SMTPServerSession): void {
      const c = table.get(session);
      if (!c) return;
      ctx.finishTransaction(c.txn, 'client-left');
      c.txn = null;
      c.link.close();
    },
    unexpected: (e: unknown) => ctx.log.error({ err: e, role }, 'unexpected error in a hook'),
  };
}

const paramText = (params: readonly string[]) => (params.length ? ` ${params.join(' ')}` : '');

function noteFailure(ctx: RelayContext, txn: Transaction, e: unknown): void {
  if (e instanceof NextHopError) {
    ctx.metrics.nextHopFailures.inc({ role: txn.role, stage: e.stage, kind: e.kind });
    txn.fields.nexthop_error = e.message;
  }
}

/** Histogram children per role and stage, looked up once (labels() per observation is costly). */
const stageChildren = new WeakMap<object, Map<string, { observe(v: number): void }>>();
function stageChild(ctx: RelayContext, role: string, stage: string): { observe(v: number): void } {
  let m = stageChildren.get(ctx.metrics.stageSeconds);
  if (!m) stageChildren.set(ctx.metrics.stageSeconds, (m = new Map()));
  const k = `${role}/${stage}`;
  let c = m.get(k);
  if (!c) m.set(k, (c = ctx.metrics.stageSeconds.labels(role, stage)));
  return c;
}

/**
 * Runs one next-hop stage, observing its latency. A failure is counted against the next hop unless
 * `ours()` says the proxy itself ended the stage (a body stage failed and we aborted the session).
 */
async function timed<T>(ctx: RelayContext, txn: Transaction, stage: string, fn: () => Promise<T>, ours: () => unknown = () => null): Promise<T> {
  const t0 = performance.now();
  const child = stageChild(ctx, txn.role, stage);
  const end = () => child.observe((performance.now() - t0) / 1000);
  try {
    return await fn();
  } catch (e) {
    if (!ours()) noteFailure(ctx, txn, e);
    throw e;
  } finally {
    end();
  }
}

/** MAIL FROM:<rewritten> with the client's parameters as sent. Throws the next hop's refusal as a reply. */
export async function relayMail(ctx: RelayContext, link: RelayLink, txn: Transaction, hop: HopAddress): Promise<void> {
  txn.hop = hop;
  txn.fields.nexthop = hop.url;
  const reply = await timed(ctx, txn, 'mail', () => link.begin(hop, (ext) => `MAIL FROM:${formatPath(txn.rewritten)}${paramText(forNextHop(txn.params, ext))}`));
  txn.fields.mail_reply = replyLine(reply);
  if (reply.code >= 300) {
    const r = passThrough(reply);
    ctx.finishTransaction(txn, 'mail-refused');
    throw r;
  }
}

/** Refuses a recipient past limits.maxRecipients (counting those the transaction already accepted). */
export function checkRecipientLimit(txn: Transaction): void {
  if (txn.accepted >= txn.rt.config.limits.maxRecipients) throw replies.tooManyRecipients();
}

/** RCPT TO:<to> with the client's parameters; the record keeps both the address asked for and the one sent. */
export async function relayRcpt(ctx: RelayContext, link: RelayLink, txn: Transaction, rcpt: string, to: string, asSent: readonly string[], verdict?: string): Promise<Reply> {
  const params = forNextHop(clientParams('RCPT', asSent, false), link.extensions);
  const rec: RcptRecord = { rcpt, to, ...(verdict ? { verdict } : {}) };
  txn.rcpts.push(rec);
  const reply = await timed(ctx, txn, 'rcpt', () => link.rcpt(`RCPT TO:${formatPath(to)}${paramText(params)}`));
  rec.reply = replyLine(reply);
  if (reply.code >= 300) throw passThrough(reply);
  txn.accepted++;
  return reply;
}

export interface DataOptions {
  /** Header lines (CRLF-terminated) to add after our Received:. */
  readonly extraHeaders: string;
  /** Lowercase names of header fields to remove from the incoming message. */
  readonly strip: ReadonlySet<string>;
  /** Extra stages between the size limit and the header rewriter (e.g. a classifier tap). */
  readonly taps?: readonly import('node:stream').Transform[];
  /** Decides after the whole body was read and before the next hop's end-of-data; a reply refuses. */
  readonly beforeEnd?: () => import('./reply.js').SmtpReply | null;
  /**
   * Hold the next hop's DATA until `bytes` of the message (or all of it) have passed the stages, then
   * ask `decide`: a reply refuses the message without DATA ever being sent to the next hop.
   */
  readonly holdBack?: { readonly bytes: number; decide(): SmtpReply | null };
}

/**
 * DATA: Received: (and extra headers) prepended, the body streamed through. Resolves with the text of
 * the next hop's 250 for the client; throws its refusal, or a 4xx on transport failure.
 */
export async function relayData(ctx: RelayContext, link: RelayLink, txn: Transaction, stream: Readable, session: SMTPServerSession, opts: DataOptions): Promise<string> {
  const { config } = txn.rt;
  const received = receivedHeader({
    helo: session.hostNameAppearsAs || 'unknown',
    clientIp: session.remoteAddress,
    // smtp-server gives "[ip]" when it knows no name (and keeps the front MTA's after XCLIENT ADDR=).
    ...(session.clientHostname && !session.clientHostname.startsWith('[') ? { clientHostname: session.clientHostname } : {}),
    by: config.hostname,
    protocol: protocolName({ secure: session.secure, authenticated: typeof session.user === 'string', utf8: txn.utf8 }),
    id: txn.id,
    ...(txn.accepted === 1 ? { recipient: txn.rcpts.find((r) => r.reply?.startsWith('2'))?.to ?? txn.rcpts[0]!.to } : {}),
    nowMs: ctx.clock.now(),
  });
  // limits.bareLineEnds: "reject" refuses bare CR/LF and NUL unless the client is exempt; otherwise the
  // next-hop encoder normalises them (docs/smuggling.md).
  const refuseBare = config.limits.bareLineEnds === 'reject' && !txn.rt.bareLineEndsExempt.has(session.remoteAddress);
  const size = new SizeLimit(config.limits.maxMessageBytes, refuseBare ? replies.bareLineEnd() : null);
  const stages = [size, ...(opts.taps ?? []), new HeaderRewriter(Buffer.from(received + opts.extraHeaders, 'utf8'), opts.strip)];
  // A stage failing (size, header limit, client gone) aborts the next-hop session at once, whatever the
  // relay is waiting for, so a message cut short is never terminated; the client gets the stage's reply.
  const { body, drain, failure } = bodyFrom(stream, stages, () => link.abort());
  const deadline = dataDeadline(config, size, (r) => {
    // Abort the next hop (the stage failure does) and answer the client now: smtp-server would answer
    // only after the end of DATA, which a dribbling client never sends.
    size.destroy(r);
    closeConnection(session.id, r.responseCode, `${r.enhanced} ${r.text}`);
  });
  let reply: Reply;
  try {
    let out: Readable = body;
    if (opts.holdBack) {
      const held = await readUpTo(body, opts.holdBack.bytes);
      const veto = opts.holdBack.decide();
      if (veto) throw veto;
      out = held.ended ? Readable.from(held.chunks, { objectMode: false }) : Readable.from(prepend(held.chunks, body), { objectMode: false });
    }
    reply = await timed(ctx, txn, 'data', () => link.data(out, opts.beforeEnd), failure);
  } catch (e) {
    clearInterval(deadline);
    drain();
    txn.fields.size = size.bytes;
    const cause = failure() ?? e;
    // A stage that refused the message (size, header, bare line ends) is a refusal the client hears.
    const refused = isSmtpReply(cause) && !(cause instanceof ClientLeft);
    if (refused) txn.fields.data_reply = cause.line;
    ctx.finishTransaction(txn, cause instanceof NextHopError ? 'nexthop-failed' : cause instanceof ClientLeft ? 'client-left' : refused ? 'data-refused' : 'aborted');
    throw cause;
  }
  clearInterval(deadline);
  txn.fields.size = size.bytes;
  txn.fields.data_reply = replyLine(reply);
  if (reply.code >= 300) {
    drain();
    ctx.finishTransaction(txn, 'data-refused');
    throw passThrough(reply);
  }
  ctx.finishTransaction(txn, 'delivered');
  return passThroughText(reply);
}

/**
 * The client's DATA deadline: timeouts.clientDataMs overall, and limits.minDataRate (bytes per second,
 * averaged from the start) once timeouts.dataGraceMs has passed. smtp-server's idle timer restarts on
 * every byte, so without this a client sending one byte a second holds a slot and a next-hop session
 * for ever. Measured on the monotonic clock (durations, not dates).
 */
function dataDeadline(config: Config, size: SizeLimit, expire: (r: SmtpReply) => void): NodeJS.Timeout {
  const { clientDataMs, dataGraceMs } = config.timeouts;
  const minRate = config.limits.minDataRate;
  const start = performance.now();
  const timer = setInterval(() => {
    const ms = performance.now() - start;
    let why: string | null = null;
    if (ms >= clientDataMs) why = `not complete after ${Math.round(clientDataMs / 1000)} s`;
    else if (minRate > 0 && ms >= dataGraceMs && (size.bytes * 1000) / ms < minRate) why = `below ${minRate} bytes/s`;
    if (why === null) return;
    clearInterval(timer);
    expire(replies.dataTooSlow(why));
  }, Math.min(1000, dataGraceMs, clientDataMs) / 2);
  timer.unref();
  return timer;
}

/** Reads `body` until `max` bytes or its end, then leaves it paused; rejects if it fails or closes first. */
function readUpTo(body: Readable, max: number): Promise<{ chunks: Buffer[]; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const stop = (): void => {
      body.pause(); // before the listener goes: a flowing stream without one would lose data
      body.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
    };
    const onData = (c: Buffer): void => {
      chunks.push(c);
      n += c.length;
      if (n >= max) {
        stop();
        resolve({ chunks, ended: false });
      }
    };
    const onEnd = (): void => {
      stop();
      resolve({ chunks, ended: true });
    };
    const onError = (e: Error): void => {
      stop();
      reject(e);
    };
    const onClose = (): void => {
      stop();
      reject(new ClientLeft());
    };
    body.on('data', onData).once('end', onEnd).once('error', onError).once('close', onClose);
  });
}

async function* prepend(head: readonly Buffer[], rest: Readable): AsyncGenerator<Buffer> {
  yield* head;
  for await (const c of rest) yield c as Buffer;
}
