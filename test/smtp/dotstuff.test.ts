import fc from 'fast-check';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { describe, expect, it, vi } from 'vitest';
import { PassThrough, Readable, Writable } from 'node:stream';
import { DotStuffer, dotStuff, hasBareLineEnd, writeStuffed } from '../../src/smtp/dotstuff.js';
import { LINE_RULES, readData } from '../helpers/lenient-receiver.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const s = (buf: Buffer): string => buf.toString('latin1');

/** Stuffs `chunks` one push at a time, as the client does, and returns the wire bytes. */
function stuffChunks(chunks: Buffer[]): Buffer {
  const st = new DotStuffer();
  return Buffer.concat([...chunks.map((c) => st.push(c)), st.end()]);
}

/** Splits `buf` at the given cut points (any numbers; taken modulo the length). */
function cut(buf: Buffer, points: number[]): Buffer[] {
  const at = [...new Set(points.map((p) => (buf.length ? p % (buf.length + 1) : 0)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...at, buf.length]) {
    out.push(buf.subarray(from, p));
    from = p;
  }
  return out.filter((c) => c.length > 0);
}

/** Feeds wire bytes (after a 354) to smtp-server's own SMTPStream in data mode; resolves with what onData would read. */
async function smtpServerReads(wire: Buffer[]): Promise<Buffer> {
  const parser = new SMTPStream();
  parser.oncommand = (_cmd, next) => next?.();
  const stream = parser.startDataMode();
  const out: Buffer[] = [];
  const ended = new Promise<void>((resolve) => stream.on('end', resolve));
  stream.on('data', (c: Buffer) => out.push(c));
  for (const chunk of wire) parser.write(chunk);
  await ended;
  return Buffer.concat(out);
}

/**
 * A receiver that ends lines at any LF and removes the first "." of every line (RFC 5321 §4.5.2 read
 * leniently, as Postfix's smtpd does): returns the body and whether the end was exactly the last line.
 */
function lenientReceiverReads(wire: Buffer): { body: Buffer; endAtLastLine: boolean } {
  const lines: Buffer[] = [];
  let from = 0;
  while (from < wire.length) {
    const nl = wire.indexOf(0x0a, from);
    const line = wire.subarray(from, nl === -1 ? wire.length : nl + 1);
    from += line.length;
    const bare = s(line).replace(/\r?\n$/, '');
    if (bare === '.') return { body: Buffer.concat(lines), endAtLastLine: from === wire.length };
    lines.push(line[0] === 0x2e ? line.subarray(1) : line);
  }
  return { body: Buffer.concat(lines), endAtLastLine: false };
}

describe('DotStuffer', () => {
  it.each([
    ['a line that is just "."', '.\r\n', '..\r\n.\r\n'],
    ['lines starting with ".."', '..x\r\n...\r\n', '...x\r\n....\r\n.\r\n'],
    ['a dot inside a line', 'a.b\r\n.c.\r\n', 'a.b\r\n..c.\r\n.\r\n'],
    ['a body without final CRLF', 'abc', 'abc\r\n.\r\n'],
    ['a body ending in a bare LF', 'abc\n', 'abc\r\n.\r\n'],
    ['a body ending in a bare CR', 'abc\r', 'abc\r\n.\r\n'],
    ['an empty body', '', '.\r\n'],
    ['a body that is one CRLF', '\r\n', '\r\n.\r\n'],
    ['a dot after a bare LF', 'a\n.\r\nb\r\n', 'a\r\n..\r\nb\r\n.\r\n'],
    ['a dot after a bare CR', 'a\r.b\r\n', 'a\r\n..b\r\n.\r\n'],
    ['CR . CR (CVE-2023-51764)', 'a\r.\rMAIL FROM:<x@y>\r\n', 'a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n'],
    ['CR . CRLF', 'a\r.\r\nMAIL FROM:<x@y>\r\n', 'a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n'],
    ['LF . LF', 'a\n.\nb\r\n', 'a\r\n..\r\nb\r\n.\r\n'],
    ['NUL before a line-start dot', 'a\r\n\x00.\r\nb\r\n', 'a\r\n..\r\nb\r\n.\r\n'],
    ['CR CR LF', 'a\r\r\nb\r\n', 'a\r\n\r\nb\r\n.\r\n'],
    ['LF CR', 'a\n\rb\r\n', 'a\r\n\r\nb\r\n.\r\n'],
    ['8-bit and NUL bytes', '\xff\x00\x80\r\n.\xe9\r\n', '\xff\x80\r\n..\xe9\r\n.\r\n'],
    ['a smuggling attempt', 'a\r\n.\nMAIL FROM:<x@y>\r\n', 'a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n'],
  ])('dotStuff() stuffs %s exactly', (_name, body, wire) => {
    expect(s(dotStuff(b(body)))).toBe(wire);
  });

  it('push() carries the line start across chunks: "." opening a chunk after one that ended in LF', () => {
    expect(s(stuffChunks([b('a\r\n'), b('.b\r\n')]))).toBe('a\r\n..b\r\n.\r\n');
    expect(s(stuffChunks([b('a\n'), b('.')]))).toBe('a\r\n..\r\n.\r\n');
    expect(s(stuffChunks([b('a\r'), b('.')]))).toBe('a\r\n..\r\n.\r\n');
    expect(s(stuffChunks([b('a\r'), b('\x00'), b('.')]))).toBe('a\r\n..\r\n.\r\n');
    expect(s(stuffChunks([b('.'), b('.'), b('\r\n')]))).toBe('...\r\n.\r\n');
  });

  it('push() handles a chunk boundary between CR and LF', () => {
    expect(s(stuffChunks([b('a\r'), b('\n.b\r'), b('\n')]))).toBe('a\r\n..b\r\n.\r\n');
    expect(s(stuffChunks([b('abc\r'), b('\n')]))).toBe('abc\r\n.\r\n');
  });

  it('push() returns a chunk without line-leading dots as the same buffer (no copy) and never mutates input', () => {
    const st = new DotStuffer();
    const plain = b('no dots at line start.\r\nx.y\r\n');
    expect(st.push(plain)).toBe(plain);
    const dotted = b('\r\n.z');
    const copy = Buffer.from(dotted);
    expect(s(st.push(dotted))).toBe('\r\n..z');
    expect(dotted.equals(copy)).toBe(true);
    expect(st.bodyBytes).toBe(plain.length + dotted.length);
  });

  it('push() gives the same bytes for every way of cutting a tricky body into chunks', () => {
    const body = b('.\r\n..\r\nx\n.y\r\r\n.\r\n\r\n.');
    const whole = stuffChunks([body]);
    for (let i = 0; i <= body.length; i++) {
      for (let j = i; j <= body.length; j++) {
        expect(stuffChunks([body.subarray(0, i), body.subarray(i, j), body.subarray(j)])).toEqual(whole);
      }
    }
  });

  it('stuffs 50 MiB in which every line starts with a dot, chunk by chunk, allocating once per chunk', () => {
    // Work is counted, not timed: every output chunk is one allocation of its own size (no re-copying).
    const chunk = b('.line starting with a dot\r\n'.repeat(2427)); // ~64 KiB
    const st = new DotStuffer();
    let allocated = 0;
    let allocations = 0;
    const real = Buffer.allocUnsafe;
    const spy = vi.spyOn(Buffer, 'allocUnsafe').mockImplementation((n: number) => { allocated += n; allocations++; return real(n); });
    let out = 0;
    let chunks = 0;
    try {
      for (let sent = 0; sent < 50 * 1024 * 1024; sent += chunk.length, chunks++) out += st.push(chunk).length;
    } finally {
      spy.mockRestore();
    }
    expect(out).toBe(st.bodyBytes + st.bodyBytes / 27);
    expect([allocations, allocated]).toEqual([chunks, out]);
  });
});

// Bodies as smtp-server can hand them over: lines with random dots, mostly CRLF-ended, sometimes bare LF
// or CR, some 8-bit bytes; ending in CRLF or empty (as smtp-server's onData output always does) or not.
const lineArb = fc.tuple(
  fc.constantFrom('', '.', '..', '...', '.x', '..x', 'a.', 'x', 'From .', '\xff\x00', 'MAIL FROM:<a@b>'),
  fc.constantFrom('\r\n', '\r\n', '\r\n', '\n', '\r', ''),
).map(([text, eol]) => text + eol);
const bodyArb = fc.array(lineArb, { maxLength: 30 }).map((lines) => b(lines.join('')));
const cutsArb = fc.array(fc.nat(2000), { maxLength: 8 });

/** What a receiver reads: every bare CR and LF a CRLF, NUL gone, a CRLF added when the body lacks one. */
function expectedRead(body: Buffer): string {
  const n = s(body).replace(/\r\n|\r|\n/g, '\r\n').replace(/\x00/g, '');
  return n === '' || n.endsWith('\r\n') ? n : `${n}\r\n`;
}

describe('DotStuffer against receivers (property)', () => {
  it('smtp-server reads back exactly the body with its line ends normalised to CRLF and NUL dropped', async () => {
    await fc.assert(
      fc.asyncProperty(bodyArb, cutsArb, cutsArb, async (body, stuffCuts, wireCuts) => {
        const wire = stuffChunks(cut(body, stuffCuts));
        const read = await smtpServerReads(cut(wire, wireCuts));
        expect(s(read)).toBe(expectedRead(body));
      }),
      { numRuns: 500 },
    );
  });

  it('the wire has only CRLF line ends, no NUL, and no unstuffed line-start dot', () => {
    fc.assert(
      fc.property(bodyArb, cutsArb, (body, cuts) => {
        const wire = s(stuffChunks(cut(body, cuts)));
        expect(wire).not.toMatch(/\r(?!\n)|(?<!\r)\n|\x00/);
        expect(wire.endsWith('\r\n.\r\n') || wire === '.\r\n').toBe(true);
        const lines = wire.slice(0, wire === '.\r\n' ? 0 : -3).split('\r\n');
        for (const l of lines) if (l.startsWith('.')) expect(l.startsWith('..')).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it('a receiver that ends lines at any LF reads back the normalised body and sees the end only at the end', () => {
    fc.assert(
      fc.property(bodyArb, cutsArb, (body, cuts) => {
        const wire = stuffChunks(cut(body, cuts));
        const { body: read, endAtLastLine } = lenientReceiverReads(wire);
        expect(endAtLastLine).toBe(true);
        expect(s(read)).toBe(expectedRead(body));
      }),
      { numRuns: 1000 },
    );
  });

  it.each(LINE_RULES)('a %s receiver (test/helpers/lenient-receiver.ts) reads exactly the one normalised body and nothing after it', (rule) => {
    fc.assert(
      fc.property(bodyArb, cutsArb, (body, cuts) => {
        const { body: read, after } = readData(stuffChunks(cut(body, cuts)), rule);
        expect(read).toBe(expectedRead(body));
        expect(after).toBe('');
      }),
      { numRuns: 1000 },
    );
  });

  it('the body smtp-server yields for what a client sent is relayed so that smtp-server yields it again, normalised', async () => {
    // client wire → proxy's smtp-server → DotStuffer → next hop's smtp-server
    const clientWire = fc.array(lineArb, { maxLength: 30 }).map((lines) => b(`${lines.join('')}\r\n.\r\n`));
    await fc.assert(
      fc.asyncProperty(clientWire, cutsArb, async (wire, cuts) => {
        const atProxy = await smtpServerReads(cut(wire, cuts));
        const atNextHop = await smtpServerReads(cut(stuffChunks([atProxy]), cuts));
        expect(s(atNextHop)).toBe(expectedRead(atProxy));
      }),
      { numRuns: 500 },
    );
  });
});

describe('hasBareLineEnd()', () => {
  it.each([
    ['CRLF only', 'a\r\nb\r\n', false, false],
    ['a bare LF', 'a\nb', false, true],
    ['a bare CR', 'a\rb', false, true],
    ['a NUL', 'a\x00b\r\n', false, true],
    ['a CR at the end (its LF may follow)', 'a\r', false, false],
    ['an LF opening a chunk after a CR', '\nb', true, false],
    ['an LF opening a chunk without a CR before', '\nb', false, true],
    ['anything else after a CR', 'b', true, true],
  ])('%s', (_n, chunk, afterCR, bare) => {
    expect(hasBareLineEnd(b(chunk), afterCR)).toBe(bare);
  });
});

describe('writeStuffed()', () => {
  it('writes the stuffed body but its last chunk, and hands that chunk back at "ended" (one write with the terminator)', async () => {
    const got: Buffer[] = [];
    const out = new Writable({ write(c: Buffer, _e, cb) { got.push(c); cb(); } });
    const st = new DotStuffer();
    const r = await writeStuffed(Readable.from([b('a\r\n'), b('.b\r\n')]), out, st, { idleTimeoutMs: 1000, onStuck: () => undefined, stop: new Promise(() => undefined) });
    expect(r.outcome).toBe('ended');
    expect([got.map(s), s(r.outcome === 'ended' ? r.last : Buffer.alloc(0)), s(st.end())]).toEqual([['a\r\n'], '..b\r\n', '.\r\n']);
  });

  it('hands back an empty last chunk for an empty body and writes nothing', async () => {
    const got: Buffer[] = [];
    const out = new Writable({ write(c: Buffer, _e, cb) { got.push(c); cb(); } });
    const r = await writeStuffed(Readable.from([]), out, new DotStuffer(), { idleTimeoutMs: 1000, onStuck: () => undefined, stop: new Promise(() => undefined) });
    expect(r).toEqual({ outcome: 'ended', last: Buffer.alloc(0) });
    expect(got).toEqual([]);
  });

  it('pauses the body while the output is full and calls onStuck after idleTimeoutMs', async () => {
    const out = new PassThrough({ highWaterMark: 1024 }); // never read: stays full
    let produced = 0;
    const body = new Readable({ read() { produced += 1024; this.push(Buffer.alloc(1024, 0x61)); } });
    let stuckCalls = 0;
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => { stop = resolve; });
    const result = writeStuffed(body, out, new DotStuffer(), { idleTimeoutMs: 100, onStuck: () => { stuckCalls++; stop(); }, stop: stopped });
    expect((await result).outcome).toBe('stopped');
    expect(stuckCalls).toBe(1);
    expect(produced).toBeLessThan(64 * 1024);
    expect(body.listenerCount('data')).toBe(0);
  });

  it('rejects with the body\'s error, or when the body closes before its end', async () => {
    const opts = { idleTimeoutMs: 1000, onStuck: () => undefined, stop: new Promise(() => undefined) };
    const failing = new PassThrough();
    const r1 = writeStuffed(failing, new PassThrough(), new DotStuffer(), opts);
    failing.destroy(new Error('client vanished'));
    await expect(r1).rejects.toThrow('client vanished');
    const closing = new PassThrough();
    const r2 = writeStuffed(closing, new PassThrough(), new DotStuffer(), opts);
    closing.destroy();
    await expect(r2).rejects.toThrow('Cannot relay message: body closed before its end');
  });
});
