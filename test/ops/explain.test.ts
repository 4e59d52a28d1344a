/**
 * `batv-proxy explain ADDRESS`, in-process through main(argv, io): the exact lines for a valid and an
 * expired BATV tag, a forged one, postsrsd's SRS0 vector, an SRS1 made from it, an untagged address, a
 * tag checked against the keyring on disk (key named by number and thumbprint), and the exit codes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/main.js';
import type { Io } from '../../src/cli/args.js';
import { T0 } from '../helpers/proxy.js';

async function run(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: Io = { out: (t) => { out += t; }, err: (t) => { err += t; }, env, now: () => T0 };
  const code = await main(argv, io);
  return { code, out, err };
}

describe('explain', () => {
  it('a valid BATV tag (the published example): original, key, dates, and "accepted"; exit 0', async () => {
    expect(await run(['explain', 'prvs=5461cd18bc=user@example.com', '--secret', 'secret', '--now', '2026-01-03T00:00:00Z'])).toEqual({
      code: 0,
      err: '',
      out: [
        'address: prvs=5461cd18bc=user@example.com',
        'now: 2026-01-03T00:00:00.000Z',
        'scheme: BATV prvs (draft-levine-smtp-batv-01)',
        'original: user@example.com',
        'key number: 5',
        'signed: 2026-01-01 (UTC day; the tag carries 461, the expiry day mod 1000)',
        'valid through: 2026-01-08 (max age 7 days)',
        'signature: valid with key 5',
        'verdict: accepted (age 2 days): a bounce is delivered to user@example.com',
        '',
      ].join('\n'),
    });
  });

  it('the same tag after its lifetime: "refused: BATV signature expired"; exit 1', async () => {
    expect(await run(['explain', 'prvs=5461cd18bc=user@example.com', '--secret', 'secret', '--now', '2026-01-20T00:00:00Z'])).toEqual({
      code: 1,
      err: 'refused: BATV signature expired\n',
      out: [
        'address: prvs=5461cd18bc=user@example.com',
        'now: 2026-01-20T00:00:00.000Z',
        'scheme: BATV prvs (draft-levine-smtp-batv-01)',
        'original: user@example.com',
        'key number: 5',
        'signed: 2026-01-01 (UTC day; the tag carries 461, the expiry day mod 1000)',
        'valid through: 2026-01-08 (max age 7 days)',
        'verdict: refused: BATV signature expired',
        '',
      ].join('\n'),
    });
  });

  it('a forged signature: "refused: BATV signature invalid"; exit 1', async () => {
    const r = await run(['explain', 'prvs=5461cd18bd=user@example.com', '--secret', 'secret', '--now', '2026-01-03T00:00:00Z']);
    expect(r.code).toBe(1);
    expect(r.out.split('\n').at(-2)).toBe('verdict: refused: BATV signature invalid');
  });

  it('postsrsd\'s SRS0 vector: original, hash, stamp day, validity, "accepted for bounces"; exit 0', async () => {
    expect(await run(['explain', 'SRS0=vmyz=2W=otherdomain.com=test@example.com', '--secret', 'tops3cr3t', '--srs-domain', 'example.com', '--now', '2020-01-05T00:00:00Z'])).toEqual({
      code: 0,
      err: '',
      out: [
        'address: SRS0=vmyz=2W=otherdomain.com=test@example.com',
        'now: 2020-01-05T00:00:00.000Z',
        'scheme: SRS0 (SRS, Guarded, libsrs2/postsrsd/Mail::SRS compatible)',
        'original: test@otherdomain.com',
        'hash: vmyz',
        'made: 2020-01-01 (UTC day; stamp 2W = day mod 1024)',
        'valid through: 2020-01-22 (max age 21 days)',
        'hash check: valid with key 0',
        'verdict: accepted for bounces (null sender) only: reversed to test@otherdomain.com',
        '',
      ].join('\n'),
    });
  });

  it('an SRS1 made from that vector: first forwarder, hash, reversed to the SRS0; exit 0', async () => {
    const fwd = await run(['srs-forward', 'SRS0=vmyz=2W=otherdomain.com=test@example.com', '--srs-domain', 'fwd.example.net', '--secret', 'tops3cr3t', '--now', '2020-01-05T00:00:00Z']);
    expect(fwd).toEqual({ code: 0, err: '', out: 'SRS1=JO9m=example.com==vmyz=2W=otherdomain.com=test@fwd.example.net\n' });
    expect(await run(['explain', 'SRS1=JO9m=example.com==vmyz=2W=otherdomain.com=test@fwd.example.net', '--secret', 'tops3cr3t', '--srs-domain', 'fwd.example.net', '--now', '2020-01-05T00:00:00Z'])).toEqual({
      code: 0,
      err: '',
      out: [
        'address: SRS1=JO9m=example.com==vmyz=2W=otherdomain.com=test@fwd.example.net',
        'now: 2020-01-05T00:00:00.000Z',
        'scheme: SRS1 (SRS, Guarded, libsrs2/postsrsd/Mail::SRS compatible)',
        'first forwarder: example.com',
        'hash: JO9m',
        'hash check: valid with key 0',
        'verdict: accepted for bounces (null sender) only: reversed to SRS0=vmyz=2W=otherdomain.com=test@example.com (the first forwarder reverses it further)',
        '',
      ].join('\n'),
    });
  });

  it('an expired SRS0: "refused: SRS address expired"; exit 1', async () => {
    const r = await run(['explain', 'SRS0=vmyz=2W=otherdomain.com=test@example.com', '--secret', 'tops3cr3t', '--srs-domain', 'example.com', '--now', '2020-02-01T00:00:00Z']);
    expect(r.code).toBe(1);
    expect(r.out.split('\n').at(-2)).toBe('verdict: refused: SRS address expired');
  });

  it('an untagged address: no scheme, left to inbound.untaggedBounces; exit 1', async () => {
    expect(await run(['explain', 'user@example.com', '--secret', 'secret', '--now', '2026-01-03T00:00:00Z'])).toEqual({
      code: 1,
      err: 'a bounce to it is handled by inbound.untaggedBounces\n',
      out: [
        'address: user@example.com',
        'now: 2026-01-03T00:00:00.000Z',
        'scheme: none (not a BATV or SRS address)',
        'verdict: a bounce to it is handled by inbound.untaggedBounces',
        '',
      ].join('\n'),
    });
  });

  it('usage errors exit 2 with the synopsis on stderr and nothing on stdout', async () => {
    const missing = await run(['explain']);
    expect(missing.code).toBe(2);
    expect(missing.out).toBe('');
    expect(missing.err).toContain('Usage: batv-proxy explain ADDRESS');
    const badNow = await run(['explain', 'user@example.com', '--secret', 's', '--now', 'yesterday']);
    expect(badNow.code).toBe(2);
    expect(badNow.out).toBe('');
    const unknownFlag = await run(['explain', 'user@example.com', '--bogus']);
    expect(unknownFlag.code).toBe(2);
    expect(unknownFlag.out).toBe('');
  });
});

describe('explain with the keyring on disk', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'batv-explain-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the key that made the tag by number, role and thumbprint', async () => {
    const init = await run(['keys', 'init', '--dir', dir]);
    expect(init.code).toBe(0);
    const thumb = /\(([A-Za-z0-9_-]{43})\)/.exec(init.out)![1]!;
    const signed = await run(['sign', 'alice@example.com', '--dir', dir]);
    expect(signed.code).toBe(0);
    const address = signed.out.trim();
    expect(address).toMatch(/^prvs=0461[0-9a-f]{6}=alice@example\.com$/);
    const r = await run(['explain', address, '--dir', dir]);
    expect(r.code).toBe(0);
    expect(r.out.split('\n').slice(-3)).toEqual([
      `signature: valid with key 0 (active, thumbprint ${thumb})`,
      'verdict: accepted (age 0 days): a bounce is delivered to alice@example.com',
      '',
    ]);
  });
});
