/**
 * The keyring on disk: a JWK Set (RFC 7517) of "oct" keys in `<dir>/keyring.json`, read and written with
 * jose. Each key's `kid` is its BATV key number "0"-"9"; our own members say when it was made and
 * whether it signs:
 *
 *   { "keys": [ { "kty": "oct", "kid": "1", "k": "<base64url of the secret>", "alg": "HS1",
 *                 "status": "active", "created": "2026-11-22T10:00:00.000Z" },
 *               { "kty": "oct", "kid": "0", "k": "...", "status": "verify",
 *                 "created": "...", "demoted": "2026-11-22T10:00:00.000Z", "origin": "postsrsd" } ] }
 *
 * Exactly one key is "active" (it signs BATV and SRS); "verify" keys only verify, until they are
 * retired (removed) once no tag they made can still be valid. A "scheduled" key (`keys rotate
 * --activate-at`) carries `"activate_at": "<ISO 8601>"`: every replica verifies with it as soon as it
 * has the file, and all of them sign with it from that instant (the tag keyring picks the signing key
 * by time), so no replica signs with a key another one does not know yet. The next write of the file
 * after the instant records the change (the scheduled key becomes "active", the old one "verify"). Secrets are at most 64 bytes; generated
 * ones are 43 printable base64url characters (32 random bytes) so the same secret can be pasted into
 * exim or postsrsd. The file is written 0600 (atomically, via rename) and refused when group or others
 * can read it. Logs name keys by number and RFC 7638 thumbprint, never by secret.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { base64url, calculateJwkThumbprint, importJWK } from 'jose';
import { MAX_KEY_BYTES, utf8 } from './tags/hmac.js';
import { makeKeyring, tagKey, type TagKeyring } from './tags/keyring.js';
import { MS_PER_DAY } from './clock.js';

export const KEYRING_FILE = 'keyring.json';

export type KeyStatus = 'active' | 'verify' | 'scheduled';

export interface StoredKey {
  readonly num: number;
  readonly secret: Uint8Array;
  readonly status: KeyStatus;
  readonly created: string;
  /** When it stopped signing (verify keys). */
  readonly demoted?: string;
  /** Where it came from when imported: "postsrsd", "exim". */
  readonly origin?: string;
  /** When a scheduled key starts signing (ISO 8601). */
  readonly activateAt?: string;
}

interface JwkEntry {
  kty: 'oct';
  kid: string;
  k: string;
  status: KeyStatus;
  created: string;
  demoted?: string;
  origin?: string;
  activate_at?: string;
}

/** A keyring problem an administrator must fix; the message says how. */
export class KeyringError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyringError';
  }
}

export function keyringPath(dir: string): string {
  return path.join(dir, KEYRING_FILE);
}

/** A new printable secret: 43 base64url characters from 32 random bytes. */
export function generateSecret(): Uint8Array {
  return utf8(base64url.encode(randomBytes(32)));
}

/** The user this process runs as, for messages that say whose permission is missing. */
export function whoami(): string {
  // No passwd entry (a container's arbitrary uid): fs.stat of a fresh file would tell the uid, but the
  // message is clear enough without it.
  try { return os.userInfo().username; } catch { return 'the current user (no passwd entry)'; }
}

/** A permission failure in plain words: who we are and the command that fixes it. */
function permissionError(e: unknown, what: 'read' | 'write', target: string): KeyringError | null {
  const code = (e as NodeJS.ErrnoException).code;
  if (code !== 'EACCES' && code !== 'EPERM') return null;
  const user = whoami();
  return what === 'read'
    ? new KeyringError(`Cannot read ${target}: permission denied for user ${user}; the file and its directory must belong to the user the proxy runs as: "chown ${user} ${path.dirname(target)} ${target} && chmod 700 ${path.dirname(target)} && chmod 600 ${target}"`)
    : new KeyringError(`Cannot write the keyring in ${target}: permission denied for user ${user}; give the directory to that user ("chown ${user} ${target} && chmod 700 ${target}") or choose another with --dir`);
}

/** Reads and validates `<dir>/keyring.json`. @throws KeyringError naming the file and the problem. */
export async function readKeys(dir: string): Promise<StoredKey[]> {
  const file = keyringPath(dir);
  let st;
  try {
    st = await fs.stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KeyringError(`No keyring at ${file}: create one with "batv-proxy keys init --dir ${dir}"`);
    }
    throw permissionError(e, 'read', file) ?? new KeyringError(`Cannot read ${file}: ${(e as Error).message}`);
  }
  if ((st.mode & 0o077) !== 0) {
    throw new KeyringError(
      `Refusing ${file}: it is readable by others (mode ${(st.mode & 0o777).toString(8)}); fix it with "chmod 600 ${file}"`,
    );
  }
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw permissionError(e, 'read', file) ?? new KeyringError(`Cannot read ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    // V8's message quotes the text around the error, which may be part of a secret: keep only where.
    const at = /position (\d+)/.exec((e as Error).message)?.[1];
    throw new KeyringError(`Cannot parse ${file}: not valid JSON${at ? ` (at byte ${at})` : ''}`);
  }
  const list = (doc as { keys?: unknown })?.keys;
  if (!Array.isArray(list)) throw new KeyringError(`Cannot use ${file}: not a JWK Set (no "keys" array)`);
  const keys: StoredKey[] = [];
  for (const [i, raw] of list.entries()) {
    const e = raw as Partial<JwkEntry>;
    const where = `${file}: keys[${i}]`;
    if (e.kty !== 'oct' || typeof e.k !== 'string') throw new KeyringError(`${where} is not an "oct" key with "k"`);
    if (typeof e.kid !== 'string' || !/^[0-9]$/.test(e.kid)) throw new KeyringError(`${where} has kid ${JSON.stringify(e.kid)}; it must be one digit 0-9`);
    if (e.status !== 'active' && e.status !== 'verify' && e.status !== 'scheduled') throw new KeyringError(`${where} has status ${JSON.stringify(e.status)}; it must be "active", "verify" or "scheduled"`);
    if (e.status === 'scheduled' && (typeof e.activate_at !== 'string' || Number.isNaN(Date.parse(e.activate_at)))) {
      throw new KeyringError(`${where} is scheduled but has activate_at ${JSON.stringify(e.activate_at)}, not an ISO 8601 date`);
    }
    let secret: Uint8Array;
    try {
      secret = (await importJWK({ kty: 'oct', k: e.k }, 'HS256')) as Uint8Array;
    } catch (err) {
      throw new KeyringError(`${where} has an unreadable secret: ${(err as Error).message}`);
    }
    if (secret.length > MAX_KEY_BYTES) throw new KeyringError(`${where} secret is ${secret.length} bytes; at most ${MAX_KEY_BYTES} are allowed`);
    if (secret.length === 0) throw new KeyringError(`${where} has an empty secret (anyone could forge tags with it)`);
    for (const f of ['created', 'demoted'] as const) {
      if (e[f] !== undefined && Number.isNaN(Date.parse(String(e[f])))) throw new KeyringError(`${where} has ${f} ${JSON.stringify(e[f])}, not an ISO 8601 date`);
    }
    keys.push({ num: Number(e.kid), secret, status: e.status, created: String(e.created ?? ''), ...(e.demoted ? { demoted: e.demoted } : {}), ...(e.origin ? { origin: e.origin } : {}), ...(e.status === 'scheduled' ? { activateAt: e.activate_at! } : {}) });
  }
  checkKeys(keys, file);
  return keys;
}

function checkKeys(keys: readonly StoredKey[], file: string): void {
  const active = keys.filter((k) => k.status === 'active');
  if (active.length !== 1) throw new KeyringError(`${file} has ${active.length} active keys; exactly one must sign`);
  const seen = new Set<number>();
  for (const k of keys) {
    if (seen.has(k.num)) throw new KeyringError(`${file} has two keys numbered ${k.num}`);
    seen.add(k.num);
  }
}

/** Writes the keyring atomically with mode 0600 (and the directory 0700 when it is created). */
export async function writeKeys(dir: string, keys: readonly StoredKey[]): Promise<void> {
  const file = keyringPath(dir);
  checkKeys(keys, file);
  try {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw permissionError(e, 'write', dir) ?? e;
  }
  const doc = {
    keys: keys.map((k): JwkEntry => ({
      kty: 'oct',
      kid: String(k.num),
      k: base64url.encode(k.secret),
      status: k.status,
      created: k.created,
      ...(k.demoted ? { demoted: k.demoted } : {}),
      ...(k.origin ? { origin: k.origin } : {}),
      ...(k.status === 'scheduled' && k.activateAt ? { activate_at: k.activateAt } : {}),
    })),
  };
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await fs.writeFile(tmp, JSON.stringify(doc, null, 2) + '\n', { mode: 0o600 });
    await fs.chmod(tmp, 0o600);
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw permissionError(e, 'write', dir) ?? e;
  }
}

/** The active key first, then the verifying and scheduled ones (with their activation), ready for the tag code. */
export function toTagKeyring(keys: readonly StoredKey[]): TagKeyring {
  const ordered = [...keys].sort((a, b) => (a.status === 'active' ? -1 : b.status === 'active' ? 1 : 0));
  return makeKeyring(ordered.map((k) => tagKey(k.num, k.secret, k.status === 'scheduled' ? Date.parse(k.activateAt!) : undefined)));
}

/**
 * The keys as they stand at `nowMs`: a scheduled key whose instant has come becomes "active" and the
 * key it replaces "verify" (demoted at that instant). What the tag keyring does by time, written down.
 */
export function settle(keys: readonly StoredKey[], nowMs: number): StoredKey[] {
  const due = keys.filter((k) => k.status === 'scheduled' && Date.parse(k.activateAt!) <= nowMs)
    .sort((a, b) => Date.parse(a.activateAt!) - Date.parse(b.activateAt!));
  let result = [...keys];
  for (const next of due) {
    const at = next.activateAt!;
    result = result.map((k): StoredKey => {
      if (k === next) { const { activateAt: _drop, ...rest } = k; return { ...rest, status: 'active' }; }
      return k.status === 'active' ? { ...k, status: 'verify', demoted: at } : k;
    });
  }
  return result;
}

/** The key that signs at `nowMs` (the active key, or a scheduled one whose instant has come). */
export function signingKeyAt(keys: readonly StoredKey[], nowMs: number): StoredKey | undefined {
  return settle(keys, nowMs).find((k) => k.status === 'active');
}

/** doctor's thresholds until the config has a knob: rotate after 180 days; copy files at least an hour ahead. */
export const KEY_SCHEDULE_DEFAULTS = { maxAgeDays: 180, windowMs: 60 * 60 * 1000 } as const;

/**
 * What `doctor` says about the schedule: the signing key is older than `maxAgeDays` (time to rotate),
 * or a scheduled key is due within `windowMs` (the time config management needs to bring the file to
 * every replica: a replica without it cannot verify the new key's tags once another signs with it).
 */
export function keyScheduleWarnings(keys: readonly StoredKey[], nowMs: number, opts: { maxAgeDays: number; windowMs: number }): string[] {
  const out: string[] = [];
  const active = signingKeyAt(keys, nowMs);
  // Signing since its activation (a scheduled key now due) or its creation.
  const orig = active ? keys.find((k) => k.num === active.num) : undefined;
  const since = orig ? Date.parse(orig.status === 'scheduled' ? orig.activateAt! : orig.created) : NaN;
  if (active && Number.isFinite(since) && nowMs - since > opts.maxAgeDays * MS_PER_DAY) {
    out.push(`signing key ${active.num} has signed for ${Math.floor((nowMs - since) / MS_PER_DAY)} days (over ${opts.maxAgeDays}): schedule a new one with "batv-proxy keys rotate --activate-at ..."`);
  }
  for (const k of keys) {
    if (k.status !== 'scheduled') continue;
    const at = Date.parse(k.activateAt!);
    if (at > nowMs && at - nowMs <= opts.windowMs) {
      out.push(`key ${k.num} starts signing at ${k.activateAt}, in ${Math.ceil((at - nowMs) / 60000)} min: make sure every replica has this keyring file before then`);
    }
  }
  return out;
}

/** Reads the keyring from disk and prepares it for the tag code. */
export async function loadKeyring(dir: string): Promise<{ keys: StoredKey[]; ring: TagKeyring }> {
  const keys = await readKeys(dir);
  return { keys, ring: toTagKeyring(keys) };
}

/** RFC 7638 thumbprint of a key: how logs and `keys list` name it. */
export async function thumbprint(secret: Uint8Array): Promise<string> {
  return calculateJwkThumbprint({ kty: 'oct', k: base64url.encode(secret) });
}

/** Creates a keyring with one fresh active key numbered 0. @throws KeyringError when one exists or DIR is not writable. */
export async function initKeys(dir: string, nowMs: number): Promise<StoredKey> {
  if (await exists(keyringPath(dir))) throw new KeyringError(`A keyring already exists at ${keyringPath(dir)}; use "keys rotate" to add a key`);
  // Say so before generating anything: an existing directory we may not write to.
  if (await exists(dir)) {
    try { await fs.access(dir, fs.constants.W_OK | fs.constants.X_OK); } catch (e) { throw permissionError(e, 'write', dir) ?? e; }
  }
  const key: StoredKey = { num: 0, secret: generateSecret(), status: 'active', created: new Date(nowMs).toISOString() };
  await writeKeys(dir, [key]);
  return key;
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(() => true, () => false);
}

function freeNumber(keys: readonly StoredKey[], after: number): number {
  for (let i = 1; i <= 10; i++) {
    const n = (after + i) % 10;
    if (!keys.some((k) => k.num === n)) return n;
  }
  throw new KeyringError('All ten key numbers 0-9 are in use; retire old keys first with "batv-proxy keys retire"');
}

/**
 * Adds a fresh key that signs at once, or from `activateAtMs` when that is later than now (it verifies
 * at once); the previous signing key keeps verifying.
 * @returns the new keys list and the new key.
 */
export function rotate(keys: readonly StoredKey[], nowMs: number, secret: Uint8Array = generateSecret(), activateAtMs?: number): { keys: StoredKey[]; added: StoredKey } {
  keys = settle(keys, nowMs);
  const iso = new Date(nowMs).toISOString();
  if (activateAtMs !== undefined && activateAtMs > nowMs) {
    const last = keys.reduce((m, k) => Math.max(m, k.num), -1);
    const added: StoredKey = { num: freeNumber(keys, last), secret, status: 'scheduled', created: iso, activateAt: new Date(activateAtMs).toISOString() };
    return { keys: [...keys, added], added };
  }
  const current = keys.find((k) => k.status === 'active');
  const added: StoredKey = { num: freeNumber(keys, current?.num ?? -1), secret, status: 'active', created: iso };
  const demoted = keys.map((k): StoredKey => (k.status === 'active' ? { ...k, status: 'verify', demoted: iso } : k));
  return { keys: [...demoted, added], added };
}

/**
 * Removes verify-only keys demoted more than `verifyDays` ago (no tag they made can still be valid:
 * pass the longest of the BATV and SRS max ages plus a day).
 */
export function retire(keys: readonly StoredKey[], nowMs: number, verifyDays: number): { keys: StoredKey[]; removed: StoredKey[] } {
  keys = settle(keys, nowMs);
  const cutoff = nowMs - verifyDays * MS_PER_DAY;
  const removed = keys.filter((k) => k.status === 'verify' && k.demoted !== undefined && Date.parse(k.demoted) <= cutoff);
  return { keys: keys.filter((k) => !removed.includes(k)), removed };
}

/**
 * Parses a postsrsd secrets file: one secret per line, CR/LF stripped, blank lines skipped, the first
 * line signs in postsrsd. @throws KeyringError for a secret over 64 bytes or an empty file.
 */
export function parsePostsrsdSecrets(text: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  let line = 0;
  for (let i = 0; i <= text.length; i++) {
    if (i === text.length || text[i] === 0x0a) {
      line++;
      let end = i;
      while (end > start && (text[end - 1] === 0x0d || text[end - 1] === 0x0a)) end--;
      if (end - start > MAX_KEY_BYTES) {
        throw new KeyringError(`postsrsd secret on line ${line} is ${end - start} bytes; at most ${MAX_KEY_BYTES} are allowed`);
      }
      if (end > start) out.push(text.slice(start, end));
      start = i + 1;
    }
  }
  if (out.length === 0) throw new KeyringError('The postsrsd secrets file has no secret in it');
  return out;
}

/**
 * Adds imported secrets. With `num`, the (single) secret gets that key number (an exim prvs secret must
 * keep the number its tags carry). With `activate`, the first imported secret signs from now on.
 */
export function importSecrets(
  keys: readonly StoredKey[],
  secrets: readonly Uint8Array[],
  opts: { nowMs: number; origin: string; num?: number; activate?: boolean },
): { keys: StoredKey[]; added: StoredKey[] } {
  const iso = new Date(opts.nowMs).toISOString();
  let result: StoredKey[] = [...keys];
  const added: StoredKey[] = [];
  for (const [i, secret] of secrets.entries()) {
    if (secret.length > MAX_KEY_BYTES) throw new KeyringError(`Secret ${i + 1} is ${secret.length} bytes; at most ${MAX_KEY_BYTES} are allowed`);
    if (result.some((k) => Buffer.compare(Buffer.from(k.secret), Buffer.from(secret)) === 0)) {
      throw new KeyringError(`Secret ${i + 1} is already in the keyring`);
    }
    let num: number;
    if (opts.num !== undefined && i === 0) {
      if (result.some((k) => k.num === opts.num)) throw new KeyringError(`Key number ${opts.num} is already in use; retire or renumber that key first`);
      num = opts.num;
    } else {
      num = freeNumber(result, result.length ? Math.max(...result.map((k) => k.num)) : -1);
    }
    const activate = opts.activate === true && i === 0;
    if (activate) result = result.map((k) => (k.status === 'active' ? { ...k, status: 'verify', demoted: iso } : k));
    const status: KeyStatus = activate || !result.some((k) => k.status === 'active') ? 'active' : 'verify';
    const key: StoredKey = { num, secret, status, created: iso, ...(status === 'verify' ? { demoted: iso } : {}), origin: opts.origin };
    result.push(key);
    added.push(key);
  }
  return { keys: result, added };
}
