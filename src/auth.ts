/**
 * SMTP AUTH for the outbound listener: a users file of password hashes, optionally limiting which sender
 * addresses each user may use, and a brake on guessing (failures per client IP slow the next attempts).
 *
 * Users file, one user a line ("#" comments):
 *   user:$scrypt$N=16384,r=8,p=1$<salt base64>$<hash base64>[:sender,sender,@domain...]
 *   user:$2b$12$...(bcrypt)[:senders]
 * `batv-proxy hash-password` prints a scrypt hash. Passwords and hashes never reach a log.
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';
import type { SharedState } from './state/redis.js';
import type { Clock } from './clock.js';
import { addressEntryProblem } from './config/text.js';
import { matchesEntry } from './policy/sign.js';

export interface UserEntry {
  readonly hash: string;
  /** Addresses or domains ("@example.com" or "example.com") this user may send as; empty = any. */
  readonly senders: readonly string[];
}

export interface Auth {
  readonly enabled: boolean;
  /** The user name when the credentials are right, else null. */
  check(auth: { method: string; username?: string | undefined; password?: string | null | undefined }, ip: string): Promise<string | null>;
  maySend(user: string, sender: string): boolean;
}

function scryptAsync(pw: string, salt: Buffer, len: number, o: { N: number; r: number; p: number }): Promise<Buffer> {
  return new Promise((res, rej) => scryptCb(pw, salt, len, { ...o, maxmem: 256 * o.N * o.r }, (e, k) => (e ? rej(e) : res(k))));
}

/** A scrypt hash string for a password. */
export async function hashPassword(password: string, N = 16384, r = 8, p = 1): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, 32, { N, r, p });
  return `$scrypt$N=${N},r=${r},p=${p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** Checks a password against a scrypt or bcrypt hash. Unknown formats never match. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const m = /^\$scrypt\$N=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(hash);
  if (m) {
    const expected = Buffer.from(m[5]!, 'base64');
    const key = await scryptAsync(password, Buffer.from(m[4]!, 'base64'), expected.length, { N: Number(m[1]), r: Number(m[2]), p: Number(m[3]) });
    return key.length === expected.length && timingSafeEqual(key, expected);
  }
  if (/^\$2[aby]\$\d\d\$/.test(hash)) return bcrypt.compare(password, hash);
  return false;
}

/** Parses a users file; problems name the line. */
export function parseUsers(text: string, file: string): Map<string, UserEntry> {
  const users = new Map<string, UserEntry>();
  for (const [i, line] of text.split(/\r?\n/).entries()) {
    const t = line.trim();
    if (!t || t.startsWith('#')) continue;
    const first = t.indexOf(':');
    if (first <= 0) throw new Error(`${file}:${i + 1}: expected user:hash[:senders]`);
    const user = t.slice(0, first);
    const rest = t.slice(first + 1);
    // The hash contains no ':'; an optional third field lists senders.
    const second = rest.indexOf(':');
    const hash = second < 0 ? rest : rest.slice(0, second);
    const senders = second < 0 ? [] : rest.slice(second + 1).split(',').map((s) => s.trim()).filter(Boolean);
    if (!/^\$scrypt\$|^\$2[aby]\$/.test(hash)) throw new Error(`${file}:${i + 1}: the hash for ${user} is neither scrypt ($scrypt$...) nor bcrypt ($2b$...)`);
    for (const s of senders) {
      const problem = addressEntryProblem(s);
      if (problem) throw new Error(`${file}:${i + 1}: sender of ${user}: ${problem}`);
    }
    users.set(user, { hash, senders });
  }
  return users;
}

export async function loadUsers(file: string): Promise<Map<string, UserEntry>> {
  return parseUsers(await fs.readFile(file, 'utf8'), file);
}

/** Failures per IP within the window before each further attempt is delayed. */
const FREE_FAILURES = 3;
const DELAY_STEP_MS = 1000;
const MAX_DELAY_MS = 10_000;
/** Failures are forgotten 15 minutes after the last one. */
const FAILURE_TTL_MS = 15 * 60_000;

/**
 * With `shared` (state.redis), failures are counted across every replica (so more replicas do not give
 * a guesser more free attempts); while Redis does not answer, the local count is used.
 */
export function createAuth(users: Map<string, UserEntry> | null, clock: Clock, sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms)), shared: SharedState | null = null): Auth {
  const failures = new LRUCache<string, number>({ max: 10_000, ttl: FAILURE_TTL_MS, perf: clock });
  // Attempts from one address are checked one after another, so opening more connections does not
  // multiply the guessing rate: each waits for the one before it, and then for its own delay.
  const queues = new LRUCache<string, Promise<unknown>>({ max: 10_000 });
  const attempt = async (auth: { username?: string | undefined; password?: string | null | undefined }, ip: string): Promise<string | null> => {
    if (!users) return null;
    const local = failures.get(ip) ?? 0;
    const n = shared ? Math.max(local, (await shared.authFailures(ip)) ?? 0) : local;
    if (n >= FREE_FAILURES) await sleep(Math.min(MAX_DELAY_MS, (n - FREE_FAILURES + 1) * DELAY_STEP_MS));
    const entry = auth.username !== undefined ? users.get(auth.username) : undefined;
    // Compare against a dummy hash for unknown users so timing does not tell them apart.
    const ok = await verifyPassword(auth.password ?? '', entry?.hash ?? DUMMY_HASH);
    if (ok && entry) {
      failures.delete(ip);
      if (shared) await shared.clearAuthFailures(ip);
      return auth.username!;
    }
    failures.set(ip, local + 1);
    if (shared) await shared.noteAuthFailure(ip, FAILURE_TTL_MS);
    return null;
  };
  return {
    enabled: users !== null,
    check(auth, ip) {
      const before = queues.get(ip) ?? Promise.resolve();
      const mine = before.then(() => attempt(auth, ip), () => attempt(auth, ip));
      queues.set(ip, mine.catch(() => undefined));
      return mine;
    },
    maySend(user, sender) {
      const e = users?.get(user);
      return !e || e.senders.length === 0 || matchesEntry(sender, e.senders);
    },
  };
}

const DUMMY_HASH = '$scrypt$N=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
