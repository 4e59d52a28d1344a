/**
 * Secret handling: no secret appears in any log line, error message, metric or CLI output. A proxy
 * started from a config file and a keyring file runs a representative scenario with every log level
 * captured (AUTH right and wrong, PLAIN and LOGIN; signing; relay AUTH to the next hop, accepted and
 * refused; inbound bounces valid, forged, expired; SRS; a reload; a metrics scrape), then the CLI verbs
 * run with captured I/O, their error paths included. Everything captured is scanned for each secret in
 * every form it travels in (as written, base64url as in the JWK, base64, hex, the AUTH PLAIN blob) and
 * for any 12-character piece of those forms, so a truncated leak is caught too.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../src/auth.js';
import { fixedClock } from '../../src/clock.js';
import { loadConfig } from '../../src/config/load.js';
import { keyringPath, writeKeys } from '../../src/keys.js';
import { createLogger } from '../../src/log.js';
import { main } from '../../src/main.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { T0 } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';

const KEY_SECRET = 'K3y-S3cret-For-Leak-Scan-0123456789abcdef';
const EXIM_SECRET = 'Exim-Imported-Secret-77aa88bb';
const CLI_SECRET = 'Cli-Secret-Leak-Scan-161803';
const AUTH_PASSWORD = 'Auth-Pa55word-Leak-Scan-31337';
const RELAY_PASS = 'Relay-Pa55-Leak-Scan-2718';

/** Every form a secret can travel in. */
function forms(secret: string, user?: string): string[] {
  const b = Buffer.from(secret, 'utf8');
  const out = [secret, b.toString('base64url'), b.toString('base64').replace(/=+$/, ''), b.toString('hex')];
  if (user !== undefined) {
    out.push(Buffer.from(`\0${user}\0${secret}`).toString('base64').replace(/=+$/, ''));
    out.push(Buffer.from(`${user}\0${user}\0${secret}`).toString('base64').replace(/=+$/, ''));
  }
  return out;
}
const SECRET_FORMS = [
  ...forms(KEY_SECRET), ...forms(EXIM_SECRET), ...forms(CLI_SECRET), ...forms(AUTH_PASSWORD, 'alice'), ...forms(RELAY_PASS, 'relayuser'),
];
/** Every 12-character piece of every form. */
const PIECES = [...new Set(SECRET_FORMS.flatMap((f) => Array.from({ length: Math.max(1, f.length - 11) }, (_, i) => f.slice(i, i + 12))))];

function leaks(text: string): string[] {
  return PIECES.filter((p) => text.includes(p));
}

const captured: string[] = [];
const note = (where: string, text: unknown) => captured.push(`[${where}] ${typeof text === 'string' ? text : JSON.stringify(text)}`);
const log = createLogger('debug', new Writable({ write(c: Buffer, _e, cb) { note('log', c.toString()); cb(); } }) as never);

let dir: string;
let configFile: string;
let out: Sink;
let mailbox: Sink;
let proxy: Proxy;
const clock = fixedClock(T0);
const ring = makeKeyring([tagKey(0, utf8(KEY_SECRET))]);

async function session(port: number): Promise<Talk> {
  const t = talk(port);
  await t.greeting;
  await t.cmd('EHLO secrets.test');
  return t;
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'batv-secrets-'));
  await writeKeys(path.join(dir, 'keys'), [{ num: 0, secret: utf8(KEY_SECRET), status: 'active', created: new Date(T0).toISOString() }]);
  writeFileSync(path.join(dir, 'users'), `alice:${await hashPassword(AUTH_PASSWORD, 1024)}\n`);
  out = await startSink({ auth: { user: 'relayuser', pass: RELAY_PASS } });
  mailbox = await startSink();
  configFile = path.join(dir, 'config.json');
  writeFileSync(configFile, JSON.stringify({
    domains: ['example.com'],
    hostname: 'proxy.test',
    srs: { domain: 'srs.example.net' },
    keys: { dir: path.join(dir, 'keys') },
    outbound: { listen: '127.0.0.1:0', relay: `smtp://127.0.0.1:${out.port}`, usersFile: path.join(dir, 'users'), allowInsecureAuth: true, allowNetworks: ['192.0.2.0/24'] },
    inbound: { listen: '127.0.0.1:0', mailbox: `smtp://127.0.0.1:${mailbox.port}` },
    relayAuth: { user: 'relayuser', pass: RELAY_PASS },
    timeouts: { connectMs: 1000, greetingMs: 1000, commandMs: 1000, dataMs: 2000, clientIdleMs: 5000 },
    metrics: { listen: null }, // not the default 127.0.0.1:9425: test files run in parallel
    log: { level: 'debug' },
  }));
  proxy = await startProxy(await loadConfig(configFile), { clock, log, createKeys: false });
});
afterAll(async () => {
  await proxy?.close(50);
  await out?.close();
  await mailbox?.close();
});

describe('no secret in any log line, error, metric or CLI output', () => {
  it('a representative proxy scenario', async () => {
    // outbound: AUTH wrong and right (PLAIN and LOGIN), then a signed message relayed with relay AUTH
    const t = await session(proxy.outbound.port);
    expect(await t.cmd(`AUTH PLAIN ${Buffer.from(`\0alice\0${AUTH_PASSWORD}x`).toString('base64')}`)).toBe('535 5.7.8 Authentication credentials invalid');
    expect(await t.cmd('AUTH LOGIN')).toMatch(/^334 /);
    expect(await t.cmd(Buffer.from('alice').toString('base64'))).toMatch(/^334 /);
    expect(await t.cmd(Buffer.from(AUTH_PASSWORD).toString('base64'))).toBe('235 Authentication successful');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data('Subject: s\r\n\r\nx\r\n')).end).toBe('250 Ok: queued as sink');
    await t.quit();
    const u = await session(proxy.outbound.port);
    expect(await u.cmd(`AUTH PLAIN ${Buffer.from(`\0alice\0${AUTH_PASSWORD}`).toString('base64')}`)).toBe('235 Authentication successful');
    await u.quit();
    expect((await out.waitForMessages(1))[0]!.user).toBe('relayuser');

    // the next hop starts refusing our relay password; the warm sessions are held aside so that the
    // client's MAIL needs a new next-hop session (and its AUTH)
    const hop = proxy.state().config.outbound.relay!;
    // (idleCount() counts every hop's idle sessions, the mailbox host's too: take this hop's until a fresh one comes)
    const held = [];
    for (;;) {
      const got = await proxy.pool.acquire(hop);
      held.push(got.session);
      if (!got.reused) break;
    }
    out.options.auth = { user: 'relayuser', pass: 'changed-elsewhere' };
    const c = await session(proxy.outbound.port);
    await c.cmd(`AUTH PLAIN ${Buffer.from(`\0alice\0${AUTH_PASSWORD}`).toString('base64')}`);
    const refused = await c.cmd('MAIL FROM:<alice@example.com>');
    await c.quit();
    for (const h of held) proxy.pool.release(hop, h);
    note('replies', [refused]);
    expect(refused).toMatch(/^451 4\.7\.0 Next hop 127\.0\.0\.1:\d+ authentication failed at auth: 535/);
    out.options.auth = { user: 'relayuser', pass: RELAY_PASS };

    // inbound: valid, forged and expired tags; valid and forged SRS
    const tag = batvSign('alice@example.com', ring.signing, T0);
    const srs = srsForward('orig@foreign.example', ring, { ...SRS_DEFAULTS, domain: 'srs.example.net' }, T0);
    if (tag.kind !== 'signed' || srs.kind !== 'rewritten') throw new Error('setup');
    const i = await session(proxy.inbound.port);
    expect(await i.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    note('reply', await i.cmd(`RCPT TO:<${tag.address.replace(/^(prvs=\d{4})[0-9a-f]{6}/, '$1abcdef')}>`));
    note('reply', await i.cmd(`RCPT TO:<${srs.address.replace(/^SRS0=..../, 'SRS0=AAAA')}>`));
    expect(await i.cmd(`RCPT TO:<${tag.address}>`)).toBe('250 Accepted');
    note('reply', (await i.data('Subject: bounce\r\n\r\nx\r\n')).end);
    await i.quit();
    clock.set(T0 + 30 * 86_400_000);
    const j = await session(proxy.inbound.port);
    await j.cmd('MAIL FROM:<>');
    note('reply', await j.cmd(`RCPT TO:<${tag.address}>`));
    note('reply', await j.cmd(`RCPT TO:<${srs.address}>`));
    await j.quit();
    clock.set(T0);

    // a reload (good keyring, then one readable by others)
    await proxy.reload().then((r) => note('reload', r), (e: Error) => note('reload error', `${e.name}: ${e.message}\n${e.stack ?? ''}`));
    await chmod(keyringPath(path.join(dir, 'keys')), 0o644);
    await proxy.reload().then((r) => note('reload', r), (e: Error) => note('reload error', `${e.name}: ${e.message}\n${e.stack ?? ''}`));
    await chmod(keyringPath(path.join(dir, 'keys')), 0o600);

    note('metrics', await proxy.metrics.registry.metrics());
    await new Promise((r) => setTimeout(r, 50));
    const all = captured.join('\n');
    expect(all).toContain('"msg":"transaction"');
    expect(leaks(all)).toEqual([]);
  });

  it('the CLI verbs, their outputs and their error paths', async () => {
    const cli = async (...argv: string[]) => {
      const io = { out: (s: string) => note(`cli ${argv[0]} out`, s), err: (s: string) => note(`cli ${argv[0]} err`, s), env: {}, now: () => T0 };
      const code = await main(argv, io).catch((e: Error) => { note(`cli ${argv[0]} threw`, `${e.message}\n${e.stack ?? ''}`); return -1; });
      note(`cli ${argv[0]} exit`, String(code));
      return code;
    };
    const keys = path.join(dir, 'cli-keys');
    const signed = batvSign('alice@example.com', tagKey(0, utf8(CLI_SECRET)), T0);
    if (signed.kind !== 'signed') throw new Error('setup');
    expect(await cli('sign', 'alice@example.com', '--secret', CLI_SECRET, '--now', '2026-01-01T12:00:00Z')).toBe(0);
    expect(await cli('verify', signed.address, '--secret', CLI_SECRET, '--now', '2026-01-01T12:00:00Z')).toBe(0);
    expect(await cli('verify', signed.address.replace(/^(prvs=\d{4})[0-9a-f]{6}/, '$1000000'), '--secret', CLI_SECRET)).toBe(1);
    expect(await cli('srs-forward', 'orig@foreign.example', '--srs-domain', 'srs.example.net', '--secret', CLI_SECRET)).toBe(0);
    expect(await cli('srs-reverse', 'SRS0=AAAA=7G=foreign.example=orig@srs.example.net', '--srs-domain', 'srs.example.net', '--secret', CLI_SECRET, '--secret', KEY_SECRET)).toBe(1);
    await cli('sign', 'alice@example.com', '--secret', `${CLI_SECRET}${'x'.repeat(60)}`);
    await cli('explain', signed.address, '--secret', CLI_SECRET);
    await cli('explain', signed.address, '--dir', path.join(dir, 'keys'));
    expect(await cli('keys', 'init', '--dir', keys)).toBe(0);
    expect(await cli('keys', 'import', '--dir', keys, '--exim-secret', EXIM_SECRET, '--keynum', '5')).toBe(0);
    await cli('keys', 'import', '--dir', keys, '--exim-secret', EXIM_SECRET, '--keynum', '6');
    expect(await cli('keys', 'rotate', '--dir', keys)).toBe(0);
    expect(await cli('keys', 'list', '--dir', keys)).toBe(0);
    expect(await cli('keys', 'list', '--dir', path.join(dir, 'keys'))).toBe(0);
    expect(await cli('check-config', '--config', configFile)).toBe(0);
    await cli('doctor', '--config', configFile);
    // error paths: a keyring readable by others, a secret over 64 bytes, a broken config
    await chmod(keyringPath(keys), 0o644);
    expect(await cli('keys', 'list', '--dir', keys)).toBe(1);
    await chmod(keyringPath(keys), 0o600);
    const long = path.join(dir, 'long-keys');
    await writeKeys(long, [{ num: 0, secret: utf8(KEY_SECRET), status: 'active', created: new Date(T0).toISOString() }]);
    const doc = JSON.parse(await readFile(keyringPath(long), 'utf8')) as { keys: Array<{ k: string }> };
    doc.keys[0]!.k = Buffer.from(`${KEY_SECRET}${KEY_SECRET}`).toString('base64url');
    await writeFile(keyringPath(long), JSON.stringify(doc), { mode: 0o600 });
    expect(await cli('keys', 'list', '--dir', long)).toBe(1);
    const badConfig = path.join(dir, 'bad.json');
    writeFileSync(badConfig, JSON.stringify({ relayAuth: { user: 'relayuser', pass: RELAY_PASS, extra: 1 }, timeouts: { dataMs: 'x' } }));
    await cli('check-config', '--config', badConfig);
    const badYaml = path.join(dir, 'bad.yaml');
    writeFileSync(badYaml, `relayAuth: { user: relayuser, pass: "${RELAY_PASS}"\n`);
    await cli('check-config', '--config', badYaml);
    const all = captured.join('\n');
    expect(all).toContain('[cli sign out] prvs=');
    expect(leaks(all)).toEqual([]);
  });

  it('a hand-damaged keyring (a quote lost around "k") does not echo part of the secret in its error', async () => {
    // readKeys used to report JSON.parse's message, and V8 quotes up to ~10 characters of the input around
    // an unexpected token: the start of the base64url secret when the damage is right before it.
    const broken = path.join(dir, 'broken-keys');
    await writeKeys(broken, [{ num: 0, secret: utf8(KEY_SECRET), status: 'active', created: new Date(T0).toISOString() }]);
    const text = await readFile(keyringPath(broken), 'utf8');
    const k = Buffer.from(KEY_SECRET).toString('base64url');
    const damaged = text.replace(/("k":\s*)"/, '$1');
    expect(damaged).not.toBe(text);
    await writeFile(keyringPath(broken), damaged, { mode: 0o600 });
    const errs: string[] = [];
    const code = await main(['keys', 'list', '--dir', broken], { out: () => undefined, err: (s) => errs.push(s), env: {}, now: () => T0 });
    expect(code).toBe(1);
    expect(errs.join('')).toContain('Cannot parse');
    const pieces = Array.from({ length: k.length - 7 }, (_, i) => k.slice(i, i + 8));
    expect(pieces.filter((p) => errs.join('').includes(p))).toEqual([]);
  });
});
