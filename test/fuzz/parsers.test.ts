/**
 * Property-based fuzzing (fast-check) of the pure parsers and decoders that see attacker-chosen bytes:
 * parseMailbox, batvVerify, srsReverse, splitAddressCommand, stripFields and HeaderRewriter. Each must
 * never throw, never hang (bounded time and work on long and pathological inputs), and keep its
 * round-trips: sign → verify, forward → reverse, format → parse, chunked = whole.
 *
 * Run counts scale with FUZZ_RUNS and the seed is FUZZ_SEED (test/helpers/fuzz-env.ts).
 */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { formatMailbox, MAX_ADDRESS_OCTETS, parseMailbox } from '../../src/tags/address.js';
import { batvSign, batvVerify } from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import { srsForward, srsReverse, SRS_DEFAULTS, type SrsOptions } from '../../src/tags/srs.js';
import { splitAddressCommand } from '../../src/smtp/internals.js';
import { HeaderRewriter, MAX_HEADER_BYTES, stripFields } from '../../src/smtp/headers.js';
import { LineEndNormaliser } from '../../src/smtp/dotstuff.js';
import { fcParams, fuzzTimeout } from '../helpers/fuzz-env.js';

const T = Date.parse('2026-01-01T12:00:00Z');
const DAY = 86_400_000;
const ring = makeKeyring([tagKey(3, utf8('fuzz-key-three')), tagKey(0, utf8('fuzz-key-zero'))]);
const SRS: SrsOptions = { ...SRS_DEFAULTS, domain: 'srs.example.net' };

/** Milliseconds `fn` takes (a generous bound is asserted: these are hang detectors, not benchmarks; each
 * of these inputs takes a few milliseconds, a regex with catastrophic backtracking would take minutes). */
function timed<T>(fn: () => T): { value: T; ms: number } {
  const t0 = performance.now();
  const value = fn();
  return { value, ms: performance.now() - t0 };
}

// ---- generators ----
const ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
const atom = fc.string({ unit: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...ATEXT) }, { weight: 1, arbitrary: fc.constantFrom('ü', '用', '😀') }), minLength: 1, maxLength: 12 });
const local = fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.'));
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?$/);
const domain = fc.array(label, { minLength: 1, maxLength: 3 }).map((a) => a.join('.'));
const address = fc.tuple(local, domain).map(([l, d]) => `${l}@${d}`);
/** Strings made of the characters every parser here treats specially, plus anything at all. */
const hostile = fc.oneof(
  fc.string({ unit: fc.constantFrom('a', 'Z', '0', '.', '@', '=', '+', '-', '_', '/', '"', '\\', '<', '>', '[', ']', ':', ',', ' ', '\t', '\r', '\n', 'S', 'R', '1', 'p', 'r', 'v', 's', 'ü', '\u0000'), maxLength: 120 }),
  fc.string({ unit: 'binary', maxLength: 120 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 60 }),
);
/** Mutations of a valid input: a character changed, inserted or removed, or a piece duplicated. */
function mutate(s: string, kind: number, at: number, ch: string): string {
  const i = s.length === 0 ? 0 : at % s.length;
  switch (kind % 4) {
    case 0: return s.slice(0, i) + ch + s.slice(i + 1);
    case 1: return s.slice(0, i) + ch + s.slice(i);
    case 2: return s.slice(0, i) + s.slice(i + 1);
    default: return s.slice(0, i) + s.slice(i, i + 8).repeat(3) + s.slice(i + 8);
  }
}
const mutation = fc.tuple(fc.nat(), fc.nat(), fc.constantFrom('=', '@', '.', 'A', 'a', '0', '-', '+', '_', '/', '"', ' ', 'ü', ''));

describe('parseMailbox', () => {
  it('never throws, and whatever it accepts formats back to the input and fits 254 octets', () => {
    fc.assert(fc.property(fc.oneof(hostile, address, fc.tuple(address, mutation).map(([a, [k, i, c]]) => mutate(a, k, i, c))), (s) => {
      const r = parseMailbox(s);
      if (r.ok) {
        expect(formatMailbox(r.mailbox)).toBe(s);
        expect(Buffer.byteLength(s)).toBeLessThanOrEqual(MAX_ADDRESS_OCTETS);
      } else expect(r.message.length).toBeGreaterThan(0);
    }), fcParams(2000));
  }, fuzzTimeout(8000));

  it('answers long and deeply quoted inputs at once: 1 MiB, 100,000 nested quoted-pairs, 10,000 labels', () => {
    const inputs = [
      'a'.repeat(1 << 20),
      `${'a'.repeat(1 << 20)}@example.com`,
      `"${'\\"'.repeat(100_000)}"@example.com`,
      `"${'\\'.repeat(200_001)}"@example.com`,
      `${'"'.repeat(50_000)}@example.com`,
      `user@${'a.'.repeat(10_000)}com`,
      `user@[${'1:'.repeat(50_000)}]`,
      `${'@'.repeat(100_000)}`,
    ];
    for (const s of inputs) {
      const { value, ms } = timed(() => parseMailbox(s));
      expect(value.ok).toBe(false);
      expect(ms).toBeLessThan(1000);
    }
    // and each of the bounded-size pathological shapes, at the 254-octet limit
    for (const s of [`"${'\\"'.repeat(124)}"@example.com`, `"${'\\'.repeat(233)}"@x.example`, `${'a.'.repeat(120)}a@example.com`]) {
      expect(timed(() => parseMailbox(s)).ms).toBeLessThan(200);
    }
  });
});

describe('batvVerify', () => {
  it('verify(sign(x)) gives x back for every key number and age 0..7; expired at 8', () => {
    fc.assert(fc.property(address, fc.integer({ min: 0, max: 8 }), (a, age) => {
      const s = batvSign(a, ring.signing, T);
      expect(s.kind).toBe('signed');
      if (s.kind !== 'signed') return;
      const v = batvVerify(s.address, ring, T + age * DAY);
      if (age <= 7) expect(v).toEqual({ kind: 'valid', original: a, keyNum: 3, ageDays: age });
      else expect(v).toMatchObject({ kind: 'invalid', reason: 'expired' });
    }), fcParams(500));
  }, fuzzTimeout(2000));

  it('never throws on hostile or mutated tags, and never calls a changed tag valid unless only case changed', () => {
    const tags = fc.tuple(address, mutation).map(([a, [k, i, c]]) => {
      const s = batvSign(a, ring.signing, T);
      const tagged = s.kind === 'signed' ? s.address : a;
      return { tagged, mutated: mutate(tagged, k, i, c) };
    });
    fc.assert(fc.property(fc.oneof(hostile.map((h) => ({ tagged: '', mutated: `prvs=${h}` })), hostile.map((h) => ({ tagged: '', mutated: h })), tags), ({ tagged, mutated }) => {
      const v = batvVerify(mutated, ring, T);
      expect(['not-tagged', 'valid', 'invalid']).toContain(v.kind);
      if (v.kind === 'valid' && tagged !== '') {
        // the hex and the "prvs" may change case; anything else that still verifies is a collision
        const norm = (x: string) => x.replace(/^prvs=(\d{4})([0-9a-f]{6})=/i, (_m, d: string, h: string) => `prvs=${d}${h.toLowerCase()}=`);
        expect(norm(mutated)).toBe(norm(tagged));
      }
    }), fcParams(2000));
  }, fuzzTimeout(8000));

  it('answers a 1 MiB tag and 100,000 "@"s at once', () => {
    for (const s of [`prvs=0461abcdef=${'a'.repeat(1 << 20)}@example.com`, `prvs=0461abcdef=${'@'.repeat(100_000)}`, `prvs=0461abcdef=${'a@'.repeat(100_000)}`, `PRVS=${'0'.repeat(1 << 20)}`]) {
      const { value, ms } = timed(() => batvVerify(s, ring, T));
      expect(value.kind).toBe('invalid');
      expect(ms).toBeLessThan(1000);
    }
  });
});

describe('srsReverse', () => {
  it('reverse(forward(x)) gives x back (SRS0), and the first forwarder\'s SRS0 back from an SRS1', () => {
    fc.assert(fc.property(address, domain, fc.integer({ min: 0, max: 21 }), (a, other, age) => {
      const f = srsForward(a, ring, SRS, T);
      if (f.kind !== 'rewritten') return;
      expect(srsReverse(f.address, ring, SRS, T + age * DAY)).toMatchObject({ kind: 'valid', scheme: 'SRS0', original: a });
      // a second forwarder (another SRS domain, same keys here) makes SRS1 out of our SRS0
      const second = srsForward(f.address, ring, { ...SRS, domain: `fwd2.${other}` }, T);
      if (second.kind !== 'rewritten') return;
      expect(second.scheme).toBe('SRS1');
      expect(srsReverse(second.address, ring, { ...SRS, domain: `fwd2.${other}` }, T)).toMatchObject({ kind: 'valid', scheme: 'SRS1', original: f.address });
    }), fcParams(500));
  }, fuzzTimeout(2000));

  it('never throws on hostile or mutated SRS addresses, and never accepts a changed one (beyond case and - + _ /)', () => {
    const srsAddrs = fc.tuple(address, mutation).map(([a, [k, i, c]]) => {
      const f = srsForward(a, ring, SRS, T);
      const s = f.kind === 'rewritten' ? f.address : a;
      return { s, mutated: mutate(s, k, i, c) };
    });
    fc.assert(fc.property(fc.oneof(hostile.map((h) => ({ s: '', mutated: `SRS0=${h}` })), hostile.map((h) => ({ s: '', mutated: `SRS1+${h}` })), hostile.map((h) => ({ s: '', mutated: h })), srsAddrs), ({ s, mutated }) => {
      const r = srsReverse(mutated, ring, SRS, T);
      expect(['not-tagged', 'valid', 'invalid']).toContain(r.kind);
      if (r.kind === 'valid' && s !== '' && mutated !== s) {
        // What may change and still verify: the separator after SRS0; the hash's case, "-"/"+" and "_"/"/",
        // and anything after its first hashLength characters (libsrs2 and postsrsd truncate a longer hash
        // the same way); the case of the hashed fields (they are hashed lowercased); the domain after "@".
        const cover = (x: string) => {
          const local = x.slice(0, x.lastIndexOf('@'));
          const m = /^(srs[01])[=+-]([^=]*)=(.*)$/is.exec(local);
          if (!m) return `unparsed:${local}`;
          const hash = m[2]!.slice(0, SRS.hashLength).toLowerCase().replace(/-/g, '+').replace(/_/g, '/');
          return `${m[1]!.toLowerCase()}|${hash}|${m[3]!.toLowerCase()}`;
        };
        expect(cover(mutated)).toBe(cover(s));
      }
    }), fcParams(2000));
  }, fuzzTimeout(8000));

  it('answers 1 MiB SRS0/SRS1 addresses and 100,000 "=" at once', () => {
    for (const s of [`SRS0=abcd=AB=${'a'.repeat(1 << 20)}=user@srs.example.net`, `SRS0=${'='.repeat(100_000)}@x`, `SRS1=abcd=${'h'.repeat(1 << 20)}==x@y`, `SRS0+${'a='.repeat(100_000)}@x`]) {
      const { value, ms } = timed(() => srsReverse(s, ring, SRS, T));
      expect(value.kind).toBe('invalid');
      expect(ms).toBeLessThan(1000);
    }
  });
});

describe('splitAddressCommand', () => {
  const param = fc.stringMatching(/^[A-Z]{1,8}(=[!-<>-~]{1,20})?$/);
  it('returns the address as written (source route removed) and the parameter tokens, for generated commands', () => {
    fc.assert(fc.property(fc.constantFrom('MAIL FROM:', 'RCPT TO:', 'mail from: ', 'RCPT TO:  '), fc.option(fc.array(domain, { minLength: 1, maxLength: 3 })), fc.oneof(address, fc.constant('')), fc.array(param, { maxLength: 4 }), (verb, route, a, params) => {
      const path = route ? `${route.map((d) => `@${d}`).join(',')}:${a}` : a;
      const r = splitAddressCommand(`${verb}<${path}>${params.map((p) => ` ${p}`).join('')}`);
      expect(r).toEqual({ raw: a, rawParams: params });
    }), fcParams(500));
  }, fuzzTimeout(2000));

  it('never throws on hostile commands and returns null or an address without angle brackets', () => {
    fc.assert(fc.property(fc.oneof(hostile, hostile.map((h) => `MAIL FROM:<${h}`), hostile.map((h) => `RCPT TO:<${h}>`), hostile.map((h) => `RCPT TO:<@${h}:${h}> ${h}`)), (c) => {
      const r = splitAddressCommand(c);
      if (r !== null) {
        expect(r.raw).not.toMatch(/[<>]/);
        for (const p of r.rawParams) expect(p).not.toMatch(/^\s*$/);
      }
    }), fcParams(2000));
  }, fuzzTimeout(8000));

  it('answers 1 MiB commands and 100,000-hop source routes at once', () => {
    for (const c of [`MAIL FROM:<${'a'.repeat(1 << 20)}@example.com>`, `RCPT TO:<${'@a,'.repeat(100_000)}@b:u@example.com>`, `RCPT TO:<${'@a'.repeat(100_000)}:u@x>`, `MAIL FROM:<a@b>${' X=1'.repeat(100_000)}`, `RCPT TO:${'<'.repeat(1 << 20)}`]) {
      expect(timed(() => splitAddressCommand(c)).ms).toBeLessThan(1000);
    }
  });
});

// ---- headers ----
const fieldName = fc.constantFrom('X-BATV-Proxy', 'x-batv-proxy', 'X-Batv-Proxy ', 'Subject', 'Received', 'X-BATV-Proxy-Extra', 'From');
const headerLine = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fieldName, fc.string({ unit: fc.constantFrom('a', ' ', ':', ';', '=', 'ü'), maxLength: 20 })).map(([n, v]) => `${n}:${v}\r\n`) },
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom('a', ' ', '\t'), maxLength: 10 }).map((v) => `\t${v}\r\n`) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom('a', ':', '\r', '\n', ' '), maxLength: 12 }) },
);
const message = fc.tuple(fc.array(headerLine, { maxLength: 12 }), fc.constantFrom('\r\n', '\n', ''), fc.string({ unit: 'binary-ascii', maxLength: 60 }))
  .map(([h, sep, body]) => Buffer.from(`${h.join('')}${sep}${body}`, 'latin1'));
const STRIP = new Set(['x-batv-proxy']);

async function rewrite(input: Buffer, cuts: number[], prepend = 'Received: by test\r\n', strip: ReadonlySet<string> = STRIP): Promise<Buffer> {
  const pieces: Buffer[] = [];
  let from = 0;
  for (const c of [...new Set(cuts.map((x) => x % (input.length + 1)))].sort((a, b) => a - b)) {
    pieces.push(input.subarray(from, c));
    from = c;
  }
  pieces.push(input.subarray(from));
  const out: Buffer[] = [];
  await pipeline(Readable.from(pieces.filter((p) => p.length > 0)), new HeaderRewriter(Buffer.from(prepend), strip), new Writable({ write(c: Buffer, _e, cb) { out.push(c); cb(); } }));
  return Buffer.concat(out);
}

describe('stripFields', () => {
  it('never throws; leaves no line a lenient parser reads as the verdict field; keeps every other field; is idempotent', () => {
    // a lenient reader: a line not starting with SP/HT starts a field; its name is what precedes the
    // first ":", whitespace (CR included) trimmed, case ignored
    const nameOf = (l: string) => (/^[ \t]/.test(l) || !l.includes(':') ? null : l.slice(0, l.indexOf(':')).trim().toLowerCase());
    fc.assert(fc.property(message, (m) => {
      const once = stripFields(m, STRIP);
      expect(stripFields(once, STRIP).equals(once)).toBe(true);
      const before = m.toString('latin1').split(/(?<=\n)/);
      const after = once.toString('latin1').split(/(?<=\n)/);
      for (const l of after) expect(nameOf(l)).not.toBe('x-batv-proxy');
      // every line that starts another field is kept, in order
      const fields = (ls: string[]) => ls.filter((l) => { const n = nameOf(l); return n !== null && n !== 'x-batv-proxy'; });
      expect(fields(after)).toEqual(fields(before));
      if (!before.some((l) => nameOf(l) === 'x-batv-proxy')) expect(once).toBe(m);
    }), fcParams(1000));
  }, fuzzTimeout(4000));

  it('answers a 1 MiB block of 100,000 matching folded fields at once', () => {
    const block = Buffer.from('X-BATV-Proxy: forged\r\n\tmore\r\n'.repeat(35_000), 'latin1');
    const { value, ms } = timed(() => stripFields(block, STRIP));
    expect(value.length).toBe(0);
    expect(ms).toBeLessThan(1000);
  });
});

describe('HeaderRewriter', () => {
  it('sends the same bytes however the message is chunked: prepend + stripped header block + the rest unchanged', async () => {
    // Compared as the next-hop encoder sends them (bare CR/LF as CR LF, no NUL; src/smtp/dotstuff.ts):
    // the header block is read and passed in that form, the body as it came, for the encoder to normalise.
    const wire = (b: Buffer) => new LineEndNormaliser().push(b).toString('latin1');
    await fc.assert(fc.asyncProperty(message, fc.array(fc.nat(), { maxLength: 8 }), async (m, cuts) => {
      const whole = wire(await rewrite(m, []));
      const chunked = wire(await rewrite(m, cuts));
      expect(chunked).toBe(whole);
      expect(whole.slice(0, 19)).toBe('Received: by test\r\n');
      // the body (after the first empty line) passes untouched
      const text = wire(m);
      const end = text.startsWith('\r\n') ? 0 : text.indexOf('\r\n\r\n') + 2;
      if (end >= 2 || text.startsWith('\r\n')) expect(whole.endsWith(text.slice(end))).toBe(true);
    }), fcParams(500));
  }, fuzzTimeout(2000));

  it('a message with no header block keeps its body when its first CRLF arrives split ("\\r" | "\\n...")', async () => {
    // Found by the property above at FUZZ_RUNS=100000 (run 12059): the "message starts with an empty line"
    // check only looked at a first chunk of 2 bytes or more, so with "\r" alone in the first chunk the
    // body was taken for a header block: its verdict-named lines were stripped, and a body over 1 MiB
    // without an empty line would be refused as "header too large".
    const m = Buffer.from('\r\nX-BATV-Proxy: a line of the body\r\nmore body\r\n');
    const whole = await rewrite(m, []);
    expect(whole.toString()).toBe('Received: by test\r\n\r\nX-BATV-Proxy: a line of the body\r\nmore body\r\n');
    expect((await rewrite(m, [1])).toString()).toBe(whole.toString());
  });

  it('refuses a header block over 1 MiB without an empty line with 552 5.3.4', async () => {
    const line = Buffer.from(`X-Filler: ${'a'.repeat(4086)}\r\n`);
    const src = Readable.from(Array.from({ length: 300 }, () => line));
    const err = await pipeline(src, new HeaderRewriter(Buffer.from('Received: x\r\n'), STRIP), new Writable({ write(_c, _e, cb) { cb(); } })).then(() => null, (e: Error) => e);
    expect(err?.message).toBe('5.3.4 Message header too large');
    expect((err as { responseCode?: number } | null)?.responseCode).toBe(552);
  });

  it('holding a long header block costs work linear in its size, whatever the chunk size (1 MiB in 1 KiB chunks copies < 8 MiB)', () => {
    // Count the bytes HeaderRewriter copies while it looks for the end of the header block. An attacker
    // controls TCP segmentation, so chunk size must not turn the 1 MiB bound into quadratic CPU work:
    // it used to re-concatenate (and re-scan) everything held so far for every chunk, so 1 MiB arriving in
    // 1 KiB pieces copied ~512 MiB, in 256-byte pieces ~2 GiB (about a second of CPU per message, with
    // every other connection waiting), in 64-byte pieces ~8 GiB. The loop stops at the bound.
    let copied = 0;
    const real = Buffer.concat;
    const spy = vi.spyOn(Buffer, 'concat').mockImplementation((list: readonly Uint8Array[], total?: number) => {
      const b = real(list, total);
      copied += b.length;
      return b;
    });
    try {
      const hr = new HeaderRewriter(Buffer.from('Received: x\r\n'), STRIP);
      hr.on('error', () => undefined);
      hr.resume();
      const piece = Buffer.from(`X-F: ${'a'.repeat(1017)}\r\n`);
      for (let sent = 0; sent <= MAX_HEADER_BYTES && copied < 8 * MAX_HEADER_BYTES; sent += piece.length) hr.write(piece);
    } finally {
      spy.mockRestore();
    }
    expect(copied).toBeLessThan(8 * MAX_HEADER_BYTES);
  });
});
