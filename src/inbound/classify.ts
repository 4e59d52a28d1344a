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

type Headers = Array<[name: string, value: string]>;
interface ContentType {
  type: string;
  params: Record<string, string>;
}
interface Part extends ContentType {
  filename: string;
}

/** Unfolds a header block into lowercased names and values (whitespace runs collapsed); stops at a blank line. */
function parseHeaders(text: string): Headers {
  const out: Headers = [];
  let last: [string, string] | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (line === '' || line === '\r') break;
    if (/^[ \t]/.test(line)) {
      if (last) last[1] += ` ${line}`;
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon).trimEnd().toLowerCase() : '';
    last = /^[\x21-\x39\x3b-\x7e]+$/.test(name) ? [name, line.slice(colon + 1)] : undefined;
    if (last) out.push(last);
  }
  for (const h of out) h[1] = h[1].replace(/\s+/g, ' ').trim();
  return out;
}

function header(h: Headers, name: string): string | undefined {
  return h.find(([n]) => n === name)?.[1];
}

/** Removes RFC 5322 comments (outside quoted strings). */
function stripComments(v: string): string {
  let out = '';
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < v.length; i++) {
    const c = v[i];
    if (c === '\\' && (quoted || depth > 0)) {
      if (depth === 0) out += c + (v[i + 1] ?? '');
      i++;
    } else if (depth > 0) depth += c === '(' ? 1 : c === ')' ? -1 : 0;
    else if (c === '"') (quoted = !quoted), (out += c);
    else if (c === '(' && !quoted) depth = 1;
    else out += c;
  }
  return out;
}

/** Parses `value; name=value; name="quoted"` with comments, any case and RFC 2231 `name*=` values. */
function parseParams(v: string): { value: string; params: Record<string, string> } {
  const segs = stripComments(v).match(/(?:"(?:\\.|[^"\\])*"?|[^;"])+/g) ?? [];
  const params: Record<string, string> = {};
  for (const seg of segs.slice(1)) {
    const eq = seg.indexOf('=');
    if (eq < 0) continue;
    const rawName = seg.slice(0, eq).trim().toLowerCase();
    let value = seg.slice(eq + 1).trim();
    if (value.startsWith('"')) value = value.replace(/^"|"$/g, '').replace(/\\(.)/g, '$1');
    const name = rawName.replace(/\*(\d+)?\*?$/, '');
    if (rawName.endsWith('*')) {
      if (!/\*[1-9]\d*\*$/.test(rawName)) value = value.replace(/^[^']*'[^']*'/, ''); // charset'lang'
      try { value = decodeURIComponent(value); } catch { /* keep the raw value */ }
    }
    params[name] = (params[name] ?? '') + value;
  }
  return { value: (segs[0] ?? '').replace(/\s+/g, '').toLowerCase(), params };
}

/** Parses a Content-Type; undefined when it has no valid `type/subtype`. */
function parseContentType(v: string | undefined): ContentType | undefined {
  const { value: type, params } = parseParams(v ?? '');
  return /^[^/]+\/[^/]+$/.test(type) ? { type, params } : undefined;
}

function decodeBytes(bytes: Buffer, charset: string): string {
  try {
    return new TextDecoder(charset).decode(bytes);
  } catch {
    return bytes.toString('latin1');
  }
}

const ENCODED_WORD = /=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=/g;

/** Decodes RFC 2047 encoded-words; adjacent words in one charset are joined before decoding. */
export function decodeEncodedWords(s: string): string {
  let out = '';
  let last = 0;
  let cs = '';
  let pending: Buffer[] = [];
  const flush = (): void => {
    if (pending.length) out += decodeBytes(Buffer.concat(pending), cs);
    pending = [];
  };
  for (const m of s.matchAll(ENCODED_WORD)) {
    const between = s.slice(last, m.index);
    if (!(pending.length && /^\s*$/.test(between))) flush(), (out += between);
    const charset = (m[1] ?? '').replace(/\*.*$/, '').toLowerCase();
    const text = m[3] ?? '';
    const bytes = /b/i.test(m[2] ?? '')
      ? Buffer.from(text, 'base64')
      : Buffer.from(text.replace(/_/g, ' ').replace(/=([0-9a-f]{2})/gi, (_h, x: string) =>
          String.fromCharCode(parseInt(x, 16))), 'latin1');
    if (pending.length && charset !== cs) flush();
    cs = charset;
    pending.push(bytes);
    last = (m.index ?? 0) + m[0].length;
  }
  flush();
  return out + s.slice(last);
}

/** Splits a multipart body (possibly truncated) into its parts' lines. */
function splitMultipart(body: string, boundary: string): string[][] {
  const delim = `--${boundary}`;
  const parts: string[][] = [];
  let cur: string[] | undefined;
  for (const raw of body.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.startsWith(delim)) {
      const rest = line.slice(delim.length);
      if (rest.startsWith('--')) {
        if (cur) parts.push(cur);
        return parts;
      }
      if (/^\s*$/.test(rest)) {
        if (cur) parts.push(cur);
        cur = [];
        continue;
      }
    }
    cur?.push(line);
  }
  if (cur) parts.push(cur);
  return parts;
}

function decodeTransfer(body: string, cte: string | undefined): string {
  const enc = (cte ?? '').toLowerCase();
  if (enc === 'base64') return Buffer.from(body.replace(/[^A-Za-z0-9+/]/g, ''), 'base64').toString('latin1');
  if (enc === 'quoted-printable') {
    return body.replace(/=\r?\n/g, '').replace(/=([0-9A-Fa-f]{2})/g, (_m, x: string) =>
      String.fromCharCode(parseInt(x, 16)));
  }
  return body;
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
