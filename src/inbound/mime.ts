/**
 * The bits of RFC 5322 / MIME the bounce classifier (src/inbound/classify.ts) reads: unfolded header
 * fields, comments, parameters, Content-Type, RFC 2047 encoded words, multipart bodies (possibly cut
 * short), base64 and quoted-printable. Lenient and bounded: made for deciding what a message is, never
 * for rewriting it. Pure.
 */

export type Headers = Array<[name: string, value: string]>;
export interface ContentType {
  type: string;
  params: Record<string, string>;
}
export interface Part extends ContentType {
  filename: string;
}

/** Unfolds a header block into lowercased names and values (whitespace runs collapsed); stops at a blank line. */
export function parseHeaders(text: string): Headers {
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

export function header(h: Headers, name: string): string | undefined {
  return h.find(([n]) => n === name)?.[1];
}

/** Removes RFC 5322 comments (outside quoted strings). */
export function stripComments(v: string): string {
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
export function parseParams(v: string): { value: string; params: Record<string, string> } {
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
export function parseContentType(v: string | undefined): ContentType | undefined {
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
export function splitMultipart(body: string, boundary: string): string[][] {
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

export function decodeTransfer(body: string, cte: string | undefined): string {
  const enc = (cte ?? '').toLowerCase();
  if (enc === 'base64') return Buffer.from(body.replace(/[^A-Za-z0-9+/]/g, ''), 'base64').toString('latin1');
  if (enc === 'quoted-printable') {
    return body.replace(/=\r?\n/g, '').replace(/=([0-9A-Fa-f]{2})/g, (_m, x: string) =>
      String.fromCharCode(parseInt(x, 16)));
  }
  return body;
}
