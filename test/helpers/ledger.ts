/**
 * Delivery accounting for fault tests: what clients were told against what the next hop really took.
 *
 * Every message carries a unique token in its Subject. The ledger records the final reply each client
 * got for each token, and which tokens the next hop acknowledged (a real smtp-server sink: the messages
 * it accepted; a fake peer: the messages it answered 2xx after end of data, via {@link Ledger.ackEnd}).
 * {@link Ledger.audit} then lists:
 *   - lost:       told 2xx, acknowledged by no next hop
 *   - duplicated: acknowledged more than once
 *   - phantom:    acknowledged, but the client was told 4xx/5xx (or never told anything)
 * The target of every fault test is three empty lists.
 *
 * @example
 *   const ledger = new Ledger();
 *   const peer = await startFakePeer({ END: ledger.ackEnd() });
 *   const r = await sendMessage(t, ledger, { from: 'a@example.com', to: ['b@example.net'] });
 *   expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
 */
import type { PeerAction, PeerConnection } from './fake-peer.js';
import type { Talk } from './talk.js';

const TOKEN = /Subject: fault-token ([A-Za-z0-9-]+)/;

/** The token in a message (raw or unstuffed bytes), or null. */
export function tokenOf(message: Buffer): string | null {
  return TOKEN.exec(message.toString('latin1'))?.[1] ?? null;
}

/** What {@link Ledger.watch} reads: the messages a next hop accepted (a Sink, exim-server.ts's store). */
export interface MessageSource {
  readonly messages: ReadonlyArray<{ readonly body: Buffer }>;
}

export interface Audit {
  lost: string[];
  duplicated: string[];
  phantom: string[];
}

export class Ledger {
  private n = 0;
  /** Final reply per token as the client saw it; null when the client never got one (it vanished). */
  readonly told = new Map<string, string | null>();
  /** Tokens a fake peer acknowledged with 2xx after end of data (in order, duplicates kept). */
  readonly peerAcked: string[] = [];
  /** Tokens a fake peer received completely (terminator seen) but did not acknowledge with 2xx. */
  readonly peerUnacked: string[] = [];
  private readonly sinks: MessageSource[] = [];

  constructor(private readonly prefix = 'm') {}

  /** A fresh token. */
  token(): string {
    this.n += 1;
    return `${this.prefix}-${this.n}`;
  }

  /** A small message carrying the token (already dot-stuffed: no line starts with "."). */
  body(token: string, extra = ''): string {
    return `From: a@example.com\r\nSubject: fault-token ${token}\r\n\r\nbody of ${token}\r\n${extra}`;
  }

  tell(token: string, reply: string | null): void {
    this.told.set(token, reply);
  }

  /** Counts what this sink (or any store of accepted messages, e.g. exim-server.ts) holds as acknowledged. */
  watch(sink: MessageSource): void {
    this.sinks.push(sink);
  }

  /**
   * An END action for a fake peer that records the just-completed message: acknowledged when the action
   * is a well-formed `reply` with a 2xx code. Raw bytes (broken replies) and no reply (stall, drop) are
   * not acknowledgements: the proxy cannot read them as one, so the client is never told 250.
   */
  ackEnd(action: PeerAction = '250 2.0.0 Ok: queued as FAKE'): (line: string, conn: PeerConnection) => PeerAction {
    return (_line, conn) => {
      const msg = conn.messages[conn.messages.length - 1];
      const tok = msg ? tokenOf(msg) : null;
      const text = typeof action === 'string' ? action : action.raw === undefined ? action.reply ?? '' : '';
      if (tok) (/^2\d\d[ -]/.test(text) ? this.peerAcked : this.peerUnacked).push(tok);
      return action;
    };
  }

  /** Every token acknowledged by any next hop (peer and watched sinks), duplicates kept. */
  acknowledged(): string[] {
    const fromSinks = this.sinks.flatMap((s) => s.messages.map((m) => tokenOf(m.body)).filter((t): t is string => t !== null));
    return [...this.peerAcked, ...fromSinks];
  }

  audit(): Audit {
    const counts = new Map<string, number>();
    for (const t of this.acknowledged()) counts.set(t, (counts.get(t) ?? 0) + 1);
    const lost: string[] = [];
    const phantom: string[] = [];
    const duplicated = [...counts].filter(([, n]) => n > 1).map(([t]) => t);
    for (const [t, reply] of this.told) {
      const ok = reply !== null && /^2\d\d/.test(reply);
      const n = counts.get(t) ?? 0;
      if (ok && n === 0) lost.push(t);
      if (!ok && n > 0) phantom.push(t);
    }
    for (const t of counts.keys()) if (!this.told.has(t)) phantom.push(t);
    return { lost, duplicated, phantom };
  }

  /** How many clients were told 2xx. */
  delivered(): number {
    return [...this.told.values()].filter((r) => r !== null && /^2\d\d/.test(r)).length;
  }
}

/** The replies of one client transaction; `end` is '' when DATA was never reached or refused. */
export interface TxnReplies {
  mail: string;
  rcpt: string[];
  data: string;
  end: string;
}

/**
 * Runs MAIL, RCPT... and DATA on an open session (after EHLO) and records the final outcome in the
 * ledger: the end-of-data reply, or the refusal that stopped the transaction before DATA (then nothing
 * may be delivered either).
 */
export async function sendMessage(t: Talk, ledger: Ledger, o: { from: string; to: string[]; token?: string; body?: string }): Promise<TxnReplies & { token: string; closed: boolean }> {
  const token = o.token ?? ledger.token();
  ledger.tell(token, null);
  const out = { token, mail: '', rcpt: [] as string[], data: '', end: '', closed: false };
  const ask = async (line: string): Promise<string> => {
    if (out.closed) return '';
    const r = await t.cmd(line).catch(() => null);
    if (r === null) out.closed = true;
    // 421: the server closes the connection after it (RFC 5321 §3.8)
    if (r?.startsWith('421')) out.closed = true;
    return r ?? '';
  };
  out.mail = await ask(`MAIL FROM:<${o.from}>`);
  for (const r of o.to) out.rcpt.push(await ask(`RCPT TO:<${r}>`));
  if (!out.closed) {
    const { start, end } = await t.data(o.body ?? ledger.body(token)).catch(() => ({ start: '', end: '' }));
    out.data = start;
    out.end = end;
    if (start === '' || end.startsWith('421')) out.closed = true;
  }
  const last = [out.end, out.data, ...out.rcpt.slice().reverse(), out.mail].find((x) => x !== '') ?? null;
  ledger.tell(token, out.end !== '' ? out.end : last);
  // a refused MAIL leaves the session in a state where DATA is refused with 503: reset for the next one
  if (!out.closed && !out.data.startsWith('354')) await ask('RSET');
  return out;
}
