/**
 * Optional protection of the metrics listener (for exposing it beyond loopback): a bearer token
 * (metrics.token or metrics.tokenFile) and/or basic auth against a users file in the format of
 * outbound.usersFile, verified by src/auth.ts (same hashes, same brake on guessing). With a token set,
 * basic auth with the token as password (any user name) is accepted too, so a browser can open the page.
 * The token is never logged; a failed check says nothing about why.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { createAuth, loadUsers } from '../auth.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';

export interface Access {
  /** False when neither a token nor a users file is configured: every request passes. */
  readonly enabled: boolean;
  /** The WWW-Authenticate value of a 401. */
  readonly challenge: string;
  /** Whether an Authorization header value grants access. */
  check(authorization: string | undefined, ip: string): Promise<boolean>;
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();
const sameSecret = (a: string, b: string) => timingSafeEqual(digest(a), digest(b));

/** A successful basic-auth header is remembered this long, so a page polling every 5 s costs no scrypt each time. */
const REMEMBER_MS = 60_000;
const REMEMBER_MAX = 64;

/** Reads the token file and users file the config names. @throws Error naming the setting and file. */
export async function loadAccess(m: Config['metrics'], clock: Clock): Promise<Access> {
  let token = m.token;
  if (m.tokenFile !== null) {
    let text: string;
    try {
      text = await fs.readFile(m.tokenFile, 'utf8');
    } catch (e) {
      throw new Error(`metrics.tokenFile: cannot read ${m.tokenFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    token = text.split(/\r?\n/)[0]!.trim();
    if (token.length < 16) throw new Error(`metrics.tokenFile: the first line of ${m.tokenFile} must hold a token of at least 16 characters`);
  }
  const users = m.usersFile === null ? null : await loadUsers(m.usersFile).catch((e: Error) => { throw new Error(`metrics.usersFile: ${e.message}`); });
  const auth = users ? createAuth(users, clock) : null;
  const remembered = new Map<string, number>();
  const realm = 'realm="batv-proxy"';
  return {
    enabled: token !== null || auth !== null,
    challenge: [token !== null ? `Bearer ${realm}` : null, `Basic ${realm}, charset="UTF-8"`].filter(Boolean).join(', '),
    async check(header, ip) {
      if (token === null && auth === null) return true;
      if (!header) return false;
      const sp = header.indexOf(' ');
      const scheme = sp < 0 ? header.toLowerCase() : header.slice(0, sp).toLowerCase();
      const value = sp < 0 ? '' : header.slice(sp + 1).trim();
      if (scheme === 'bearer') return token !== null && sameSecret(value, token);
      if (scheme !== 'basic') return false;
      const decoded = Buffer.from(value, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) return false;
      const user = decoded.slice(0, colon);
      const password = decoded.slice(colon + 1);
      if (token !== null && sameSecret(password, token)) return true;
      if (!auth) return false;
      const key = digest(header).toString('base64');
      const until = remembered.get(key);
      if (until !== undefined && until > clock.now()) return true;
      if ((await auth.check({ method: 'PLAIN', username: user, password }, ip)) === null) return false;
      if (remembered.size >= REMEMBER_MAX) remembered.delete(remembered.keys().next().value!);
      remembered.set(key, clock.now() + REMEMBER_MS);
      return true;
    },
  };
}
