/**
 * src/keys.ts: the pure keyring operations (rotate, retire, importSecrets, parsePostsrsdSecrets) with exact
 * results, readKeys's refusals with exact messages, and the writeKeys → readKeys round trip (README, Keys).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { calculateJwkThumbprint } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  generateSecret, importSecrets, initKeys, KeyringError, keyringPath, keyScheduleWarnings, loadKeyring, parsePostsrsdSecrets, readKeys, retire,
  rotate, settle, signingKeyAt, thumbprint, writeKeys, type StoredKey,
} from '../src/keys.js';
import { MS_PER_DAY } from '../src/clock.js';
import { batvSign, batvVerify } from '../src/tags/batv.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const T0 = Date.parse('2026-01-01T00:00:00Z');
const ISO0 = '2026-01-01T00:00:00.000Z';
const iso = (ms: number): string => new Date(ms).toISOString();

const active = (num: number, secret: string, created = ISO0): StoredKey => ({ num, secret: enc(secret), status: 'active', created });
const verifying = (num: number, secret: string, demoted: string, created = ISO0): StoredKey => ({ num, secret: enc(secret), status: 'verify', created, demoted });

function keyringErrorOf(fn: () => unknown): KeyringError {
  try {
    fn();
  } catch (e) {
    if (e instanceof KeyringError) return e;
    throw e;
  }
  throw new Error('expected a KeyringError');
}

async function rejection(p: Promise<unknown>): Promise<KeyringError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof KeyringError) return e;
    throw e;
  }
  throw new Error('expected a KeyringError');
}

describe('rotate()', () => {
  it('adds the next number as the active key and demotes the previous one with the rotation time', () => {
    const now = T0 + 3 * MS_PER_DAY;
    const r = rotate([active(0, 'zero')], now, enc('one'));
    const added: StoredKey = { num: 1, secret: enc('one'), status: 'active', created: iso(now) };
    expect(r).toEqual({ keys: [verifying(0, 'zero', iso(now)), added], added });
  });

  it('takes the first free number after the active one, wrapping past 9', () => {
    const keys = [verifying(0, 'a', ISO0), verifying(8, 'b', ISO0), active(9, 'c')];
    expect(rotate(keys, T0, enc('d')).added.num).toBe(1);
    expect(rotate([active(4, 'x')], T0, enc('y')).added.num).toBe(5);
  });

  it('keeps already demoted keys as they are', () => {
    const old = verifying(0, 'a', '2025-12-01T00:00:00.000Z');
    const r = rotate([old, active(1, 'b')], T0, enc('c'));
    expect(r.keys).toEqual([old, verifying(1, 'b', ISO0), { num: 2, secret: enc('c'), status: 'active', created: ISO0 }]);
  });

  it('generates a printable 43-character secret when none is given', () => {
    const { added } = rotate([active(0, 'a')], T0);
    expect(/^[A-Za-z0-9_-]{43}$/.test(new TextDecoder().decode(added.secret))).toBe(true);
  });

  it('refuses when all ten numbers are in use, saying to retire', () => {
    const keys = Array.from({ length: 10 }, (_, i): StoredKey => (i === 9 ? active(i, `s${i}`) : verifying(i, `s${i}`, ISO0)));
    expect(keyringErrorOf(() => rotate(keys, T0, enc('new'))).message).toBe('All ten key numbers 0-9 are in use; retire old keys first with "batv-proxy keys retire"');
  });
});

describe('scheduled activation (rotate with activateAtMs)', () => {
  const AT = T0 + 2 * MS_PER_DAY;
  let tmp: string;
  beforeEach(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-keys-sched-')); });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('adds a scheduled key that verifies at once; the old key signs until the instant and the new one from it', async () => {
    const r = rotate([active(0, 'old')], T0 + MS_PER_DAY, enc('new'), AT);
    expect(r.added).toEqual({ num: 1, secret: enc('new'), status: 'scheduled', created: iso(T0 + MS_PER_DAY), activateAt: iso(AT) });
    expect(r.keys.map((k) => [k.num, k.status])).toEqual([[0, 'active'], [1, 'scheduled']]);
    const dir = path.join(tmp, 'keys');
    await writeKeys(dir, r.keys);
    const raw = JSON.parse(fs.readFileSync(keyringPath(dir), 'utf8')) as { keys: Record<string, unknown>[] };
    expect(raw.keys[1]).toMatchObject({ kid: '1', status: 'scheduled', activate_at: iso(AT) });
    const { keys, ring } = await loadKeyring(dir);
    expect(keys).toEqual(r.keys);
    expect(ring.signingAt(AT - 1).num).toBe(0);
    expect(ring.signingAt(AT).num).toBe(1);
    expect(ring.signing.num).toBe(0);
    // A tag the new key makes at the instant verifies, and so does one the old key made just before it.
    const before = batvSign('alice@example.com', ring.signingAt(AT - 1), AT - 1);
    const after = batvSign('alice@example.com', ring.signingAt(AT), AT);
    if (before.kind !== 'signed' || after.kind !== 'signed') throw new Error('unsigned');
    expect([before.address.slice(0, 6), after.address.slice(0, 6)]).toEqual(['prvs=0', 'prvs=1']);
    for (const a of [before.address, after.address]) expect(batvVerify(a, ring, AT, 7).kind).toBe('valid');
  });

  it('settle() records a due key as active and its predecessor as verify, demoted at the instant; an early one stays scheduled', () => {
    const keys = rotate([active(0, 'old')], T0, enc('new'), AT).keys;
    expect(settle(keys, AT - 1)).toEqual(keys);
    expect(settle(keys, AT)).toEqual([verifying(0, 'old', iso(AT)), { num: 1, secret: enc('new'), status: 'active', created: ISO0 }]);
    expect(signingKeyAt(keys, AT)?.num).toBe(1);
    expect(retire(keys, AT + 30 * MS_PER_DAY, 22).removed.map((k) => k.num)).toEqual([0]);
  });

  it('an activation not later than now is an ordinary rotation', () => {
    expect(rotate([active(0, 'old')], AT, enc('new'), AT).keys.map((k) => [k.num, k.status])).toEqual([[0, 'verify'], [1, 'active']]);
  });

  it('refuses a scheduled key without activate_at', async () => {
    const dir = path.join(tmp, 'keys');
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.writeFileSync(keyringPath(dir), JSON.stringify({ keys: [
      { kty: 'oct', kid: '0', k: 'YQ', status: 'active', created: ISO0 },
      { kty: 'oct', kid: '1', k: 'Yg', status: 'scheduled', created: ISO0 },
    ] }), { mode: 0o600 });
    expect((await rejection(readKeys(dir))).message).toBe(`${keyringPath(dir)}: keys[1] is scheduled but has activate_at undefined, not an ISO 8601 date`);
  });

  it('keyScheduleWarnings(): an old signing key, and a scheduled key due within the distribution window', () => {
    const opts = { maxAgeDays: 90, windowMs: 3_600_000 };
    expect(keyScheduleWarnings([active(0, 'a')], T0 + 90 * MS_PER_DAY, opts)).toEqual([]);
    expect(keyScheduleWarnings([active(0, 'a')], T0 + 91 * MS_PER_DAY, opts)).toEqual([
      'signing key 0 has signed for 91 days (over 90): schedule a new one with "batv-proxy keys rotate --activate-at ..."',
    ]);
    const keys = rotate([active(0, 'a')], T0, enc('b'), AT).keys;
    expect(keyScheduleWarnings(keys, AT - 3_600_001, opts)).toEqual([]);
    expect(keyScheduleWarnings(keys, AT - 1_800_000, opts)).toEqual([
      `key 1 starts signing at ${iso(AT)}, in 30 min: make sure every replica has this keyring file before then`,
    ]);
    // Once due, the new key's age counts from its activation, not its creation.
    expect(keyScheduleWarnings(keys, AT + 90 * MS_PER_DAY, opts)).toEqual([]);
  });
});

describe('retire()', () => {
  const keys = [verifying(0, 'a', ISO0), verifying(1, 'b', iso(T0 + MS_PER_DAY)), active(2, 'c')];

  it('removes verify keys demoted at least verifyDays ago and nothing else', () => {
    expect(retire(keys, T0 + 22 * MS_PER_DAY, 22)).toEqual({ keys: [keys[1], keys[2]], removed: [keys[0]] });
    expect(retire(keys, T0 + 23 * MS_PER_DAY, 22)).toEqual({ keys: [keys[2]], removed: [keys[0], keys[1]] });
  });

  it('keeps a verify key until the whole window has passed', () => {
    expect(retire(keys, T0 + 22 * MS_PER_DAY - 1, 22)).toEqual({ keys, removed: [] });
  });

  it('never removes the active key', () => {
    expect(retire([active(0, 'a', '2000-01-01T00:00:00.000Z')], T0 + 10_000 * MS_PER_DAY, 22)).toEqual({ keys: [active(0, 'a', '2000-01-01T00:00:00.000Z')], removed: [] });
  });
});

describe('importSecrets()', () => {
  it('into an empty keyring: the first secret signs, the others verify, numbered from 0', () => {
    const r = importSecrets([], [enc('one'), enc('two')], { nowMs: T0, origin: 'postsrsd' });
    const expected: StoredKey[] = [
      { num: 0, secret: enc('one'), status: 'active', created: ISO0, origin: 'postsrsd' },
      { num: 1, secret: enc('two'), status: 'verify', created: ISO0, demoted: ISO0, origin: 'postsrsd' },
    ];
    expect(r).toEqual({ keys: expected, added: expected });
  });

  it('beside an active key: verify-only, numbered after the highest number in use', () => {
    const existing = [active(4, 'mine')];
    const r = importSecrets(existing, [enc('theirs')], { nowMs: T0, origin: 'postsrsd' });
    const added: StoredKey = { num: 5, secret: enc('theirs'), status: 'verify', created: ISO0, demoted: ISO0, origin: 'postsrsd' };
    expect(r).toEqual({ keys: [existing[0], added], added: [added] });
  });

  it('with num: keeps the key number exim tags carry', () => {
    const r = importSecrets([active(0, 'mine')], [enc('exim')], { nowMs: T0, origin: 'exim', num: 3 });
    expect(r.added).toEqual([{ num: 3, secret: enc('exim'), status: 'verify', created: ISO0, demoted: ISO0, origin: 'exim' }]);
  });

  it('with activate: the first imported secret signs and the previous signing key is demoted', () => {
    const r = importSecrets([active(0, 'mine')], [enc('exim')], { nowMs: T0, origin: 'exim', num: 3, activate: true });
    expect(r.keys).toEqual([verifying(0, 'mine', ISO0), { num: 3, secret: enc('exim'), status: 'active', created: ISO0, origin: 'exim' }]);
  });

  it('refuses a secret already present, a number in use and a secret over 64 bytes', () => {
    expect(keyringErrorOf(() => importSecrets([active(0, 'mine')], [enc('new'), enc('mine')], { nowMs: T0, origin: 'postsrsd' })).message)
      .toBe('Secret 2 is already in the keyring');
    expect(keyringErrorOf(() => importSecrets([active(3, 'mine')], [enc('exim')], { nowMs: T0, origin: 'exim', num: 3 })).message)
      .toBe('Key number 3 is already in use; retire or renumber that key first');
    expect(keyringErrorOf(() => importSecrets([], [enc('x'.repeat(65))], { nowMs: T0, origin: 'exim', num: 1 })).message)
      .toBe('Secret 1 is 65 bytes; at most 64 are allowed');
    expect(importSecrets([], [enc('x'.repeat(64))], { nowMs: T0, origin: 'exim', num: 1 }).added.length).toBe(1);
  });

  it('does not change the keys it was given', () => {
    const existing = [active(0, 'mine')];
    const copy = structuredClone(existing);
    importSecrets(existing, [enc('exim')], { nowMs: T0, origin: 'exim', num: 3, activate: true });
    expect(existing).toEqual(copy);
  });
});

describe('parsePostsrsdSecrets()', () => {
  const parse = (s: string): string[] => parsePostsrsdSecrets(enc(s)).map((b) => new TextDecoder().decode(b));

  it('reads one secret per line, strips CR and LF, skips blank lines, keeps the order', () => {
    expect(parse('first\r\n\r\n\nsecond\r\nthird')).toEqual(['first', 'second', 'third']);
    expect(parse('only\n')).toEqual(['only']);
  });

  it('keeps every other byte of a line, spaces and "=" included', () => {
    expect(parse('a b=c \n')).toEqual(['a b=c ']);
  });

  it('refuses a file with no secret', () => {
    expect(keyringErrorOf(() => parsePostsrsdSecrets(enc('\r\n\n'))).message).toBe('The postsrsd secrets file has no secret in it');
  });

  it('refuses a 65-byte secret, naming its line', () => {
    expect(keyringErrorOf(() => parsePostsrsdSecrets(enc(`${'x'.repeat(65)}\n`))).message).toBe('postsrsd secret on line 1 is 65 bytes; at most 64 are allowed');
    expect(parse(`${'x'.repeat(64)}\n`)).toEqual(['x'.repeat(64)]);
  });

  it('names the file\'s own line number for a 65-byte secret after blank lines', () => {
    expect(keyringErrorOf(() => parsePostsrsdSecrets(enc(`ok\n\n${'x'.repeat(65)}\n`))).message).toBe('postsrsd secret on line 3 is 65 bytes; at most 64 are allowed');
  });
});

describe('readKeys() refusals', () => {
  let tmp: string;
  let dir: string;
  let file: string;
  const put = (doc: unknown, mode = 0o600): void => {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc), { mode });
    fs.chmodSync(file, mode);
  };
  const jwk = (kid: string, secret: string, status = 'active'): Record<string, string> => ({ kty: 'oct', kid, k: Buffer.from(secret).toString('base64url'), status, created: ISO0 });

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-keys-'));
    dir = path.join(tmp, 'keys');
    file = path.join(dir, 'keyring.json');
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('no file: says how to create one', async () => {
    expect((await rejection(readKeys(dir))).message).toBe(`No keyring at ${file}: create one with "batv-proxy keys init --dir ${dir}"`);
  });

  it('a file readable by group or others: refused with the chmod 600 fix', async () => {
    put({ keys: [jwk('0', 'a')] }, 0o644);
    expect((await rejection(readKeys(dir))).message).toBe(`Refusing ${file}: it is readable by others (mode 644); fix it with "chmod 600 ${file}"`);
    fs.chmodSync(file, 0o604);
    expect((await rejection(readKeys(dir))).message).toBe(`Refusing ${file}: it is readable by others (mode 604); fix it with "chmod 600 ${file}"`);
  });

  it('not JSON, or not a JWK Set', async () => {
    put('{');
    expect((await rejection(readKeys(dir))).message.startsWith(`Cannot parse ${file}: `)).toBe(true);
    for (const doc of ['null', '[]', '{"keys": {}}', '{"kty": "oct", "k": "YQ"}']) {
      put(doc);
      expect((await rejection(readKeys(dir))).message).toBe(`Cannot use ${file}: not a JWK Set (no "keys" array)`);
    }
  });

  it('a key that is not "oct" with "k"', async () => {
    put({ keys: [{ kty: 'RSA', kid: '0', n: 'x', e: 'AQAB', status: 'active' }] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file}: keys[0] is not an "oct" key with "k"`);
  });

  it('a kid that is not one digit', async () => {
    for (const [kid, shown] of [['10', '"10"'], ['a', '"a"'], [0, '0'], [undefined, 'undefined']] as const) {
      put({ keys: [{ ...jwk('0', 'a'), kid }] });
      expect((await rejection(readKeys(dir))).message).toBe(`${file}: keys[0] has kid ${shown}; it must be one digit 0-9`);
    }
  });

  it('a status other than active, verify or scheduled', async () => {
    put({ keys: [jwk('0', 'a'), jwk('1', 'b', 'retired')] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file}: keys[1] has status "retired"; it must be "active", "verify" or "scheduled"`);
  });

  it('two active keys, or none', async () => {
    put({ keys: [jwk('0', 'a'), jwk('1', 'b')] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file} has 2 active keys; exactly one must sign`);
    put({ keys: [jwk('0', 'a', 'verify')] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file} has 0 active keys; exactly one must sign`);
  });

  it('two keys with the same number', async () => {
    put({ keys: [jwk('0', 'a'), jwk('0', 'b', 'verify')] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file} has two keys numbered 0`);
  });

  it('a secret over 64 bytes', async () => {
    put({ keys: [jwk('0', 'x'.repeat(65))] });
    expect((await rejection(readKeys(dir))).message).toBe(`${file}: keys[0] secret is 65 bytes; at most 64 are allowed`);
    put({ keys: [jwk('0', 'x'.repeat(64))] });
    expect((await readKeys(dir))[0]!.secret.length).toBe(64);
  });

  it('a "k" that is not base64url', async () => {
    put({ keys: [{ ...jwk('0', 'a'), k: '!!!' }] });
    expect((await rejection(readKeys(dir))).message.startsWith(`${file}: keys[0] has an unreadable secret: `)).toBe(true);
  });

  it('an empty secret (anyone could forge tags with it)', async () => {
    put({ keys: [{ ...jwk('0', 'a'), k: '' }] });
    expect((await rejection(readKeys(dir))).message.startsWith(`${file}: keys[0] `)).toBe(true);
  });
});

describe('writeKeys() and readKeys()', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-keys-rt-'));
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('round-trip every field; the file is 0600 in a 0700 directory with no temporary file left', async () => {
    const dir = path.join(tmp, 'a', 'keys');
    const keys: StoredKey[] = [
      { num: 3, secret: enc('exim-secret'), status: 'verify', created: ISO0, demoted: '2026-01-02T00:00:00.000Z', origin: 'exim' },
      { num: 7, secret: new Uint8Array([0, 1, 2, 255, 254, 0x2b, 0x2f]), status: 'active', created: '2026-01-02T00:00:00.000Z' },
      { num: 0, secret: enc('x'.repeat(64)), status: 'verify', created: ISO0, demoted: ISO0 },
    ];
    await writeKeys(dir, keys);
    expect(await readKeys(dir)).toEqual(keys);
    expect(fs.statSync(keyringPath(dir)).mode & 0o777).toBe(0o600);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(fs.readdirSync(dir)).toEqual(['keyring.json']);
    const doc = JSON.parse(fs.readFileSync(keyringPath(dir), 'utf8')) as { keys: { kty: string; kid: string; k: string }[] };
    expect(doc.keys.map((k) => [k.kty, k.kid, k.k])).toEqual([
      ['oct', '3', 'ZXhpbS1zZWNyZXQ'],
      ['oct', '7', 'AAEC__4rLw'],
      ['oct', '0', 'eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA'],
    ]);
  });

  it('overwrites an existing keyring and keeps it 0600', async () => {
    const dir = path.join(tmp, 'keys');
    await writeKeys(dir, [active(0, 'a')]);
    await writeKeys(dir, [verifying(0, 'a', ISO0), active(1, 'b')]);
    expect(await readKeys(dir)).toEqual([verifying(0, 'a', ISO0), active(1, 'b')]);
    expect(fs.statSync(keyringPath(dir)).mode & 0o777).toBe(0o600);
  });

  it('refuses to write a keyring without exactly one active key', async () => {
    const dir = path.join(tmp, 'keys');
    expect((await rejection(writeKeys(dir, [active(0, 'a'), active(1, 'b')]))).message).toBe(`${keyringPath(dir)} has 2 active keys; exactly one must sign`);
    expect(fs.existsSync(dir)).toBe(false);
  });

  it('loadKeyring() puts the active key first for signing and finds every key by number', async () => {
    const dir = path.join(tmp, 'keys');
    await writeKeys(dir, [verifying(0, 'old', ISO0), active(1, 'new')]);
    const { keys, ring } = await loadKeyring(dir);
    expect(keys.map((k) => k.num)).toEqual([0, 1]);
    expect(ring.signing.num).toBe(1);
    expect(ring.verifying.map((k) => k.num)).toEqual([1, 0]);
    expect(ring.byNum(0)?.secret).toEqual(enc('old'));
    expect(ring.byNum(5)).toBe(undefined);
  });

  it('initKeys() creates key 0 active once and refuses a second time', async () => {
    const dir = path.join(tmp, 'keys');
    const k = await initKeys(dir, T0);
    expect({ num: k.num, status: k.status, created: k.created }).toEqual({ num: 0, status: 'active', created: ISO0 });
    expect(await readKeys(dir)).toEqual([k]);
    expect((await rejection(initKeys(dir, T0))).message).toBe(`A keyring already exists at ${keyringPath(dir)}; use "keys rotate" to add a key`);
  });
});

describe('secrets and thumbprints', () => {
  it('generateSecret() gives 43 base64url characters encoding 32 random bytes', () => {
    const a = new TextDecoder().decode(generateSecret());
    const b = new TextDecoder().decode(generateSecret());
    expect(/^[A-Za-z0-9_-]{43}$/.test(a)).toBe(true);
    expect(Buffer.from(a, 'base64url').length).toBe(32);
    expect(a === b).toBe(false);
  });

  it('thumbprint() is the RFC 7638 SHA-256 thumbprint of {"k","kty"} and matches jose', async () => {
    const secret = enc('secret');
    const k = Buffer.from(secret).toString('base64url');
    const rfc7638 = createHash('sha256').update(`{"k":"${k}","kty":"oct"}`).digest('base64url');
    expect(await thumbprint(secret)).toBe(rfc7638);
    expect(await thumbprint(secret)).toBe(await calculateJwkThumbprint({ kty: 'oct', k }));
    expect(rfc7638).toBe('DWBh0SEIAPYh1x5uvot4z3AhaikHkxNJa3Ada2fT-Cg');
  });
});
