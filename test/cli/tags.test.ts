/**
 * The tag verbs run in-process through main(argv, io): sign, verify, srs-forward, srs-reverse, their usage
 * errors and --help, with --secret and with the keyring. the README (CLI) fixes the names, output and exit codes
 * (0 result on stdout, 1 refused with the reason on stderr, 2 usage), so outside tools can drive them.
 */
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/main.js';
import type { Io } from '../../src/cli/args.js';

const IO_NOW = Date.parse('2026-01-01T12:00:00Z');

interface Run {
  code: number;
  out: string;
  err: string;
}

async function run(argv: string[], env: Record<string, string> = {}): Promise<Run> {
  let out = '';
  let err = '';
  const io: Io = { out: (t) => { out += t; }, err: (t) => { err += t; }, env, now: () => IO_NOW };
  const code = await main(argv, io);
  return { code, out, err };
}

/** exim's ${prvs}, computed independently with node:crypto. */
function prvs(secret: string | Buffer, k: number, ddd: string, address: string): string {
  const sig = createHmac('sha1', secret).update(`${k}${ddd}${address}`, 'utf8').digest('hex').slice(0, 6);
  return `prvs=${k}${ddd}${sig}=${address}`;
}

/** The first n base64 characters of postsrsd's hash over the lowercased fields, with node:crypto. */
function srsHash(secret: string, fields: string[], n = 4, alphabet: 'base64' | 'base64url' = 'base64'): string {
  const lc = fields.map((f) => f.replace(/[A-Z]/g, (c) => c.toLowerCase())).join('');
  return createHmac('sha1', secret).update(lc, 'utf8').digest(alphabet).slice(0, n);
}

const SRS = ['--srs-domain', 'example.com', '--secret', 'tops3cr3t', '--now', '2020-01-01T00:01:00Z'];

describe('sign', () => {
  it('prints exim\'s tag for key 5 on 2026-01-01 and exits 0', async () => {
    const r = await run(['sign', 'user@example.com', '--secret', 'secret', '--keynum', '5', '--now', '2026-01-01T12:00:00Z']);
    expect(r).toEqual({ code: 0, out: 'prvs=5461cd18bc=user@example.com\n', err: '' });
  });

  it('defaults the key number to 0 with --secret', async () => {
    const r = await run(['sign', 'user@example.com', '--secret', 'secret', '--now', '2026-01-01T12:00:00Z']);
    expect(r).toEqual({ code: 0, out: `${prvs('secret', 0, '461', 'user@example.com')}\n`, err: '' });
    expect(r.out).toBe('prvs=046131143c=user@example.com\n');
  });

  it('takes the time from the injected clock when --now is absent', async () => {
    const r = await run(['sign', 'user@example.com', '--secret', 'secret', '--keynum', '5']);
    expect(r).toEqual({ code: 0, out: 'prvs=5461cd18bc=user@example.com\n', err: '' });
  });

  it('hashes the address bytes exactly as given (no case folding)', async () => {
    const r = await run(['sign', 'User@Example.COM', '--secret', 'secret', '--now', '2026-01-01T12:00:00Z']);
    expect(r).toEqual({ code: 0, out: `${prvs('secret', 0, '461', 'User@Example.COM')}\n`, err: '' });
  });

  it('prints an address that already carries a prvs= tag unchanged and exits 0', async () => {
    for (const tagged of ['prvs=5461cd18bc=user@example.com', 'PRVS=0999ABCDEF=user@example.com']) {
      const r = await run(['sign', tagged, '--secret', 'other', '--now', '2026-01-01T12:00:00Z']);
      expect(r).toEqual({ code: 0, out: `${tagged}\n`, err: '' });
    }
  });

  it('refuses the null sender with exit 1, the reason on stderr and nothing on stdout', async () => {
    for (const nullSender of ['<>', '']) {
      const r = await run(['sign', nullSender, '--secret', 'secret']);
      expect(r).toEqual({ code: 1, out: '', err: `Cannot sign "${nullSender}": the null sender is never signed\n` });
    }
  });

  it('refuses an unqualified address with exit 1', async () => {
    const r = await run(['sign', 'postmaster', '--secret', 'secret']);
    expect(r).toEqual({ code: 1, out: '', err: 'Cannot sign "postmaster": "postmaster" is not a qualified address\n' });
  });

  it('refuses an address that is not valid RFC 5321 syntax with exit 1 instead of tagging it', async () => {
    for (const bad of ['user@exa mple.com', '<user@example.com>', 'us er@example.com']) {
      const r = await run(['sign', bad, '--secret', 'secret', '--now', '2026-01-01T12:00:00Z']);
      expect({ code: r.code, out: r.out }).toEqual({ code: 1, out: '' });
      expect(r.err.startsWith(`Cannot sign "${bad}": `)).toBe(true);
    }
  });
});

describe('verify', () => {
  const TAG = 'prvs=5461cd18bc=user@example.com'; // signed 2026-01-01 (day 20454), expires day 461

  it('prints the untagged address for ages 0 to 7 days', async () => {
    for (let age = 0; age <= 7; age++) {
      for (const time of ['00:00:00', '23:59:59']) {
        const now = `2026-01-${String(1 + age).padStart(2, '0')}T${time}Z`;
        const r = await run(['verify', TAG, '--secret', 'secret', '--now', now]);
        expect({ now, ...r }).toEqual({ now, code: 0, out: 'user@example.com\n', err: '' });
      }
    }
  });

  it('exits 1 with "BATV signature expired" at age 8 days', async () => {
    const r = await run(['verify', TAG, '--secret', 'secret', '--now', '2026-01-09T00:00:00Z']);
    expect(r).toEqual({ code: 1, out: '', err: `Cannot verify "${TAG}": BATV signature expired\n` });
  });

  it('honours --max-age DAYS', async () => {
    expect(await run(['verify', TAG, '--secret', 'secret', '--max-age', '2', '--now', '2026-01-03T23:59:59Z']))
      .toEqual({ code: 0, out: 'user@example.com\n', err: '' });
    expect(await run(['verify', TAG, '--secret', 'secret', '--max-age', '2', '--now', '2026-01-04T00:00:00Z']))
      .toEqual({ code: 1, out: '', err: `Cannot verify "${TAG}": BATV signature expired\n` });
    expect(await run(['verify', TAG, '--secret', 'secret', '--max-age', '10', '--now', '2026-01-11T00:00:00Z']))
      .toEqual({ code: 0, out: 'user@example.com\n', err: '' });
  });

  it('accepts uppercase hex and an uppercase PRVS= tag type', async () => {
    for (const tag of ['prvs=5461CD18BC=user@example.com', 'PRVS=5461cd18bc=user@example.com', 'Prvs=5461Cd18bC=user@example.com']) {
      const r = await run(['verify', tag, '--secret', 'secret', '--now', '2026-01-02T12:00:00Z']);
      expect(r).toEqual({ code: 0, out: 'user@example.com\n', err: '' });
    }
  });

  it('uses the --secret for whatever key number the tag carries (as exim does)', async () => {
    const tag = prvs('secret', 7, '461', 'user@example.com');
    expect(await run(['verify', tag, '--secret', 'secret', '--now', '2026-01-01T12:00:00Z']))
      .toEqual({ code: 0, out: 'user@example.com\n', err: '' });
  });

  it('exits 1 with "BATV signature invalid" for another secret\'s tag', async () => {
    const r = await run(['verify', TAG, '--secret', 'wrong', '--now', '2026-01-02T00:00:00Z']);
    expect(r).toEqual({ code: 1, out: '', err: `Cannot verify "${TAG}": BATV signature invalid\n` });
  });

  it('exits 1 for a tag dated in the future', async () => {
    const r = await run(['verify', TAG, '--secret', 'secret', '--now', '2025-12-31T12:00:00Z']);
    expect(r).toEqual({ code: 1, out: '', err: `Cannot verify "${TAG}": BATV signature dated in the future\n` });
  });

  it('exits 1 for an address without a prvs= tag', async () => {
    const r = await run(['verify', 'user@example.com', '--secret', 'secret']);
    expect(r).toEqual({ code: 1, out: '', err: 'Cannot verify "user@example.com": not a BATV (prvs=) address\n' });
  });

  it('verifies what sign made, whatever the signing key number', async () => {
    const signed = await run(['sign', 'a.b+c@example.org', '--secret', 's3', '--keynum', '9', '--now', '2026-03-04T05:06:07Z']);
    expect(signed.code).toBe(0);
    const r = await run(['verify', signed.out.trim(), '--secret', 's3', '--now', '2026-03-10T00:00:00Z']);
    expect(r).toEqual({ code: 0, out: 'a.b+c@example.org\n', err: '' });
  });
});

describe('srs-forward and srs-reverse (postsrsd vectors, STYLE.md §3.4)', () => {
  it('srs-forward reproduces postsrsd\'s forward vectors', async () => {
    const cases: [string, string[], string][] = [
      ['test@otherdomain.com', [], 'SRS0=vmyz=2W=otherdomain.com=test@example.com'],
      ['SRS0=opaque+string@otherdomain.com', [], 'SRS1=chaI=otherdomain.com==opaque+string@example.com'],
      ['SRS1=X=thirddomain.com==opaque+string@otherdomain.com', [], 'SRS1=JIBX=thirddomain.com==opaque+string@example.com'],
      ['hash234@somedomain.com', [], 'SRS0=+3/5=2W=somedomain.com=hash234@example.com'],
      ['hash234@somedomain.com', ['--alphabet', 'base64url'], 'SRS0=-3_5=2W=somedomain.com=hash234@example.com'],
    ];
    for (const [input, extra, expected] of cases) {
      const r = await run(['srs-forward', input, ...SRS, ...extra]);
      expect({ input, ...r }).toEqual({ input, code: 0, out: `${expected}\n`, err: '' });
    }
  });

  it('srs-reverse reproduces postsrsd\'s reverse vectors, case-munged and base64url included', async () => {
    const cases: [string, string][] = [
      ['SRS0=XjO9=2V=otherdomain.com=test@example.com', 'test@otherdomain.com'],
      ['SRS0=vmyz=2W=otherdomain.com=test@example.com', 'test@otherdomain.com'],
      ['srs0=xjo9=2v=otherdomain.com=test@example.com', 'test@otherdomain.com'],
      ['SRS0=XJO9=2V=OTHERDOMAIN.COM=TEST@EXAMPLE.COM', 'TEST@OTHERDOMAIN.COM'],
      ['SRS0=-3_5=2W=somedomain.com=hash234@example.com', 'hash234@somedomain.com'],
      ['SRS0=+3/5=2W=somedomain.com=hash234@example.com', 'hash234@somedomain.com'],
      ['SRS1=JIBX=thirddomain.com==opaque+string@example.com', 'SRS0=opaque+string@thirddomain.com'],
    ];
    for (const [input, expected] of cases) {
      const r = await run(['srs-reverse', input, ...SRS]);
      expect({ input, ...r }).toEqual({ input, code: 0, out: `${expected}\n`, err: '' });
    }
  });

  it('srs-reverse exits 1 with the reason for expired, forged and malformed addresses', async () => {
    const cases: [string, string][] = [
      ['SRS0=te87=T7=otherdomain.com=test@example.com', 'SRS address expired'],
      ['SRS0=FAKE=2V=otherdomain.com=test@example.com', 'SRS hash invalid'],
      ['SRS0=XjO9=2V@example.com', 'malformed SRS0 address'],
      ['SRS0=@example.com', 'malformed SRS0 address'],
    ];
    for (const [input, why] of cases) {
      const r = await run(['srs-reverse', input, ...SRS]);
      expect(r).toEqual({ code: 1, out: '', err: `Cannot reverse "${input}": ${why}\n` });
    }
  });

  it('srs-reverse exits 1 for an address that is not SRS', async () => {
    const r = await run(['srs-reverse', 'test@example.com', ...SRS]);
    expect(r).toEqual({ code: 1, out: '', err: 'Cannot reverse "test@example.com": not an SRS address\n' });
  });

  it('srs-forward prints a sender already in the SRS domain unchanged and exits 0', async () => {
    for (const input of ['test@example.com', 'TEST@EXAMPLE.COM', 'SRS0=XjO9=2V=otherdomain.com=test@example.com']) {
      const r = await run(['srs-forward', input, ...SRS]);
      expect(r).toEqual({ code: 0, out: `${input}\n`, err: '' });
    }
  });

  it('srs-forward refuses the null sender and an unqualified address with exit 1', async () => {
    expect(await run(['srs-forward', '<>', ...SRS])).toEqual({ code: 1, out: '', err: 'Cannot rewrite "<>": the null sender is never rewritten\n' });
    expect(await run(['srs-forward', 'postmaster', ...SRS]))
      .toEqual({ code: 1, out: '', err: 'Cannot rewrite "postmaster": "postmaster" is not a qualified address\n' });
  });

  it('signs with the first of several --secret values', async () => {
    const first = await run(['srs-forward', 'test@otherdomain.com', '--srs-domain', 'example.com', '--secret', 'tops3cr3t', '--secret', 'other', '--now', '2020-01-01T00:01:00Z']);
    expect(first).toEqual({ code: 0, out: 'SRS0=vmyz=2W=otherdomain.com=test@example.com\n', err: '' });
    const second = await run(['srs-forward', 'test@otherdomain.com', '--srs-domain', 'example.com', '--secret', 'other', '--secret', 'tops3cr3t', '--now', '2020-01-01T00:01:00Z']);
    expect(second).toEqual({ code: 0, out: `SRS0=${srsHash('other', ['2W', 'otherdomain.com', 'test'])}=2W=otherdomain.com=test@example.com\n`, err: '' });
  });

  it('verifies with every --secret value', async () => {
    const r = await run(['srs-reverse', 'SRS0=XjO9=2V=otherdomain.com=test@example.com', '--srs-domain', 'example.com', '--secret', 'other', '--secret', 'tops3cr3t', '--now', '2020-01-01T00:01:00Z']);
    expect(r).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
  });

  it('srs-reverse needs no --srs-domain (it reverses any SRS address whose hash verifies); given one, it checks the domain', async () => {
    const address = 'SRS0=XjO9=2V=otherdomain.com=test@example.com';
    const at = ['--secret', 'tops3cr3t', '--now', '2020-01-01T00:01:00Z'];
    expect(await run(['srs-reverse', address, ...at])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
    expect(await run(['srs-reverse', 'srs0=XjO9=2V=otherdomain.com=test@EXAMPLE.com', '--srs-domain', 'Example.COM', ...at])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
    expect(await run(['srs-reverse', address, '--srs-domain', 'fwd.example.net', ...at]))
      .toEqual({ code: 1, out: '', err: `Cannot reverse "${address}": not in the SRS domain fwd.example.net\n` });
    // srs-forward still needs it: it writes the domain.
    const fwd = await run(['srs-forward', 'test@otherdomain.com', ...at]);
    expect({ code: fwd.code, first: fwd.err.split('\n')[0] }).toEqual({ code: 2, first: 'batv-proxy srs-forward: --srs-domain: required (the forwarder domain written after "@")' });
  });

  it('verifies with the eleventh of eleven --secret values (postsrsd keeps any number of secrets)', async () => {
    const secrets = Array.from({ length: 10 }, (_, i) => ['--secret', `old-${i}`]).flat();
    const r = await run(['srs-reverse', 'SRS0=XjO9=2V=otherdomain.com=test@example.com', '--srs-domain', 'example.com', ...secrets, '--secret', 'tops3cr3t', '--now', '2020-01-01T00:01:00Z']);
    expect(r).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
  });

  it('writes the --separator right after SRS0/SRS1 and reverses it', async () => {
    for (const sep of ['+', '-']) {
      const f = await run(['srs-forward', 'test@otherdomain.com', ...SRS, '--separator', sep]);
      expect(f).toEqual({ code: 0, out: `SRS0${sep}vmyz=2W=otherdomain.com=test@example.com\n`, err: '' });
      const b = await run(['srs-reverse', f.out.trim(), ...SRS]);
      expect(b).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
      const s1 = await run(['srs-forward', 'SRS0=opaque+string@otherdomain.com', ...SRS, '--separator', sep]);
      expect(s1).toEqual({ code: 0, out: `SRS1${sep}chaI=otherdomain.com==opaque+string@example.com\n`, err: '' });
    }
  });

  it('writes --hash-length characters of hash and refuses shorter ones below --hash-min', async () => {
    const long = `SRS0=${srsHash('tops3cr3t', ['2W', 'otherdomain.com', 'test'], 8)}=2W=otherdomain.com=test@example.com`;
    expect(long).toBe('SRS0=vmyz7Bwa=2W=otherdomain.com=test@example.com');
    expect(await run(['srs-forward', 'test@otherdomain.com', ...SRS, '--hash-length', '8'])).toEqual({ code: 0, out: `${long}\n`, err: '' });
    expect(await run(['srs-reverse', long, ...SRS, '--hash-length', '8'])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
    const short = 'SRS0=vmyz=2W=otherdomain.com=test@example.com';
    expect(await run(['srs-reverse', short, ...SRS, '--hash-length', '8']))
      .toEqual({ code: 1, out: '', err: `Cannot reverse "${short}": SRS hash too short\n` });
    expect(await run(['srs-reverse', short, ...SRS, '--hash-length', '8', '--hash-min', '4']))
      .toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
    expect(await run(['srs-reverse', 'SRS0=vm=2W=otherdomain.com=test@example.com', ...SRS, '--hash-min', '2']))
      .toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
  });

  it('honours --max-age DAYS on reverse', async () => {
    const a = 'SRS0=XjO9=2V=otherdomain.com=test@example.com'; // made the day before
    expect(await run(['srs-reverse', a, ...SRS, '--max-age', '0'])).toEqual({ code: 1, out: '', err: `Cannot reverse "${a}": SRS address expired\n` });
    expect(await run(['srs-reverse', a, ...SRS, '--max-age', '1'])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
  });
});

describe('usage errors', () => {
  /** Exit 2, nothing on stdout, the verb-prefixed message naming the flag, then the verb's Usage line. */
  async function usageError(argv: string[], firstLine: string): Promise<void> {
    const r = await run(argv);
    const lines = r.err.split('\n');
    expect({ code: r.code, out: r.out, first: lines[0] }).toEqual({ code: 2, out: '', first: firstLine });
    expect(lines[1]!.startsWith(`Usage: batv-proxy ${argv[0]} `)).toBe(true);
  }

  it('an unknown flag exits 2 naming it', async () => {
    await usageError(['sign', 'user@example.com', '--secret', 's', '--nope'], 'batv-proxy sign: Unknown option \'--nope\'');
    await usageError(['srs-reverse', 'x@example.com', '--srs-domain', 'example.com', '--nope'], 'batv-proxy srs-reverse: Unknown option \'--nope\'');
  });

  it('--keynum outside 0-9 or not a number exits 2 naming --keynum', async () => {
    await usageError(['sign', 'user@example.com', '--secret', 's', '--keynum', '12'], 'batv-proxy sign: --keynum: "12" must be a whole number from 0 to 9');
    await usageError(['sign', 'user@example.com', '--secret', 's', '--keynum', 'x'], 'batv-proxy sign: --keynum: "x" must be a whole number from 0 to 9');
  });

  it('--now that is not a date exits 2 naming --now', async () => {
    await usageError(['sign', 'user@example.com', '--secret', 's', '--now', 'yesterday'],
      'batv-proxy sign: --now: "yesterday" is not an ISO 8601 date (e.g. 2026-01-01T12:00:00Z)');
    await usageError(['verify', 'prvs=5461cd18bc=user@example.com', '--secret', 's', '--now', 'yesterday'],
      'batv-proxy verify: --now: "yesterday" is not an ISO 8601 date (e.g. 2026-01-01T12:00:00Z)');
  });

  it('--now that is not ISO 8601 (a bare number, a month name) exits 2 instead of meaning some day in 2001', async () => {
    await usageError(['sign', 'user@example.com', '--secret', 's', '--now', '1'],
      'batv-proxy sign: --now: "1" is not an ISO 8601 date (e.g. 2026-01-01T12:00:00Z)');
    await usageError(['sign', 'user@example.com', '--secret', 's', '--now', 'Jan 5'],
      'batv-proxy sign: --now: "Jan 5" is not an ISO 8601 date (e.g. 2026-01-01T12:00:00Z)');
  });

  it('--max-age that is not a whole number exits 2 naming it', async () => {
    await usageError(['verify', 'prvs=5461cd18bc=user@example.com', '--secret', 's', '--max-age', 'x'], 'batv-proxy verify: --max-age: "x" must be a whole number from 0 to 999');
  });

  it('--separator other than =, + or - exits 2 naming it', async () => {
    await usageError(['srs-forward', 'test@otherdomain.com', ...SRS, '--separator', '#'], 'batv-proxy srs-forward: --separator: "#" must be one of =, +, -');
  });

  it('--hash-min above --hash-length exits 2 naming --hash-min', async () => {
    await usageError(['srs-forward', 'test@otherdomain.com', ...SRS, '--hash-min', '9', '--hash-length', '4'], 'batv-proxy srs-forward: --hash-min: 9 is above the hash length 4');
  });

  it('--alphabet other than base64 or base64url exits 2 naming it', async () => {
    await usageError(['srs-forward', 'test@otherdomain.com', ...SRS, '--alphabet', 'base32'], 'batv-proxy srs-forward: --alphabet: "base32" must be base64 or base64url');
  });

  it('srs-forward without --srs-domain (and no config) exits 2 naming --srs-domain', async () => {
    await usageError(['srs-forward', 'test@otherdomain.com', '--secret', 's'], 'batv-proxy srs-forward: --srs-domain: required (the forwarder domain written after "@")');
  });

  it('a missing ADDRESS exits 2', async () => {
    for (const verb of ['sign', 'verify', 'srs-forward', 'srs-reverse']) {
      const flags = verb.startsWith('srs-') ? ['--secret', 's', '--srs-domain', 'example.com'] : ['--secret', 's'];
      const r = await run([verb, ...flags]);
      expect({ code: r.code, out: r.out }).toEqual({ code: 2, out: '' });
      expect(/^batv-proxy [a-z-]+: .*missing argument.*ADDRESS/.test(r.err.split('\n')[0]!)).toBe(true);
    }
  });

  it('an extra argument exits 2 naming it', async () => {
    const r = await run(['sign', 'a@example.com', 'b@example.com', '--secret', 's']);
    expect({ code: r.code, out: r.out }).toEqual({ code: 2, out: '' });
    expect(/^batv-proxy sign: .*unexpected argument "b@example\.com"$/.test(r.err.split('\n')[0]!)).toBe(true);
  });

  it('an unknown verb exits 2 with the verb list on stderr', async () => {
    const r = await run(['frobnicate', 'x']);
    expect({ code: r.code, out: r.out }).toEqual({ code: 2, out: '' });
    const lines = r.err.split('\n');
    expect(lines.slice(0, 2)).toEqual(['batv-proxy: unknown verb "frobnicate"', 'Usage: batv-proxy <verb> [options]']);
  });

  it('no verb at all exits 2 with usage on stderr', async () => {
    const r = await run([]);
    expect({ code: r.code, out: r.out, first: r.err.split('\n')[0] }).toEqual({ code: 2, out: '', first: 'Usage: batv-proxy <verb> [options]' });
  });

  it('--help for every verb exits 0 with its Usage line on stdout', async () => {
    for (const verb of ['serve', 'sign', 'verify', 'srs-forward', 'srs-reverse', 'keys', 'explain', 'check-config', 'doctor']) {
      const r = await run([verb, '--help']);
      expect({ verb, code: r.code, err: r.err, usage: r.out.startsWith(`Usage: batv-proxy ${verb}`) }).toEqual({ verb, code: 0, err: '', usage: true });
    }
  });

  it('top-level --help exits 0 and lists every verb', async () => {
    const r = await run(['--help']);
    expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: '' });
    const listed = r.out.split('\n').filter((l) => l.startsWith('  batv-proxy ')).map((l) => l.split(' ')[3]);
    for (const verb of ['serve', 'sign', 'verify', 'srs-forward', 'srs-reverse', 'keys', 'explain', 'check-config', 'doctor']) {
      expect({ verb, listed: listed.includes(verb) }).toEqual({ verb, listed: true });
    }
  });
});

describe('with the keyring instead of --secret', () => {
  let tmp: string;
  let dir: string;
  const secretOf = (num: number): Buffer => {
    const doc = JSON.parse(fs.readFileSync(path.join(dir, 'keyring.json'), 'utf8')) as { keys: { kid: string; k: string }[] };
    return Buffer.from(doc.keys.find((k) => k.kid === String(num))!.k, 'base64url');
  };

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-cli-tags-'));
    dir = path.join(tmp, 'keys');
    expect((await run(['keys', 'init', '--dir', dir, '--now', '2025-12-20T00:00:00Z'])).code).toBe(0);
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('sign uses the active key and its number; after keys rotate old tags verify and new tags carry the new number', async () => {
    const before = await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-01T12:00:00Z']);
    expect(before).toEqual({ code: 0, out: `${prvs(secretOf(0), 0, '461', 'user@example.com')}\n`, err: '' });

    expect((await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-01T13:00:00Z'])).code).toBe(0);

    const after = await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-01T14:00:00Z']);
    expect(after).toEqual({ code: 0, out: `${prvs(secretOf(1), 1, '461', 'user@example.com')}\n`, err: '' });
    expect(secretOf(1).equals(secretOf(0))).toBe(false);

    for (const tag of [before.out.trim(), after.out.trim()]) {
      expect(await run(['verify', tag, '--dir', dir, '--now', '2026-01-03T00:00:00Z'])).toEqual({ code: 0, out: 'user@example.com\n', err: '' });
    }
  });

  it('an SRS address made before a rotation still reverses with the keyring', async () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-cli-srs-'));
    try {
      const keys = path.join(d, 'keys');
      expect((await run(['keys', 'init', '--dir', keys, '--now', '2020-01-01T00:00:00Z'])).code).toBe(0);
      const opts = ['--dir', keys, '--srs-domain', 'fwd.example.net', '--now', '2020-01-01T00:01:00Z'];
      const old = await run(['srs-forward', 'test@otherdomain.com', ...opts]);
      expect(old.code).toBe(0);
      expect((await run(['keys', 'rotate', '--dir', keys, '--now', '2020-01-01T00:01:00Z'])).code).toBe(0);
      const fresh = await run(['srs-forward', 'test@otherdomain.com', ...opts]);
      expect(fresh.code).toBe(0);
      expect(fresh.out === old.out).toBe(false);
      for (const a of [old.out.trim(), fresh.out.trim()]) {
        expect(await run(['srs-reverse', a, ...opts])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
      }
    } finally {
      fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('sign --keynum naming a key the keyring lacks exits 2 naming --keynum', async () => {
    const r = await run(['sign', 'user@example.com', '--dir', dir, '--keynum', '7']);
    const lines = r.err.split('\n');
    expect({ code: r.code, out: r.out, first: lines[0] }).toEqual({ code: 2, out: '', first: `batv-proxy sign: --keynum: the keyring in ${dir} has no key 7` });
    expect(lines[1]!.startsWith('Usage: batv-proxy sign ')).toBe(true);
  });

  it('sign without a keyring exits 1 saying how to create one', async () => {
    const missing = path.join(tmp, 'nowhere');
    const r = await run(['sign', 'user@example.com', '--dir', missing]);
    expect(r).toEqual({
      code: 1,
      out: '',
      err: `batv-proxy sign: No keyring at ${path.join(missing, 'keyring.json')}: create one with "batv-proxy keys init --dir ${missing}"\n`,
    });
  });
});
