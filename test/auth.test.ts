/** The users file and the sender entries a user may send as (src/auth.ts, matched by policy/sign.ts matchesEntry). */
import { describe, expect, it } from 'vitest';
import { createAuth, parseUsers } from '../src/auth.js';
import { systemClock } from '../src/clock.js';

const HASH = '$2b$04$abcdefghijklmnopqrstuuAbCdEfGhIjKlMnOpQrStUvWxYz01234';

describe('users file sender entries', () => {
  it('takes addresses, domains and @domains, and a user may send only as those', () => {
    const users = parseUsers(`# comment\nann:${HASH}:ann@example.com, @example.org ,example.net\nbob:${HASH}\n`, 'users');
    expect(users.get('ann')?.senders).toEqual(['ann@example.com', '@example.org', 'example.net']);
    const auth = createAuth(users, systemClock);
    expect(auth.maySend('ann', 'ANN@Example.com')).toBe(true);
    expect(auth.maySend('ann', 'someone@EXAMPLE.org')).toBe(true);
    expect(auth.maySend('ann', 'someone@example.net')).toBe(true);
    expect(auth.maySend('ann', 'other@example.com')).toBe(false);
    expect(auth.maySend('ann', 'someone@sub.example.org')).toBe(false);
    expect(auth.maySend('bob', 'anyone@anywhere.example')).toBe(true);
  });

  it('refuses an entry that is neither, naming the file, the line and the user', () => {
    expect(() => parseUsers(`ann:${HASH}\ncarl:${HASH}:carl@, @example.org\n`, '/etc/batv/users')).toThrow(
      '/etc/batv/users:2: sender of carl: "carl@" is neither an address (local@domain) nor a domain (example.com or @example.com)',
    );
  });
});
