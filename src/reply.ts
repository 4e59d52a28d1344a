/**
 * An SMTP reply the proxy gives a client: basic code, enhanced status code and words, one line.
 * smtp-server reads `responseCode` off any Error passed to a hook callback and prints `message` after it,
 * so the enhanced code is written into the message here (the library's own enhanced codes stay hidden,
 * otherwise every 550 from a hook would be labelled 5.1.1).
 *
 * @example
 *   throw new SmtpReply(550, '5.7.1', '<prvs=...@example.com>: BATV signature expired');
 *   // client sees: 550 5.7.1 <prvs=...@example.com>: BATV signature expired
 */
export class SmtpReply extends Error {
  readonly responseCode: number;
  readonly enhanced: string;
  readonly text: string;

  constructor(code: number, enhanced: string, text: string) {
    // A reply is an answer, not a fault: no stack is captured (it costs more than the rest of a refusal).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(enhanced ? `${enhanced} ${text}` : text);
    Error.stackTraceLimit = limit;
    this.name = 'SmtpReply';
    this.responseCode = code;
    this.enhanced = enhanced;
    this.text = text;
  }

  /** The exact line a client receives, without CRLF. */
  get line(): string {
    return `${this.responseCode} ${this.message}`;
  }
}

export function isSmtpReply(v: unknown): v is SmtpReply {
  return v instanceof SmtpReply;
}

/** The table entry each of the proxy's own replies was made by (a next hop's reply has none). */
const KINDS = new WeakMap<SmtpReply, string>();

/**
 * The kind of one of the proxy's own replies: the kebab-case name of the table entry that made it
 * ("untagged-bounce", "message-too-large"), the batv_proxy_refusals_total reason; null for a reply that
 * is not the proxy's own (a next hop's, passed through).
 */
export function replyKind(r: SmtpReply): string | null {
  return KINDS.get(r) ?? null;
}

/**
 * A table of reply makers whose every reply remembers its entry (replyKind). `names` renames an entry's
 * kind where a shorter label is already in use (dnsblListed is "dnsbl").
 */
export function replyTable<T extends Record<string, (...args: never[]) => SmtpReply>>(table: T, names: Partial<Record<keyof T, string>> = {}): T {
  const out: Record<string, unknown> = {};
  for (const [key, make] of Object.entries(table)) {
    const kind = names[key as keyof T] ?? key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    out[key] = (...args: never[]) => {
      const r = make(...args);
      KINDS.set(r, kind);
      return r;
    };
  }
  return out as T;
}

/**
 * The replies the SMTP layer gives on its own, whatever the role: they live here rather than in
 * src/policy/replies.ts because src/smtp imports no policy (test/boundaries.test.ts); the policy table
 * includes them, so every reply the proxy sends is still listed in one place.
 */
export const transportReplies = replyTable({
  /** DATA: the message passed limits.maxMessageBytes (the words smtp-server uses for the same limit). */
  messageTooLarge: (limit: number) => new SmtpReply(552, '5.3.4', `Message exceeds fixed maximum message size ${limit}`),
  /** DATA: the header block passed what the proxy holds to rewrite it (src/smtp/headers.ts MAX_HEADER_BYTES). */
  headerTooLarge: () => new SmtpReply(552, '5.3.4', 'Message header too large'),
  /** The client's connection closed before the end of DATA (it hears nothing; the log says client-left). */
  clientLeft: () => new SmtpReply(451, '4.4.2', 'Client connection closed before the end of the message'),
  /** Anything unexpected in a hook: the client retries, the log says what it was. */
  internal: () => new SmtpReply(451, '4.3.0', 'Local error in processing; try again later'),
} as const);
