/**
 * `batv-proxy keys init|list|rotate|retire|import`, in-process through main(argv, io): the JWK Set on disk
 * (README, Keys), file modes, the listing (number, created, role, RFC 7638 thumbprint, never a secret),
 * rotation and retirement windows, and importing postsrsd and exim secrets so tags in flight keep verifying.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { calculateJwkThumbprint } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../src/main.js';
import { columns, type Io } from '../../src/cli/args.js';

interface Run {
  code: number;
  out: string;
  err: string;
}

interface Jwk {
  kty: string;
  kid: string;
  k: string;
  alg?: string;
  status: string;
  created: string;
  demoted?: string;
  origin?: string;
  activate_at?: string;
}

let tmp: string;
let dir: string;
let file: string;
/** Everything any verb printed in this test, to prove no secret ever appears. */
let printed: string;

async function run(argv: string[], env: Record<string, string> = {}): Promise<Run> {
  let out = '';
  let err = '';
  const io: Io = { out: (t) => { out += t; }, err: (t) => { err += t; }, env, now: () => Date.parse('2026-01-01T12:00:00Z') };
  const code = await main(argv, io);
  printed += out + err;
  return { code, out, err };
}

const readSet = (): { keys: Jwk[] } => JSON.parse(fs.readFileSync(file, 'utf8')) as { keys: Jwk[] };
const secretText = (jwk: Jwk): string => Buffer.from(jwk.k, 'base64url').toString('utf8');
const tp = (jwk: Jwk): Promise<string> => calculateJwkThumbprint({ kty: 'oct', k: jwk.k });
const mode = (p: string): number => fs.statSync(p).mode & 0o777;

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-cli-keys-'));
  dir = path.join(tmp, 'keys');
  file = path.join(dir, 'keyring.json');
  printed = '';
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** keys list's table: the header and rows as aligned columns (src/cli/args.ts columns). */
const HEAD = ['num', 'created', 'age', 'role', 'thumbprint'];
const cols = (...rows: string[][]): string => columns(rows);

describe('keys init', () => {
  it('creates <dir>/keyring.json mode 0600 in a 0700 directory, a JWK Set with one oct key "0" and a 43-character printable secret', async () => {
    const r = await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    expect(mode(dir)).toBe(0o700);
    expect(mode(file)).toBe(0o600);
    const set = readSet();
    const key = set.keys[0]!;
    expect(set).toEqual({ keys: [{ kty: 'oct', kid: '0', k: key.k, status: 'active', created: '2026-01-01T00:00:00.000Z' }] });
    expect(/^[A-Za-z0-9_-]{43}$/.test(secretText(key))).toBe(true);
    expect(Buffer.from(secretText(key), 'base64url').length).toBe(32);
    expect(r).toEqual({ code: 0, out: `Created ${file} with signing key 0 (${await tp(key)})\n`, err: '' });
    expect(fs.readdirSync(dir)).toEqual(['keyring.json']);
    expect(printed.includes(secretText(key))).toBe(false);
  });

  it('makes a different secret each time', async () => {
    await run(['keys', 'init', '--dir', dir]);
    const other = path.join(tmp, 'other');
    await run(['keys', 'init', '--dir', other]);
    const a = readSet().keys[0]!.k;
    const b = (JSON.parse(fs.readFileSync(path.join(other, 'keyring.json'), 'utf8')) as { keys: Jwk[] }).keys[0]!.k;
    expect(a === b).toBe(false);
  });

  it('refuses to run twice (exit 1) and leaves the keyring untouched', async () => {
    await run(['keys', 'init', '--dir', dir]);
    const before = fs.readFileSync(file, 'utf8');
    const r = await run(['keys', 'init', '--dir', dir]);
    expect(r).toEqual({ code: 1, out: '', err: `A keyring already exists at ${file}; use "keys rotate" to add a key\n` });
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });

  it('--show-secret prints the new secret once, on request', async () => {
    const r = await run(['keys', 'init', '--dir', dir, '--show-secret']);
    const key = readSet().keys[0]!;
    expect(r.out).toBe(`Created ${file} with signing key 0 (${await tp(key)})\nsecret for key 0: ${secretText(key)}\n`);
  });
});

describe('keys list', () => {
  it('prints number, created, age, role and the RFC 7638 thumbprint, never the secret', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const key = readSet().keys[0]!;
    const r = await run(['keys', 'list', '--dir', dir, '--now', '2026-01-03T00:00:00Z']);
    expect(r).toEqual({ code: 0, out: cols(HEAD, ['0', '2026-01-01T00:00:00.000Z', '2d', 'active (signs)', await tp(key)]), err: '' });
    expect(printed.includes(secretText(key))).toBe(false);
    expect(printed.includes(key.k)).toBe(false);
  });

  it('lines its columns up: each column starts at the same place on every line', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-05T00:00:00Z', '--activate-at', '2026-01-06T06:00:00Z']);
    const lines = (await run(['keys', 'list', '--dir', dir, '--now', '2026-01-05T00:00:00Z'])).out.split('\n');
    expect(lines[0]).toBe('num  created                   age  role                                            thumbprint');
    expect(lines[1]).toMatch(/^0    2026-01-01T00:00:00\.000Z  4d   active \(signs\)                                  [A-Za-z0-9_-]{43}$/);
    expect(lines[2]).toMatch(/^1    2026-01-05T00:00:00\.000Z  0d   scheduled, signs from 2026-01-06T06:00:00\.000Z  [A-Za-z0-9_-]{43}$/);
  });

  it('refuses a keyring readable by others (chmod 0644) with exit 1 and the chmod 600 fix', async () => {
    await run(['keys', 'init', '--dir', dir]);
    fs.chmodSync(file, 0o644);
    const refusal = `Refusing ${file}: it is readable by others (mode 644); fix it with "chmod 600 ${file}"`;
    expect(await run(['keys', 'list', '--dir', dir])).toEqual({ code: 1, out: '', err: `${refusal}\n` });
    expect(await run(['keys', 'rotate', '--dir', dir])).toEqual({ code: 1, out: '', err: `${refusal}\n` });
    expect(await run(['sign', 'user@example.com', '--dir', dir])).toEqual({ code: 1, out: '', err: `batv-proxy sign: ${refusal}\n` });
    fs.chmodSync(file, 0o640);
    expect((await run(['keys', 'list', '--dir', dir])).err).toBe(`Refusing ${file}: it is readable by others (mode 640); fix it with "chmod 600 ${file}"\n`);
  });

  it('without a keyring exits 1 saying how to create one', async () => {
    expect(await run(['keys', 'list', '--dir', dir])).toEqual({ code: 1, out: '', err: `No keyring at ${file}: create one with "batv-proxy keys init --dir ${dir}"\n` });
  });

  it('finds the keyring named by BATV_PROXY_KEYS__DIR, as serve and check-config do', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const key = readSet().keys[0]!;
    const r = await run(['keys', 'list', '--now', '2026-01-01T00:00:00Z'], { BATV_PROXY_KEYS__DIR: dir });
    expect(r).toEqual({ code: 0, out: cols(HEAD, ['0', '2026-01-01T00:00:00.000Z', '0d', 'active (signs)', await tp(key)]), err: '' });
  });
});

describe('keys rotate --activate-at (a schedule every replica follows)', () => {
  it('adds a scheduled key that lists as scheduled, signs from its instant, and is recorded as active by the next write', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const r = await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-05T00:00:00Z', '--activate-at', '2026-01-06T06:00:00Z']);
    const [k0, k1] = readSet().keys as [Jwk, Jwk];
    expect(readSet()).toEqual({
      keys: [
        { kty: 'oct', kid: '0', k: k0.k, status: 'active', created: '2026-01-01T00:00:00.000Z' },
        { kty: 'oct', kid: '1', k: k1.k, status: 'scheduled', created: '2026-01-05T00:00:00.000Z', activate_at: '2026-01-06T06:00:00.000Z' },
      ],
    });
    expect(r).toEqual({ code: 0, out: `Key 1 (${await tp(k1)}) verifies from now on and signs from 2026-01-06T06:00:00.000Z; copy ${file} to every replica before then\n`, err: '' });
    expect((await run(['keys', 'list', '--dir', dir, '--now', '2026-01-06T05:59:59Z'])).out).toBe(
      cols(HEAD, ['0', '2026-01-01T00:00:00.000Z', '5d', 'active (signs)', await tp(k0)],
        ['1', '2026-01-05T00:00:00.000Z', '1d', 'scheduled, signs from 2026-01-06T06:00:00.000Z', await tp(k1)]),
    );
    expect((await run(['keys', 'list', '--dir', dir, '--now', '2026-01-06T06:00:00Z'])).out).toBe(
      cols(HEAD, ['1', '2026-01-05T00:00:00.000Z', '1d', 'active (signs)', await tp(k1)],
        ['0', '2026-01-01T00:00:00.000Z', '5d', 'verify-only, retire after 2026-01-28', await tp(k0)]),
    );
    // sign picks the key by --now: key 0 before the instant, key 1 from it.
    expect((await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-06T05:59:59Z'])).out).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=user@example\.com\n$/);
    expect((await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-06T06:00:00Z'])).out).toMatch(/^prvs=1\d{3}[0-9a-f]{6}=user@example\.com\n$/);
    await run(['keys', 'retire', '--dir', dir, '--now', '2026-01-07T00:00:00Z']);
    expect(readSet().keys.map((k) => [k.kid, k.status, k.demoted])).toEqual([['0', 'verify', '2026-01-06T06:00:00.000Z'], ['1', 'active', undefined]]);
  });

  it('refuses an --activate-at that is not an ISO 8601 time, changing nothing', async () => {
    await run(['keys', 'init', '--dir', dir]);
    const before = fs.readFileSync(file, 'utf8');
    const r = await run(['keys', 'rotate', '--dir', dir, '--activate-at', 'tomorrow']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--activate-at: "tomorrow" is not an ISO 8601 time such as 2026-12-01T06:00:00Z');
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });
});

describe('keys: permission problems say so (run as nobody)', () => {
  const asNobody = (args: string[]) => spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--import', 'tsx', '-e',
    `import(${JSON.stringify(path.resolve('src/main.ts'))}).then((m) => m.main(${JSON.stringify(args)})).then((c) => process.exit(c))`], { encoding: 'utf8' });
  const canSwitch = process.getuid?.() === 0 && spawnSync('setpriv', ['--reuid=65534', 'true']).status === 0;

  it.skipIf(!canSwitch)('a keyring the user may not read names the user and the chown/chmod, not "not valid JSON"', async () => {
    await run(['keys', 'init', '--dir', dir]);
    fs.chmodSync(tmp, 0o755);
    const r = asNobody(['keys', 'list', '--dir', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`Cannot read ${file}: permission denied for user nobody; the file and its directory must belong to the user the proxy runs as: "chown nobody ${dir} ${file} && chmod 700 ${dir} && chmod 600 ${file}"\n`);
  });

  it.skipIf(!canSwitch)('keys init into a directory the user cannot write says so and names the fix', () => {
    fs.mkdirSync(dir, { mode: 0o755 });
    fs.chmodSync(tmp, 0o755);
    const r = asNobody(['keys', 'init', '--dir', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`Cannot write the keyring in ${dir}: permission denied for user nobody; give the directory to that user ("chown nobody ${dir} && chmod 700 ${dir}") or choose another with --dir\n`);
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe('keys rotate and retire', () => {
  it('rotate adds key 1 as the active key and keeps key 0 verifying with a demoted date', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const r = await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-05T00:00:00Z']);
    const [k0, k1] = readSet().keys as [Jwk, Jwk];
    expect(readSet()).toEqual({
      keys: [
        { kty: 'oct', kid: '0', k: k0.k, status: 'verify', created: '2026-01-01T00:00:00.000Z', demoted: '2026-01-05T00:00:00.000Z' },
        { kty: 'oct', kid: '1', k: k1.k, status: 'active', created: '2026-01-05T00:00:00.000Z' },
      ],
    });
    expect(mode(file)).toBe(0o600);
    expect(r).toEqual({
      code: 0,
      out: `Key 1 (${await tp(k1)}) signs from now on; older keys keep verifying for 22 days, then "keys retire" removes them\n`,
      err: '',
    });
    const list = await run(['keys', 'list', '--dir', dir, '--now', '2026-01-05T00:00:00Z']);
    expect(list.out).toBe(
      cols(HEAD, ['1', '2026-01-05T00:00:00.000Z', '0d', 'active (signs)', await tp(k1)],
        ['0', '2026-01-01T00:00:00.000Z', '4d', 'verify-only, retire after 2026-01-27', await tp(k0)]),
    );
    for (const k of [k0, k1]) expect(printed.includes(secretText(k))).toBe(false);
  });

  it('retire removes a verify key only once max(batv, srs) max age + 1 days (22 by default) have passed since it was demoted', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-05T00:00:00Z']);
    const before = fs.readFileSync(file, 'utf8');
    expect(await run(['keys', 'retire', '--dir', dir, '--now', '2026-01-26T23:59:59.999Z'])).toEqual({ code: 0, out: 'No key is ready to retire\n', err: '' });
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
    expect(await run(['keys', 'retire', '--dir', dir, '--now', '2026-01-27T00:00:00Z'])).toEqual({ code: 0, out: 'Retired keys 0\n', err: '' });
    expect(readSet().keys.map((k) => [k.kid, k.status])).toEqual([['1', 'active']]);
    expect(mode(file)).toBe(0o600);
  });

  it('retire takes the window from the config: the longer of batv.maxAgeDays and srs.maxAgeDays, plus a day', async () => {
    const config = path.join(tmp, 'config.json');
    fs.writeFileSync(config, JSON.stringify({ batv: { maxAgeDays: 30 }, srs: { maxAgeDays: 10 } }));
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    expect((await run(['keys', 'retire', '--dir', dir, '--config', config, '--now', '2026-01-31T23:59:59Z'])).out).toBe('No key is ready to retire\n');
    expect((await run(['keys', 'retire', '--dir', dir, '--config', config, '--now', '2026-02-01T00:00:00Z'])).out).toBe('Retired keys 0\n');
  });

  it('rotate refuses when all ten key numbers are in use, saying to retire', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    for (let i = 1; i <= 9; i++) expect((await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-01T00:00:00Z'])).code).toBe(0);
    expect(readSet().keys.map((k) => k.kid)).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    const before = fs.readFileSync(file, 'utf8');
    const r = await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    expect(r).toEqual({ code: 1, out: '', err: 'All ten key numbers 0-9 are in use; retire old keys first with "batv-proxy keys retire"\n' });
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });

  it('rotate after a retire reuses the next free number', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    for (let i = 1; i <= 9; i++) await run(['keys', 'rotate', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    await run(['keys', 'retire', '--dir', dir, '--now', '2026-03-01T00:00:00Z']);
    expect(readSet().keys.map((k) => k.kid)).toEqual(['9']);
    await run(['keys', 'rotate', '--dir', dir, '--now', '2026-03-01T00:00:00Z']);
    expect(readSet().keys.map((k) => [k.kid, k.status])).toEqual([['9', 'verify'], ['0', 'active']]);
  });
});

describe('keys import', () => {
  it('--postsrsd reads every line (CRLF, blank lines skipped); the first signs in an empty keyring', async () => {
    const secrets = path.join(tmp, 'postsrsd.secret');
    fs.writeFileSync(secrets, 'first-secret\r\n\r\n\nsecond-secret\r\nthird\n\n');
    const r = await run(['keys', 'import', '--postsrsd', secrets, '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const set = readSet();
    expect(set.keys.map((k) => [k.kid, secretText(k), k.status, k.origin, k.created])).toEqual([
      ['0', 'first-secret', 'active', 'postsrsd', '2026-01-01T00:00:00.000Z'],
      ['1', 'second-secret', 'verify', 'postsrsd', '2026-01-01T00:00:00.000Z'],
      ['2', 'third', 'verify', 'postsrsd', '2026-01-01T00:00:00.000Z'],
    ]);
    expect(mode(file)).toBe(0o600);
    const [a, b, c] = set.keys as [Jwk, Jwk, Jwk];
    expect(r).toEqual({
      code: 0,
      out: `Imported key 0 (${await tp(a)}), signing\nImported key 1 (${await tp(b)}), verify-only\nImported key 2 (${await tp(c)}), verify-only\n`,
      err: '',
    });
    for (const s of ['first-secret', 'second-secret', 'third']) expect(printed.includes(s)).toBe(false);
  });

  it('--postsrsd secrets make the same SRS addresses as postsrsd with that file', async () => {
    const secrets = path.join(tmp, 'postsrsd.secret');
    fs.writeFileSync(secrets, 'tops3cr3t\nolder\n');
    await run(['keys', 'import', '--postsrsd', secrets, '--dir', dir]);
    const opts = ['--srs-domain', 'example.com', '--now', '2020-01-01T00:01:00Z'];
    expect(await run(['srs-forward', 'test@otherdomain.com', '--dir', dir, ...opts])).toEqual({ code: 0, out: 'SRS0=vmyz=2W=otherdomain.com=test@example.com\n', err: '' });
    expect(await run(['srs-reverse', 'SRS0=XjO9=2V=otherdomain.com=test@example.com', '--dir', dir, ...opts])).toEqual({ code: 0, out: 'test@otherdomain.com\n', err: '' });
  });

  it('--postsrsd refuses a 65-byte secret (exit 1) and writes nothing', async () => {
    const secrets = path.join(tmp, 'postsrsd.secret');
    fs.writeFileSync(secrets, `${'x'.repeat(65)}\nshort\n`);
    const r = await run(['keys', 'import', '--postsrsd', secrets, '--dir', dir]);
    expect(r).toEqual({ code: 1, out: '', err: 'postsrsd secret on line 1 is 65 bytes; at most 64 are allowed\n' });
    expect(fs.existsSync(file)).toBe(false);
    fs.writeFileSync(secrets, `${'x'.repeat(64)}\n`);
    expect((await run(['keys', 'import', '--postsrsd', secrets, '--dir', dir])).code).toBe(0);
  });

  it('--postsrsd on a missing file exits 1 naming the file', async () => {
    const missing = path.join(tmp, 'nope.secret');
    const r = await run(['keys', 'import', '--postsrsd', missing, '--dir', dir]);
    expect(r).toEqual({ code: 1, out: '', err: `Cannot read ${missing}: ENOENT: no such file or directory, open '${missing}'\n` });
  });

  it('--exim-secret S --keynum 3: sign --keynum 3 from the keyring equals sign --secret S --keynum 3', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const r = await run(['keys', 'import', '--exim-secret', 'exim-s3cret', '--keynum', '3', '--dir', dir, '--now', '2026-01-02T00:00:00Z']);
    const k3 = readSet().keys.find((k) => k.kid === '3')!;
    expect(k3).toEqual({ kty: 'oct', kid: '3', k: Buffer.from('exim-s3cret').toString('base64url'), status: 'verify', created: '2026-01-02T00:00:00.000Z', demoted: '2026-01-02T00:00:00.000Z', origin: 'exim' });
    expect(r).toEqual({ code: 0, out: `Imported key 3 (${await tp(k3)}), verify-only\n`, err: '' });
    const fromRing = await run(['sign', 'user@example.com', '--keynum', '3', '--dir', dir, '--now', '2026-01-01T12:00:00Z']);
    const fromFlag = await run(['sign', 'user@example.com', '--keynum', '3', '--secret', 'exim-s3cret', '--now', '2026-01-01T12:00:00Z']);
    expect(fromRing).toEqual({ code: 0, out: fromFlag.out, err: '' });
    expect(fromRing.out.startsWith('prvs=3461')).toBe(true);
    expect(await run(['verify', fromFlag.out.trim(), '--dir', dir, '--now', '2026-01-03T00:00:00Z'])).toEqual({ code: 0, out: 'user@example.com\n', err: '' });
    expect((await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-01T12:00:00Z'])).out.startsWith('prvs=0461')).toBe(true);
    expect(printed.includes('exim-s3cret')).toBe(false);
  });

  it('--activate makes the imported secret sign and demotes the previous signing key', async () => {
    await run(['keys', 'init', '--dir', dir, '--now', '2026-01-01T00:00:00Z']);
    const r = await run(['keys', 'import', '--exim-secret', 'exim-s3cret', '--keynum', '3', '--activate', '--dir', dir, '--now', '2026-01-02T00:00:00Z']);
    expect(r.out).toBe(`Imported key 3 (${await tp(readSet().keys.find((k) => k.kid === '3')!)}), signing\n`);
    expect(readSet().keys.map((k) => [k.kid, k.status, k.demoted])).toEqual([['0', 'verify', '2026-01-02T00:00:00.000Z'], ['3', 'active', undefined]]);
    const signed = await run(['sign', 'user@example.com', '--dir', dir, '--now', '2026-01-01T12:00:00Z']);
    const expected = await run(['sign', 'user@example.com', '--secret', 'exim-s3cret', '--keynum', '3', '--now', '2026-01-01T12:00:00Z']);
    expect(signed).toEqual({ code: 0, out: expected.out, err: '' });
  });

  it('refuses a secret that is already in the keyring (exit 1) and changes nothing', async () => {
    await run(['keys', 'init', '--dir', dir]);
    await run(['keys', 'import', '--exim-secret', 'exim-s3cret', '--keynum', '3', '--dir', dir]);
    const before = fs.readFileSync(file, 'utf8');
    expect(await run(['keys', 'import', '--exim-secret', 'exim-s3cret', '--keynum', '4', '--dir', dir])).toEqual({ code: 1, out: '', err: 'Secret 1 is already in the keyring\n' });
    const generated = secretText(readSet().keys[0]!);
    const secrets = path.join(tmp, 'postsrsd.secret');
    fs.writeFileSync(secrets, `new-one\n${generated}\n`);
    expect(await run(['keys', 'import', '--postsrsd', secrets, '--dir', dir])).toEqual({ code: 1, out: '', err: 'Secret 2 is already in the keyring\n' });
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });

  it('refuses a key number already in use (exit 1)', async () => {
    await run(['keys', 'init', '--dir', dir]);
    expect(await run(['keys', 'import', '--exim-secret', 'x', '--keynum', '0', '--dir', dir]))
      .toEqual({ code: 1, out: '', err: 'Key number 0 is already in use; retire or renumber that key first\n' });
  });

  it('usage errors exit 2: neither or both sources, --exim-secret without --keynum, --keynum out of range', async () => {
    const first = async (argv: string[]): Promise<[number, string]> => {
      const r = await run(argv);
      return [r.code, r.err.split('\n')[0]!];
    };
    expect(await first(['keys', 'import', '--dir', dir])).toEqual([2, 'batv-proxy keys: keys import: give exactly one of --postsrsd FILE or --exim-secret S']);
    expect(await first(['keys', 'import', '--postsrsd', 'f', '--exim-secret', 's', '--keynum', '1', '--dir', dir]))
      .toEqual([2, 'batv-proxy keys: keys import: give exactly one of --postsrsd FILE or --exim-secret S']);
    expect(await first(['keys', 'import', '--exim-secret', 's', '--dir', dir]))
      .toEqual([2, 'batv-proxy keys: keys import --exim-secret: --keynum K is required (the digit your exim tags carry)']);
    expect(await first(['keys', 'import', '--exim-secret', 's', '--keynum', '10', '--dir', dir]))
      .toEqual([2, 'batv-proxy keys: --keynum: "10" must be a whole number from 0 to 9']);
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe('keys usage errors', () => {
  it('a missing or unknown action exits 2', async () => {
    const missing = await run(['keys', '--dir', dir]);
    expect({ code: missing.code, out: missing.out, usage: /missing argument/.test(missing.err) }).toEqual({ code: 2, out: '', usage: true });
    const unknown = await run(['keys', 'bogus', '--dir', dir]);
    expect({ code: unknown.code, out: unknown.out, first: unknown.err.split('\n')[0] })
      .toEqual({ code: 2, out: '', first: 'batv-proxy keys: keys: unknown action "bogus"; use init, list, rotate, retire or import' });
  });
});
