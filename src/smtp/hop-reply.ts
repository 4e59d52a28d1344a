/**
 * What a next hop said and how a next hop failed: the parsed reply, its one-line form for the proxy's own
 * client (smtp-server hooks answer with one line), and NextHopError, the transport failure that is always
 * a 4xx for the client (docs/architecture.md, "Relaying to the next hop"). The session that produces them
 * is src/smtp/client.ts.
 */
import { SmtpReply } from '../reply.js';

/** A parsed SMTP reply. `lines` lack the "250-" / "250 " prefix; `enhanced` is the first line's x.y.z. */
export interface Reply {
  code: number;
  enhanced: string | null;
  lines: string[];
}

/** Where a next-hop failure happened ('command' for verbs other than MAIL/RCPT/RSET/QUIT/EHLO/HELO/AUTH). */
export type NextHopStage = 'connect' | 'greeting' | 'ehlo' | 'starttls' | 'auth' | 'mail' | 'rcpt' | 'data' | 'body'
  | 'data-end' | 'rset' | 'quit' | 'command';
/** What kind of next-hop failure it was. */
export type NextHopErrorKind = 'refused' | 'timeout' | 'closed' | 'tls' | 'protocol' | 'auth';

/**
 * A next-hop transport failure: which hop, at which stage, of which kind, and the reply if one came.
 * The message is the words the proxy's client gets after the codes.
 *
 * @example
 *   try { await session.command('RCPT TO:<a@b.example>'); }
 *   catch (e) { if (e instanceof NextHopError) throw e.toSmtpReply(); throw e; }
 *   // client sees: 451 4.4.2 Next hop 127.0.0.1:2600 timed out at rcpt
 */
export class NextHopError extends Error {
  constructor(
    readonly hop: string,
    readonly stage: NextHopStage,
    readonly kind: NextHopErrorKind,
    readonly detail: string,
    readonly reply: Reply | null = null,
    options?: { cause?: unknown },
  ) {
    const d = detail.replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, 200);
    const words: Record<NextHopErrorKind, string> = {
      refused: `unreachable: ${d}`, timeout: `timed out at ${stage}`, closed: `closed the connection at ${stage}`,
      tls: `TLS failure at ${stage}: ${d}`, protocol: `protocol error at ${stage}: ${d}`,
      auth: `authentication failed at ${stage}: ${d}`,
    };
    super(`Next hop ${hop} ${words[kind]}`, options);
    this.name = 'NextHopError';
  }

  /** The proxy's one-line reply to its own client: 421 or 451 with a 4.x.x code, never 2xx or 5xx. */
  toSmtpReply(): SmtpReply {
    const [code, enhanced] = ({ refused: [421, '4.4.1'], tls: [421, '4.7.0'], timeout: [451, '4.4.2'],
      closed: [451, '4.4.2'], protocol: [451, '4.5.0'], auth: [451, '4.7.0'] } as const)[this.kind];
    return new SmtpReply(code, enhanced, this.message);
  }
}

/**
 * A reply as the client would be sent it, lines joined by CRLF, no trailing CRLF.
 *
 * @example
 *   formatReply({ code: 250, enhanced: null, lines: ['a', 'b'] }); // "250-a\r\n250 b"
 */
export function formatReply(reply: Reply): string {
  const last = reply.lines.length - 1;
  return reply.lines.map((l, i) => `${reply.code}${i < last ? '-' : ' '}${l}`).join('\r\n');
}

/**
 * A next hop's reply as one line for the proxy's own client (smtp-server hooks send one line): same code
 * and enhanced code, the lines joined with spaces.
 *
 * @example
 *   passThrough({ code: 550, enhanced: '5.1.1', lines: ['5.1.1 <x@y>: no such user'] }).line;
 *   // "550 5.1.1 <x@y>: no such user"
 */
export function passThrough(reply: Reply): SmtpReply {
  return new SmtpReply(reply.code, reply.enhanced ?? '', bareText(reply));
}

/** The reply's words without its enhanced code, lines joined with spaces. */
function bareText(reply: Reply): string {
  const e = reply.enhanced;
  return reply.lines.map((l) => (e !== null && (l === e || l.startsWith(`${e} `)) ? l.slice(e.length + 1) : l)).join(' ').trim();
}

/** passThrough(reply).message without building an Error (the success path). */
export function passThroughText(reply: Reply): string {
  const t = bareText(reply);
  return reply.enhanced ? `${reply.enhanced} ${t}` : t;
}

/** passThrough(reply).line without building an Error. */
export function replyLine(reply: Reply): string {
  const t = passThroughText(reply);
  return t ? `${reply.code} ${t}` : String(reply.code);
}

/** The first line of a reply, with its code (for log and error texts). */
export function firstLine(r: Reply): string {
  return `${r.code} ${r.lines[0] ?? ''}`.trim();
}
