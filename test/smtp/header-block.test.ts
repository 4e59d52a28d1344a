/**
 * The one header-block parser (src/smtp/headers.ts headerBlockEnd): the rewriter that strips forged
 * verdict fields and the bounce classifier must agree where the header ends, for every line-end mix.
 */
import fc from 'fast-check';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LineEndNormaliser } from '../../src/smtp/dotstuff.js';
import { HeaderRewriter, headerBlockEnd } from '../../src/smtp/headers.js';
import { fcParams } from '../helpers/fuzz-env.js';

const b = (s: string) => Buffer.from(s, 'latin1');

async function rewrite(chunks: Buffer[]): Promise<string> {
  const out: Buffer[] = [];
  const t = new HeaderRewriter(b('P: 1\r\n'), new Set(['x-verdict']));
  Readable.from(chunks).pipe(t);
  for await (const c of t) out.push(c as Buffer);
  return Buffer.concat(out).toString('latin1');
}

describe('headerBlockEnd', () => {
  it('ends the block at the first empty line, whatever its line ends', () => {
    for (const [msg, end] of [
      ['A: 1\r\n\r\nbody', 8], ['A: 1\n\nbody', 6], ['A: 1\n\r\nbody', 7], ['A: 1\r\n\nbody', 7],
      ['\r\nbody', 2], ['\nbody', 1], ['A: 1\r\nB: 2\r\n', -1], ['A: 1\r\n\r', -1], ['A: 1\r\r\nB', -1],
    ] as const) expect(headerBlockEnd(b(msg), 0, msg.length, true), JSON.stringify(msg)).toBe(end);
  });

  it('the rewriter strips a field wherever the next hop would read one, identically for every chunking', async () => {
    // What the next hop gets is the rewriter's output through the encoder (bare CR/LF as CR LF, no NUL):
    // a field name cut by a NUL or a line after a bare CR must be stripped as the field it becomes there.
    const wire = (s: string) => new LineEndNormaliser().push(b(s)).toString('latin1');
    const piece = fc.constantFrom('X-Verdict: forged', 'X-Ver\0dict: forged', 'Subject: s', ' folded', '\r\n', '\n', '\r', '\0', 'body', '');
    await fc.assert(fc.asyncProperty(fc.array(piece, { maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 8 }), async (pieces, sizes) => {
      const msg = b(pieces.join(''));
      const whole = wire(await rewrite([msg]));
      const chunks: Buffer[] = [];
      for (let at = 0, i = 0; at < msg.length; i++) {
        const n = sizes[i % sizes.length]!;
        chunks.push(msg.subarray(at, at + n));
        at += n;
      }
      expect(wire(await rewrite(chunks))).toBe(whole);
      const sent = wire(msg.toString('latin1'));
      const end = headerBlockEnd(b(sent), 0, sent.length, true);
      const body = end < 0 ? '' : sent.slice(end);
      expect(whole).toBe(`P: 1\r\n${whole.slice(6, whole.length - body.length)}${body}`);
      expect(/^x-verdict/im.test(whole.slice(0, whole.length - body.length))).toBe(false);
    }), fcParams(300));
  });
});
