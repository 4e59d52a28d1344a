/**
 * Unit tests for src/smtp/headers.ts: HeaderRewriter (prepend our lines, strip named fields from the
 * header block, pass the rest byte for byte, refuse a header block over the limit), stripFields,
 * receivedHeader / rfc5322Date / protocolName.
 *
 * How the listeners use it (src/transaction.ts relayData): outbound with strip = {} (the Received: is
 * prepended and nothing is parsed); inbound with strip = {verdict header name}, prepend = Received: plus
 * our own verdict header, so a verdict that arrived from outside never reaches the mailbox.
 *
 * The chunking property (fast-check, test/helpers/fuzz-env.ts): the output is the same bytes however
 * the message is cut into chunks, byte by byte included, and equals a simple model for well-formed
 * messages. Outputs are compared as the next hop gets them (`wire`: the encoder's bare CR/LF as CRLF, no
 * NUL), since the rewriter reads and passes the header block in that form and the body as it came.
 */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SmtpReply } from '../../src/reply.js';
import { DotStuffer, LineEndNormaliser } from '../../src/smtp/dotstuff.js';
import { HeaderRewriter, MAX_HEADER_BYTES, protocolName, receivedHeader, rfc5322Date, stripFields } from '../../src/smtp/headers.js';
import { fcParams, fuzzTimeout } from '../helpers/fuzz-env.js';

const b = (x: string): Buffer => Buffer.from(x, 'latin1');
const s = (x: Buffer): string => x.toString('latin1');
const P = 'Received: by test\r\n';
/** What the next hop gets of `x` (before dot-stuffing): bare CR and bare LF as CRLF, NUL dropped. */
const wire = (x: string | Buffer): string => s(new LineEndNormaliser().push(typeof x === 'string' ? b(x) : x));
const STRIP = new Set(['x-batv-proxy']);

/** Feeds `pieces` (as separate chunks) through a HeaderRewriter; resolves with all it wrote. */
async function feed(pieces: readonly Buffer[], prepend = P, strip: ReadonlySet<string> = STRIP, max?: number): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(pieces.filter((p) => p.length > 0)),
    new HeaderRewriter(b(prepend), strip, max),
    new Writable({ write(c: Buffer, _e, cb) { out.push(c); cb(); } }),
  );
  return Buffer.concat(out);
}
/** The same, reporting a failure as a value together with whatever was written before it. */
async function attempt(pieces: readonly Buffer[], prepend = P, strip: ReadonlySet<string> = STRIP, max?: number): Promise<{ out: string; err: unknown }> {
  const out: Buffer[] = [];
  const err = await pipeline(
    Readable.from(pieces.filter((p) => p.length > 0)),
    new HeaderRewriter(b(prepend), strip, max),
    new Writable({ write(c: Buffer, _e, cb) { out.push(c); cb(); } }),
  ).then(() => null, (e: unknown) => e);
  return { out: s(Buffer.concat(out)), err };
}
const whole = (m: string, ...rest: [string?, ReadonlySet<string>?, number?]) => feed([b(m)], ...rest).then(wire);
const bytewise = (m: string | Buffer, ...rest: [string?, ReadonlySet<string>?, number?]) => {
  const buf = typeof m === 'string' ? b(m) : m;
  return feed(Array.from(buf, (x) => Buffer.from([x])), ...rest).then(wire);
};
/** `input` cut at the given offsets (taken modulo its length + 1, duplicates ignored). */
function cut(input: Buffer, cuts: readonly number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((x, y) => x - y);
  const pieces: Buffer[] = [];
  let from = 0;
  for (const c of at) {
    pieces.push(input.subarray(from, c));
    from = c;
  }
  pieces.push(input.subarray(from));
  return pieces;
}

describe('HeaderRewriter: where the header block ends', () => {
  it('at CRLF CRLF: fields stripped before it, the body after it untouched', async () => {
    const m = 'Subject: hi\r\nX-BATV-Proxy: forged\r\nFrom: a@b.example\r\n\r\nX-BATV-Proxy: in the body stays\r\n';
    const want = `${P}Subject: hi\r\nFrom: a@b.example\r\n\r\nX-BATV-Proxy: in the body stays\r\n`;
    expect(await whole(m)).toBe(want);
    expect(await bytewise(m)).toBe(want);
  });

  it('at LF LF (bare LF line ends)', async () => {
    const m = 'Subject: hi\nX-BATV-Proxy: forged\n\nX-BATV-Proxy: body\n';
    const want = wire(`${P}Subject: hi\n\nX-BATV-Proxy: body\n`);
    expect(await whole(m)).toBe(want);
    expect(await bytewise(m)).toBe(want);
  });

  it('at CRLF followed by a bare LF, and at whichever of CRLF CRLF / LF LF comes first', async () => {
    expect(await whole('X-BATV-Proxy: f\r\n\nX-BATV-Proxy: body\r\n\r\n')).toBe(wire(`${P}\nX-BATV-Proxy: body\r\n\r\n`));
    expect(await whole('A: 1\n\nX-BATV-Proxy: body\r\n\r\nX-BATV-Proxy: more\n')).toBe(wire(`${P}A: 1\n\nX-BATV-Proxy: body\r\n\r\nX-BATV-Proxy: more\n`));
    expect(await whole('A: 1\r\n\r\nX-BATV-Proxy: body\n\nx')).toBe(wire(`${P}A: 1\r\n\r\nX-BATV-Proxy: body\n\nx`));
  });

  it('at a CRLF CRLF cut anywhere across chunks: every single cut and every pair of cuts gives the same bytes', async () => {
    const m = b('Subject: a\r\nX-BATV-Proxy: f\r\n\r\nX-BATV-Proxy: body\r\n');
    const want = `${P}Subject: a\r\n\r\nX-BATV-Proxy: body\r\n`;
    for (let i = 0; i <= m.length; i++) expect(s(await feed(cut(m, [i])))).toBe(want);
    const end = s(m).indexOf('\r\n\r\n');
    for (let i = end - 2; i <= end + 6; i++) for (let j = i; j <= end + 6; j++) expect(s(await feed(cut(m, [i, j])))).toBe(want);
    expect(s(await feed(['Subject: a\r\nX-BATV-Proxy: f\r', '\n', '\r', '\nX-BATV-Proxy: body\r\n'].map(b)))).toBe(want);
  });

  it('at the very start: a message beginning with an empty line has no header block, even with that CRLF split', async () => {
    const m = '\r\nX-BATV-Proxy: a line of the body\r\n\r\nmore\r\n';
    const want = `${P}\r\nX-BATV-Proxy: a line of the body\r\n\r\nmore\r\n`;
    expect(await whole(m)).toBe(want);
    expect(await bytewise(m)).toBe(want);
    expect(wire(await feed(['\r', '\nX-BATV-Proxy: a line of the body\r\n\r\nmore\r\n'].map(b)))).toBe(want);
    expect(await whole('\nX-BATV-Proxy: body\n')).toBe(wire(`${P}\nX-BATV-Proxy: body\n`));
  });

  it('removes folded fields with all their continuation lines (tab and space), keeps folded fields not named', async () => {
    const m = [
      'X-BATV-Proxy: batv-valid; key=0;\r\n', '\tby=forged.example\r\n', '  and more\r\n',
      'Subject: a long\r\n', ' folded subject\r\n',
      'x-batv-proxy : lower case, space before the colon\r\n',
      'X-BATV-Proxy-Extra: a different field\r\n', '\tits continuation\r\n',
      '\r\n', 'body\r\n',
    ].join('');
    const want = `${P}Subject: a long\r\n folded subject\r\nX-BATV-Proxy-Extra: a different field\r\n\tits continuation\r\n\r\nbody\r\n`;
    expect(await whole(m)).toBe(want);
    expect(await bytewise(m)).toBe(want);
  });

  it('a message with no body: the header block and its empty line are all there is', async () => {
    expect(await whole('Subject: hi\r\nX-BATV-Proxy: f\r\n\r\n')).toBe(`${P}Subject: hi\r\n\r\n`);
    expect(await bytewise('Subject: hi\r\nX-BATV-Proxy: f\r\n\r\n')).toBe(`${P}Subject: hi\r\n\r\n`);
  });

  it('a message with no empty line at all: the whole message is the header block (stripped at the end)', async () => {
    expect(await whole('Subject: hi\r\nX-BATV-Proxy: f\r\n')).toBe(`${P}Subject: hi\r\n`);
    expect(await bytewise('Subject: hi\r\nX-BATV-Proxy: f\r\n')).toBe(`${P}Subject: hi\r\n`);
    expect(await whole('Subject: hi\r\nX-BATV-Proxy: no line end')).toBe(`${P}Subject: hi\r\n`);
    expect(await whole('just words, no colon, no line end')).toBe(`${P}just words, no colon, no line end`);
  });

  it('an empty message gets the prepended lines only', async () => {
    expect(await whole('')).toBe(P);
    expect(s(await feed([]))).toBe(P);
  });
});

describe('HeaderRewriter: the prepended lines and the body bytes', () => {
  const NOW = Date.UTC(2026, 10, 22, 19, 50, 0);
  const received = receivedHeader({
    helo: 'mta.example.net', clientHostname: 'mail.example.net', clientIp: '192.0.2.7', by: 'proxy.example.com',
    protocol: 'ESMTPS', id: 'A1B2C3000001', recipient: 'alice@example.com', nowMs: NOW,
  });

  it('receivedHeader() is exactly one folded Received: field', () => {
    expect(received).toBe('Received: from mta.example.net (mail.example.net [192.0.2.7])\r\n'
      + '\tby proxy.example.com (batv-proxy) with ESMTPS id A1B2C3000001\r\n'
      + '\tfor <alice@example.com>;\r\n'
      + '\tSun, 22 Nov 2026 19:50:00 +0000\r\n');
    expect(receivedHeader({ helo: 'h', clientIp: '2001:db8::1', by: 'p', protocol: 'ESMTP', id: 'X', nowMs: Date.UTC(2026, 0, 5, 3, 4, 5) }))
      .toBe('Received: from h ([2001:db8::1])\r\n\tby p (batv-proxy) with ESMTP id X;\r\n\tMon, 5 Jan 2026 03:04:05 +0000\r\n');
  });

  it('receivedHeader() cannot be made to carry another field: controls, spaces and parentheses become "_"', () => {
    const r = receivedHeader({ helo: 'evil (x)\r\nX-BATV-Proxy: y', clientHostname: 'a b\\c', clientIp: '192.0.2.1', by: 'p', protocol: 'ESMTP', id: 'I', recipient: 'a\r\nb<c>@d', nowMs: NOW });
    expect(r).toBe('Received: from evil_x_X-BATV-Proxy:_y (a_b_c [192.0.2.1])\r\n\tby p (batv-proxy) with ESMTP id I\r\n\tfor <abc@d>;\r\n\tSun, 22 Nov 2026 19:50:00 +0000\r\n');
    expect(receivedHeader({ helo: '', clientIp: '192.0.2.1', by: 'p', protocol: 'ESMTP', id: 'I', nowMs: NOW })).toContain('Received: from unknown ([192.0.2.1])\r\n');
  });

  it('rfc5322Date() and protocolName()', () => {
    expect(rfc5322Date(0)).toBe('Thu, 1 Jan 1970 00:00:00 +0000');
    expect(rfc5322Date(Date.UTC(2028, 1, 29, 23, 59, 59))).toBe('Tue, 29 Feb 2028 23:59:59 +0000');
    const names = [false, true].flatMap((utf8) => [false, true].flatMap((secure) => [false, true].map((authenticated) => protocolName({ secure, authenticated, utf8 }))));
    expect(names).toEqual(['ESMTP', 'ESMTPA', 'ESMTPS', 'ESMTPSA', 'UTF8SMTP', 'UTF8SMTPA', 'UTF8SMTPS', 'UTF8SMTPSA']);
  });

  it('inbound: Received: then our verdict field come first, byte for byte, the forged verdict is gone', async () => {
    const ours = 'X-BATV-Proxy: untagged; by=proxy.example.com\r\n';
    const m = 'X-BATV-Proxy: batv-valid; forged\r\nSubject: hi\r\n\r\nbody\r\n';
    const out = await feed([b(m)], received + ours, STRIP);
    expect(s(out)).toBe(`${received}${ours}Subject: hi\r\n\r\nbody\r\n`);
    expect(s(out.subarray(0, Buffer.byteLength(received + ours)))).toBe(received + ours);
  });

  it('outbound (nothing to strip): the prepended bytes, then the message unchanged, however it is chunked and however long its header', async () => {
    const m = 'X-BATV-Proxy: stays outbound\r\nSubject: hi\r\n\r\nbody\r\n';
    expect(await whole(m, received, new Set())).toBe(received + m);
    expect(await bytewise(m, received, new Set())).toBe(received + m);
    // nothing is held, so the header limit does not apply: 2 MiB of header without an empty line passes
    const big = Buffer.alloc(2 * MAX_HEADER_BYTES, 0x61);
    const out = await feed([big.subarray(0, 1000), big.subarray(1000)], received, new Set());
    expect(out.equals(Buffer.concat([b(received), big]))).toBe(true);
  });

  it('nothing is prepended when the prepend is empty', async () => {
    expect(await whole('A: 1\r\nX-BATV-Proxy: x\r\n\r\nbody', '')).toBe('A: 1\r\n\r\nbody');
    expect(await whole('A: 1\r\n\r\nbody', '', new Set())).toBe('A: 1\r\n\r\nbody');
  });

  it('passes every byte value of the body through (as the next hop gets it): NUL, bare CR/LF, 8-bit, "\\r\\n.\\r\\n", field-like lines', async () => {
    const bodyBytes = Buffer.concat([
      Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      b('\r\n.\r\n..\r\nX-BATV-Proxy: body\r\n\r\n\n\n\r\r\n\x00'),
      Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i)),
    ]);
    const m = Buffer.concat([b('Subject: bytes\r\nX-BATV-Proxy: f\r\n\r\n'), bodyBytes]);
    const want = wire(Buffer.concat([b(`${P}Subject: bytes\r\n\r\n`), bodyBytes]));
    expect(wire(await feed([m]))).toBe(want);
    expect(wire(await feed(Array.from(m, (x) => Buffer.from([x]))))).toBe(want);
    expect(wire(await feed(cut(m, [7, 33, 34, 35, 100, 300])))).toBe(want);
    // body chunks after the header block pass as they came (the encoder normalises them)
    expect((await feed([b('Subject: bytes\r\n\r\n'), bodyBytes])).subarray(-bodyBytes.length).equals(bodyBytes)).toBe(true);
  });
});

describe('HeaderRewriter: the header size limit', () => {
  it('MAX_HEADER_BYTES is 1 MiB: more header than that without an empty line is refused with 552 5.3.4, nothing written', async () => {
    expect(MAX_HEADER_BYTES).toBe(1024 * 1024);
    const line = b(`X-Filler: ${'a'.repeat(4086)}\r\n`); // 4 KiB
    const { out, err } = await attempt(Array.from({ length: 257 }, () => line));
    expect(err).toBeInstanceOf(SmtpReply);
    const r = err as SmtpReply;
    expect([r.responseCode, r.enhanced, r.text, r.message, r.line]).toEqual([552, '5.3.4', 'Message header too large', '5.3.4 Message header too large', '552 5.3.4 Message header too large']);
    expect(out).toBe('');
  });

  it('a header block just under 1 MiB, in 4 KiB chunks, with a body: passes whole', async () => {
    const line = b(`X-Filler: ${'a'.repeat(4086)}\r\n`);
    const m = Buffer.concat([...Array.from({ length: 255 }, () => line), b('X-BATV-Proxy: f\r\n\r\nbody\r\n')]);
    const out = await feed(cut(m, Array.from({ length: 260 }, (_, i) => i * 4096)));
    expect(out.equals(Buffer.concat([b(P), ...Array.from({ length: 255 }, () => line), b('\r\nbody\r\n')]))).toBe(true);
  });

  it('the limit is exact for a header without an empty line: maxHeaderBytes passes, one byte more is refused, whatever the chunking', async () => {
    const max = 64;
    const at = b(`Subject: ${'x'.repeat(max - 11)}\r\n`);
    expect(at.length).toBe(max);
    expect(s(await feed([at], P, STRIP, max))).toBe(P + s(at));
    expect(s(await feed(Array.from(at, (x) => Buffer.from([x])), P, STRIP, max))).toBe(P + s(at));
    const over = Buffer.concat([at, b('y')]);
    for (const pieces of [[over], Array.from(over, (x) => Buffer.from([x])), cut(over, [10, 40])]) {
      const { out, err } = await attempt(pieces, P, STRIP, max);
      expect([(err as SmtpReply | null)?.line, out]).toEqual(['552 5.3.4 Message header too large', '']);
    }
  });

  it('a header block well over the limit is refused when it arrives in pieces', async () => {
    const m = b(`A: ${'x'.repeat(200)}\r\n\r\nbody`);
    const { err } = await attempt(cut(m, [50, 100, 150]), P, STRIP, 64);
    expect((err as SmtpReply | null)?.line).toBe('552 5.3.4 Message header too large');
  });

  // Found by this file: the size check ran only while no end of the header block was found, so a chunk
  // that held the empty line was never checked. The same 205-byte header block
  // with maxHeaderBytes 64 is refused in pieces (above) but accepted in one chunk; with the default limit a
  // header block of any size arriving in one chunk together with its empty line is accepted (contrary to
  // "Fails with a 552 SmtpReply when the header block exceeds maxHeaderBytes"), and whether a 1 MiB + x
  // block passes depends on how TCP cut it. It also breaks "same output for every chunking".
  it('a header block well over the limit is refused also when it arrives in one chunk with its empty line', async () => {
    const m = b(`A: ${'x'.repeat(200)}\r\n\r\nbody`);
    const { err, out } = await attempt([m], P, STRIP, 64);
    expect(out).toBe('');
    expect((err as SmtpReply | null)?.line).toBe('552 5.3.4 Message header too large');
  });
});

describe('stripFields', () => {
  it('returns the same Buffer when nothing matches; a new one without the fields otherwise', () => {
    const block = b('Subject: x\r\nX-BATV-Proxy-Extra: y\r\n\tcont\r\nno colon here\r\n');
    expect(stripFields(block, STRIP)).toBe(block);
    expect(s(stripFields(b('\tleading continuation\r\nX-BATV-Proxy: a\n b\nC: d\n'), STRIP))).toBe('\tleading continuation\r\nC: d\n');
    expect(s(stripFields(b('X-BATV-Proxy: a\r\n'), new Set(['subject', 'x-batv-proxy'])))).toBe('');
  });
});

// ---- the chunking property ----
const NAMES = ['X-BATV-Proxy', 'x-batv-proxy', 'X-BATV-Proxy ', 'Subject', 'X-BATV-Proxy-Extra', 'From', 'Received'];
const value = fc.string({ unit: fc.constantFrom('a', 'Z', ' ', '\t', ':', ';', '=', '.', '\xfc', '\x00'), maxLength: 16 });
const field = fc.record({
  name: fc.constantFrom(...NAMES),
  value,
  folds: fc.array(fc.tuple(fc.constantFrom(' ', '\t'), value), { maxLength: 2 }),
});
/** Well-formed messages: fields, one kind of line end throughout, an optional empty line and body. */
const wellFormed = fc.record({
  fields: fc.array(field, { maxLength: 8 }),
  eol: fc.constantFrom('\r\n', '\n'),
  blank: fc.boolean(),
  body: fc.uint8Array({ maxLength: 80 }),
});
/** Byte soup from the characters the parser looks at. */
const soup = fc.string({ unit: fc.constantFrom('\r', '\n', '\r\n', '\n\n', '\r\n\r\n', 'X-BATV-Proxy:', 'A:', ' ', '\t', 'a', '.', '\x00'), maxLength: 40 });
const cuts = fc.array(fc.nat(), { maxLength: 10 });

function render(m: { fields: { name: string; value: string; folds: [string, string][] }[]; eol: string; blank: boolean; body: Uint8Array }): { input: Buffer; want: Buffer } {
  const text = (f: (typeof m.fields)[number]) => `${f.name}:${f.value}${m.eol}${f.folds.map(([w, v]) => `${w}${v}${m.eol}`).join('')}`;
  const head = m.fields.map(text).join('');
  const kept = m.fields.filter((f) => f.name.trim().toLowerCase() !== 'x-batv-proxy').map(text).join('');
  const tail = m.blank ? Buffer.concat([b(m.eol), Buffer.from(m.body)]) : Buffer.alloc(0);
  return { input: Buffer.concat([b(head), tail]), want: Buffer.concat([b(P + kept), tail]) };
}

describe('HeaderRewriter: the same output for every chunking (property)', () => {
  it('well-formed messages: any chunking and byte by byte give exactly prepend + kept fields + the rest', async () => {
    await fc.assert(fc.asyncProperty(wellFormed, cuts, async (m, at) => {
      const { input, want } = render(m);
      expect(wire(await feed([input]))).toBe(wire(want));
      expect(wire(await feed(cut(input, at)))).toBe(wire(want));
      expect(wire(await feed(Array.from(input, (x) => Buffer.from([x]))))).toBe(wire(want));
    }), fcParams(300));
  }, fuzzTimeout(3000));

  it('any bytes: any chunking and byte by byte give the bytes of the whole message in one chunk', async () => {
    await fc.assert(fc.asyncProperty(soup, cuts, async (text, at) => {
      const input = b(text);
      const once = wire(await feed([input]));
      expect(once.startsWith(P)).toBe(true);
      expect(wire(await feed(cut(input, at)))).toBe(once);
      expect(wire(await feed(Array.from(input, (x) => Buffer.from([x]))))).toBe(once);
    }), fcParams(300));
  }, fuzzTimeout(3000));
});

// ---- what the next hop sees: the rewriter's output after the next-hop encoder (src/smtp/dotstuff.ts) ----
/** The header-block lines the next hop reads: the encoder turns bare CR and bare LF into CRLF, drops NUL. */
function nextHopHeaderLines(out: Buffer): string[] {
  const wire = s(new DotStuffer().push(out));
  const end = wire.indexOf('\r\n\r\n');
  return (end < 0 ? wire : wire.slice(0, end)).split('\r\n');
}
const OURS = 'X-BATV-Proxy: untagged; by=proxy.test\r\n';
const verdictLines = (lines: string[]) => lines.filter((l) => /^x-batv-proxy\s*:/i.test(l));

describe('HeaderRewriter + next-hop encoder: no forged verdict reaches the next hop', () => {
  it('a forged verdict on its own CRLF or LF line is gone; only ours arrives', async () => {
    for (const m of ['Subject: a\r\nX-BATV-Proxy: forged\r\n\r\nbody\r\n', 'Subject: a\nX-BATV-Proxy: forged\n\nbody\n']) {
      expect(verdictLines(nextHopHeaderLines(await feed([b(m)], OURS)))).toEqual(['X-BATV-Proxy: untagged; by=proxy.test']);
    }
  });

  // Found by this file: fields were split at LF only, but the next-hop encoder turns a bare CR into CRLF,
  // so "Subject: a\rX-BATV-Proxy: forged" was one line here and two, one a forged verdict, at the mailbox.
  it('a forged verdict hidden behind a bare CR is removed', async () => {
    const out = await feed([b('Subject: a\rX-BATV-Proxy: batv-valid; forged\r\n\r\nbody\r\n')], OURS);
    expect(verdictLines(nextHopHeaderLines(out))).toEqual(['X-BATV-Proxy: untagged; by=proxy.test']);
  });

  // Found by this file: a NUL in front of (or inside) the name hid the field; the encoder then drops the NUL.
  it('a forged verdict hidden behind a NUL is removed', async () => {
    const out = await feed([b('Subject: a\r\n\x00X-BATV-Proxy: batv-valid; forged\r\nX-BATV-\x00Proxy: forged too\r\n\r\nbody\r\n')], OURS);
    expect(verdictLines(nextHopHeaderLines(out))).toEqual(['X-BATV-Proxy: untagged; by=proxy.test']);
  });

  // Found by this file: LF then CRLF was not taken for the end of the header block, though the next hop
  // reads it as CRLF CRLF; a body line named like a stripped field was removed.
  it('a header block ending in LF then CRLF leaves the body untouched', async () => {
    const m = 'Subject: hi\n\r\nX-BATV-Proxy: a line of the body\r\n\r\nmore\r\n';
    expect(await whole(m)).toBe(wire(P + m));
  });
});
