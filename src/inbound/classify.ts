/**
 * What kind of null-sender message is this? Used by `inbound.untaggedBounces: classify` (docs/architecture.md): at
 * end of DATA a delivery-status report (an NDR for mail we may never have sent: likely backscatter) is
 * refused, while read receipts, auto-replies and aggregate/feedback reports pass.
 *
 * The body streams past: the classifier keeps only the header block (bounded) and a bounded body prefix.
 * Precedence: DSN content types > MDN content types > ARF/TLS-RPT content types > explicit NDR markers
 * (Exchange/exim headers, qmail text) > DMARC aggregate shapes > auto-reply signals > sender/subject heuristics.
 */
import { LineEndNormaliser } from '../smtp/dotstuff.js';
import { headerBlockEnd } from '../smtp/headers.js';
import { decodeEncodedWords, decodeTransfer, header, parseContentType, parseHeaders, parseParams, splitMultipart, stripComments, type Headers, type Part } from './mime.js';

/** The verdict kinds; only `dsn` is meant to be refused. */
export type BounceKind = 'dsn' | 'mdn' | 'auto-reply' | 'report' | 'other';

/** A verdict with short words for a log line. */
export interface Classification {
  kind: BounceKind;
  reason: string;
}

/** Options for {@link createBounceClassifier}. */
export interface BounceClassifierOptions {
  /** Body bytes kept after the header block (default 64 KiB). */
  prefixBytes?: number;
  /** Header bytes kept while looking for the blank line; the rest is treated as body (default 128 KiB). */
  maxHeaderBytes?: number;
}

/** A streaming classifier: feed it the message as it passes, then ask for the verdict. */
export interface BounceClassifier {
  /** Feeds the next piece of the message (headers and body, as received after DATA). Never throws. */
  write(chunk: Uint8Array): void;
  /** The verdict for what was written; later writes are ignored. Never throws. */
  finish(): Classification;
  /** Bytes of memory currently held for the message (≤ header block + prefixBytes). */
  readonly retainedBytes: number;
  /** Bytes written so far. */
  readonly bytesSeen: number;
}

/** Collects every MIME part's type (pre-order) and the text of text parts; never enters message/* parts. */
function walk(h: Headers, body: string, depth: number, parts: Part[], texts: string[]): void {
  if (parts.length >= 200) return;
  const ct = parseContentType(header(h, 'content-type')) ?? { type: 'text/plain', params: {} };
  const disp = parseParams(header(h, 'content-disposition') ?? '').params;
  parts.push({ ...ct, filename: disp.filename ?? ct.params.name ?? '' });
  const boundary = ct.params.boundary;
  if (ct.type.startsWith('multipart/') && boundary && depth < 8) {
    for (const lines of splitMultipart(body, boundary)) {
      const blank = lines.indexOf('');
      const head = blank < 0 ? lines : lines.slice(0, blank);
      walk(parseHeaders(head.join('\n')), blank < 0 ? '' : lines.slice(blank + 1).join('\n'), depth + 1, parts, texts);
    }
  } else if (ct.type.startsWith('text/')) {
    texts.push(decodeTransfer(body, header(h, 'content-transfer-encoding')));
  }
}

const NDR_SUBJECTS: RegExp[] = [
  /^undelivered mail returned to sender/i,
  /^undeliver(?:able|ed)(?: mail| message)?:?/i,
  /^(?:unzustellbar|non remis|non recapitabile|no se puede entregar|onbestelbaar)\s*:/i,
  /^delivery status notification \((?:failure|delay)\)/i,
  /^failure notice/i,
  /^returned mail(?:: see transcript for details|:)?/i,
  /^mail delivery failed(?:: returning message to sender)?/i,
  /^(?:message )?delivery (?:failure|failed|has failed|problem)/i,
  /^delivery notification: delivery has failed/i,
  /^(?:mail system error - returned mail|nondeliverable mail|mail could not be delivered)/i,
  /^warning: could not send message for past/i,
  /^delayed mail \(still being retried\)/i,
];
const AUTO_SUBJECTS: RegExp[] = [
  /^(?:automatic reply|automatische antwort|réponse automatique|respuesta automática|risposta automatica|automatisch antwoord|autosvar)\s*:/i,
  /^(?:out of (?:the )?office(?: autoreply)?|abwesenheitsnotiz|auto[- ]?reply|auto[- ]?response|away from my mail|on vacation)\b:?/i,
  /^(?:i am|i'm) (?:on vacation|on holiday|out of (?:the )?office|away from (?:my )?(?:e-?)?mail)\b/i,
  /^auto:/i,
];
const DSN_TYPES = ['message/delivery-status', 'message/global-delivery-status'];
const MDN_TYPES = ['message/disposition-notification', 'message/global-disposition-notification'];
const REPORT_TYPES = ['message/feedback-report', 'application/tlsrpt+json', 'application/tlsrpt+gzip'];

const verdict = (kind: BounceKind, reason: string): Classification => ({ kind, reason });

function decide(h: Headers, body: string): Classification {
  const parts: Part[] = [];
  const texts: string[] = [];
  walk(h, body, 0, parts, texts);
  const reportType = (p: Part): string => (p.type === 'multipart/report' ? (p.params['report-type'] ?? '').trim().toLowerCase() : '');
  const byReport = (rt: string): Part | undefined => parts.find((p) => reportType(p) === rt);
  const byType = (types: string[]): Part | undefined => parts.find((p) => types.includes(p.type));
  // Mail without usable MIME structure may still carry a delivery-status part in plain sight.
  const unstructured = parts.length === 1 && /^content-type:[ \t]*message\/(?:global-)?delivery-status/im.test(body);

  if (byReport('delivery-status')) return verdict('dsn', 'multipart/report; report-type=delivery-status');
  const dsnPart = byType(DSN_TYPES);
  if (dsnPart) return verdict('dsn', `${dsnPart.type} part`);
  if (unstructured) return verdict('dsn', 'message/delivery-status part');
  if (byReport('disposition-notification')) return verdict('mdn', 'multipart/report; report-type=disposition-notification');
  const mdnPart = byType(MDN_TYPES);
  if (mdnPart) return verdict('mdn', `${mdnPart.type} part`);
  for (const rt of ['feedback-report', 'tlsrpt']) if (byReport(rt)) return verdict('report', `multipart/report; report-type=${rt}`);
  const reportPart = byType(REPORT_TYPES);
  if (reportPart) return verdict('report', `${reportPart.type} part`);

  if (header(h, 'x-ms-exchange-message-is-ndr') !== undefined) return verdict('dsn', 'X-MS-Exchange-Message-Is-Ndr header');
  if (header(h, 'x-failed-recipients') !== undefined) return verdict('dsn', 'X-Failed-Recipients header');
  const text = texts.join('\n');
  if (/hi\. this is the qmail-send program|i'm afraid i wasn't able to deliver/i.test(text)) {
    return verdict('dsn', 'qmail-send bounce text');
  }

  const subject = decodeEncodedWords(header(h, 'subject') ?? '').replace(/\s+/g, ' ').trim();
  if (/^report domain:/i.test(subject)) return verdict('report', 'subject looks like a DMARC aggregate report (Report domain:)');
  if (parts.some((p) => /(?:zip|gzip|xml|octet-stream)$/.test(p.type) && /^[^!]+![^!]+!\d+!\d+(?:![^.]*)?\.(?:xml|zip|xml\.gz|gz)$/i.test(p.filename))) {
    return verdict('report', 'DMARC aggregate report attachment');
  }

  const ndrSubject = NDR_SUBJECTS.map((re) => re.exec(subject)?.[0]).find((m) => m);
  const from = decodeEncodedWords(header(h, 'from') ?? '');
  const daemon = /mailer-daemon|mail delivery (?:sub)?system|microsoftexchange[0-9a-f]{32}@/i.exec(from)?.[0];
  const postmaster = /(?:^|[\s<"])postmaster@/i.test(from);
  const autoSubmitted = stripComments(header(h, 'auto-submitted') ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  const xAutoreply = header(h, 'x-autoreply');
  const specific: Array<string | false> = [
    xAutoreply !== undefined && !/^(?:no|false|0)$/i.test(xAutoreply) && 'X-Autoreply header',
    header(h, 'x-autorespond') !== undefined && 'X-Autorespond header',
    /^auto_reply$/i.test(header(h, 'precedence') ?? '') && 'Precedence: auto_reply',
  ];
  const autoSubject = AUTO_SUBJECTS.map((re) => re.exec(subject)?.[0]).find((m) => m);
  const byAutoSubmitted = autoSubmitted !== '' && autoSubmitted !== 'no';
  const isSpecific = specific.some(Boolean) || autoSubject !== undefined;
  // MTAs mark their own bounces Auto-Submitted too, so a mail-system sender with an NDR subject outranks it.
  if (isSpecific || (byAutoSubmitted && !((daemon || postmaster) && ndrSubject))) {
    const why = (byAutoSubmitted && `Auto-Submitted: ${autoSubmitted}`) || specific.find(Boolean) ||
      `subject looks like an auto-reply (${autoSubject ?? ''})`;
    return verdict('auto-reply', why);
  }
  if (ndrSubject) return verdict('dsn', `subject looks like a non-delivery report (${ndrSubject.trim()})`);
  if (daemon) return verdict('dsn', `From looks like a mail system (${daemon.replace(/@$/, '')})`);
  return verdict('other', 'no bounce, receipt, auto-reply or report markers');
}

/**
 * Makes a streaming classifier for one message.
 *
 * @example
 *   const c = createBounceClassifier();
 *   stream.on('data', (b) => c.write(b));
 *   stream.on('end', () => { if (c.finish().kind === 'dsn') refuse(); });
 */
export function createBounceClassifier(opts: BounceClassifierOptions = {}): BounceClassifier {
  const prefix = Math.max(0, Math.floor(opts.prefixBytes ?? 64 * 1024));
  const maxHeader = Math.max(1, Math.floor(opts.maxHeaderBytes ?? 128 * 1024));
  let buf = Buffer.alloc(0);
  let len = 0;
  let bodyAt = -1; // offset of the first body byte once the header block ended
  let scan = 0;
  let seen = 0;
  let result: Classification | undefined;
  const lineEnds = new LineEndNormaliser();

  const append = (src: Uint8Array, from: number, n: number): void => {
    const limit = bodyAt >= 0 ? bodyAt + prefix : maxHeader + prefix;
    if (len + n > buf.length) {
      const grown = Buffer.alloc(Math.min(limit, Math.max(len + n, buf.length * 2, 4096)));
      buf.copy(grown, 0, 0, len);
      buf = grown;
    }
    buf.set(src.subarray(from, from + n), len);
    len += n;
  };
  const findHeaderEnd = (): number => {
    const end = headerBlockEnd(buf, scan, len, true);
    if (end < 0) scan = Math.max(0, len - 1);
    return end;
  };

  return {
    get retainedBytes() {
      return buf.length;
    },
    get bytesSeen() {
      return seen;
    },
    write(raw: Uint8Array): void {
      if (result || !(raw instanceof Uint8Array)) return;
      seen += raw.length;
      if (bodyAt >= 0 && len >= bodyAt + prefix) return; // all it reads is held
      // Read as the next hop will get it (bare CR/LF as CR LF, no NUL), as the header rewriter does.
      const chunk = lineEnds.push(Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.length));
      let off = 0;
      while (off < chunk.length) {
        if (bodyAt < 0) {
          const take = Math.min(chunk.length - off, maxHeader - len);
          append(chunk, off, take);
          off += take;
          const end = findHeaderEnd();
          if (end >= 0 || len >= maxHeader) {
            bodyAt = end >= 0 ? end : len;
            len = Math.min(len, bodyAt + prefix);
            if (buf.length > bodyAt + prefix) buf = Buffer.from(buf.subarray(0, len)); // shrink to the bound
          }
        } else {
          const take = Math.min(chunk.length - off, bodyAt + prefix - len);
          if (take <= 0) return;
          append(chunk, off, take);
          off += take;
        }
      }
    },
    finish(): Classification {
      if (result) return result;
      try {
        const headEnd = bodyAt >= 0 ? bodyAt : len;
        result = decide(parseHeaders(buf.toString('utf8', 0, headEnd)), buf.toString('latin1', headEnd, len));
      } catch {
        result = verdict('other', 'unparseable message');
      }
      buf = Buffer.alloc(0);
      len = 0;
      return result;
    },
  };
}

/** Classifies a whole message held in memory (convenience for tests and tools). */
export function classifyBounce(message: Uint8Array | string, opts?: BounceClassifierOptions): Classification {
  const c = createBounceClassifier(opts);
  c.write(typeof message === 'string' ? Buffer.from(message, 'utf8') : message);
  return c.finish();
}
