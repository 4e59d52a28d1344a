/**
 * `batv-proxy doctor` and `check-config`, in-process through main(argv, io): a good setup prints only
 * ok/warn lines and exits 0; a next hop on a closed port, or a keyring readable by others, is a FAIL line
 * naming what to fix, exit 1. check-config lists every wrong field at once.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/main.js';
import type { Io } from '../../src/cli/args.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { closedPort } from '../helpers/fake-peer.js';
import { freePort } from '../helpers/proc.js';
import { T0 } from '../helpers/proxy.js';

async function run(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: Io = { out: (t) => { out += t; }, err: (t) => { err += t; }, env, now: () => T0 };
  const code = await main(argv, io);
  return { code, out, err };
}

const CLOCK = 'ok    clock: 2026-01-01T12:00:00.000Z (tags use UTC days; keep NTP running, a clock off by a day refuses valid bounces)';
const NO_TLS = 'warn  tls: no certificate configured; STARTTLS is not offered to clients';

describe('doctor', () => {
  let dir: string;
  let keys: string;
  let sink: Sink;
  let outPort: number;
  let inPort: number;
  const write = (name: string, config: Record<string, unknown>): string => {
    const f = path.join(dir, name);
    writeFileSync(f, JSON.stringify(config));
    return f;
  };
  const config = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
    domains: ['example.com'],
    hostname: 'proxy.test',
    keys: { dir: keys },
    outbound: { listen: `127.0.0.1:${outPort}`, relay: `smtp://127.0.0.1:${sink.port}` },
    inbound: { listen: `127.0.0.1:${inPort}`, mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'classify' },
    metrics: { listen: null }, // not the default 127.0.0.1:9425: test files run in parallel
    ...over,
  });
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-doctor-'));
    keys = path.join(dir, 'keys');
    sink = await startSink({ name: 'sink.test' });
    outPort = await freePort();
    inPort = await freePort([outPort]);
    expect((await run(['keys', 'init', '--dir', keys])).code).toBe(0);
  });
  afterAll(async () => {
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a good config with a sink as next hop: ok lines (and the TLS warning), exit 0', async () => {
    const file = write('good.json', config());
    const ehlo = 'PIPELINING 8BITMIME SMTPUTF8';
    expect(await run(['doctor', '--config', file])).toEqual({
      code: 0,
      err: '',
      out: [
        `ok    config: ${file} is valid`,
        `ok    keys: ${keys}/keyring.json (mode 0600), 1 key(s), key 0 signs, 0 days old`,
        `ok    keys.dir: ${keys} is writable by ${os.userInfo().username}`,
        CLOCK,
        `ok    outbound.listen: 127.0.0.1:${outPort} is free`,
        `ok    inbound.listen: 127.0.0.1:${inPort} is free`,
        NO_TLS,
        `ok    outbound.relay: smtp://127.0.0.1:${sink.port} answers SMTP (EHLO: ${ehlo})`,
        `ok    inbound.mailbox: smtp://127.0.0.1:${sink.port} answers SMTP (EHLO: ${ehlo})`,
        '',
      ].join('\n'),
    });
  });

  // Run as nobody (root may write anywhere): a subprocess through setpriv, as test/cli/keys.test.ts does.
  const canSwitch = process.getuid?.() === 0 && spawnSync('setpriv', ['--reuid=65534', 'true']).status === 0;
  it.skipIf(!canSwitch)('keys and capture directories the proxy\'s user cannot write: FAIL lines naming the user and the fix', () => {
    const top = mkdtempSync(path.join(os.tmpdir(), 'batv-doctor-rw-'));
    try {
      const keysDir = path.join(top, 'keys');
      mkdirSync(keysDir, { mode: 0o755 }); // root's, not writable by nobody
      const outbox = path.join(top, 'ro', 'outbox'); // its parent cannot be written either
      mkdirSync(path.join(top, 'ro'), { mode: 0o755 });
      const inbox = path.join(top, 'free', 'inbox'); // will be created: its parent is nobody's
      mkdirSync(path.join(top, 'free'));
      chownSync(path.join(top, 'free'), 65534, 65534);
      chmodSync(top, 0o755);
      const f = path.join(top, 'c.json');
      writeFileSync(f, JSON.stringify({ ...config(), keys: { dir: keysDir }, outbound: { listen: `127.0.0.1:${outPort}`, captureDir: outbox }, inbound: { listen: `127.0.0.1:${inPort}`, captureDir: inbox } }));
      chmodSync(f, 0o644);
      const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--import', 'tsx', '-e',
        `import(${JSON.stringify(path.resolve('src/main.ts'))}).then((m) => m.main(['doctor', '--config', ${JSON.stringify(f)}])).then((c) => process.exit(c))`], { encoding: 'utf8' });
      expect({ status: r.status, err: r.stderr, out: r.stdout.split('\n')[0] }).toEqual({ status: 1, err: '', out: `ok    config: ${f} is valid` });
      const lines = r.stdout.split('\n').filter((l) => /^\S+\s+(keys\.dir|outbound\.captureDir|inbound\.captureDir):/.test(l));
      expect(lines).toEqual([
        `FAIL  keys.dir: ${keysDir} is not writable by user nobody ("keys rotate" and "keys import" write the keyring there); fix it with "chown nobody ${keysDir}"`,
        `FAIL  outbound.captureDir: ${outbox} does not exist and user nobody cannot create it in ${path.join(top, 'ro')} (each captured message is a file there); fix it with "mkdir -p ${outbox} && chown nobody ${outbox}"`,
        `ok    inbound.captureDir: ${inbox} does not exist yet; it will be created (${path.join(top, 'free')} is writable by nobody)`,
      ]);
    } finally {
      rmSync(top, { recursive: true, force: true });
    }
  });

  it('a next hop on a closed port: a FAIL line naming it, exit 1', async () => {
    const port = await closedPort();
    const file = write('closed.json', config({ outbound: { listen: `127.0.0.1:${outPort}`, relay: `smtp://127.0.0.1:${port}` } }));
    const r = await run(['doctor', '--config', file]);
    expect(r.code).toBe(1);
    const fails = r.out.split('\n').filter((l) => l.startsWith('FAIL'));
    expect(fails).toEqual([`FAIL  outbound.relay: Next hop 127.0.0.1:${port} unreachable: connection refused`]);
  });

  it('a keyring readable by others: a FAIL line with the chmod that fixes it, exit 1', async () => {
    const file = write('good2.json', config());
    const ring = path.join(keys, 'keyring.json');
    chmodSync(ring, 0o644);
    try {
      const r = await run(['doctor', '--config', file]);
      expect(r.code).toBe(1);
      expect(r.out.split('\n').filter((l) => l.startsWith('FAIL'))).toEqual([
        `FAIL  keys: Refusing ${ring}: it is readable by others (mode 644); fix it with "chmod 600 ${ring}"`,
      ]);
    } finally {
      chmodSync(ring, 0o600);
    }
  });

  it('a listen port taken by another program: FAIL naming the port', async () => {
    const file = write('taken.json', config({ outbound: { listen: `127.0.0.1:${sink.port}`, relay: `smtp://127.0.0.1:${sink.port}` } }));
    const r = await run(['doctor', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.out.split('\n').filter((l) => l.startsWith('FAIL'))).toEqual([
      `FAIL  outbound.listen: 127.0.0.1:${sink.port} in use by another program (220 sink.test ESMTP)`,
    ]);
  });

  it('an invalid config: one FAIL line with every problem, exit 1', async () => {
    const file = write('bad.json', { domains: [], inbound: { untaggedBounces: 'drop' } });
    const r = await run(['doctor', '--config', file]);
    expect(r).toEqual({
      code: 1,
      err: '',
      out: `FAIL  config: Invalid configuration ${file}:\n  - domains: list at least one domain of ours\n  - inbound.untaggedBounces: must be one of "reject", "classify", "tag", "accept" (found "drop")\n`,
    });
  });
});

describe('check-config', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'batv-check-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('lists every wrong field at once (file and environment together), exit 1', async () => {
    const file = path.join(dir, 'bad.yaml');
    writeFileSync(file, [
      'domains: [example.com]',
      'srs: { domain: example.com, hashLength: 2 }',
      'outbound: { listen: "localhost", relay: "mx.example.net:25" }',
      'inbound: { untaggedBounces: drop }',
      'timeouts: { dataMs: 700000 }',
      'colour: blue',
      '',
    ].join('\n'));
    const r = await run(['check-config', '--config', file], { BATV_PROXY_BATV__MAX_AGE_DAYS: '365' });
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toBe([
      `batv-proxy check-config: Invalid configuration ${file}:`,
      '  - colour: unknown setting',
      '  - srs.hashLength: must be a whole number from 4 to 27 (found 2)',
      '  - BATV_PROXY_BATV__MAX_AGE_DAYS (batv.maxAgeDays): must be a whole number from 0 to 100 (found 365)',
      '  - outbound.listen: "localhost" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525',
      '  - outbound.relay: "mx.example.net:25" must start with smtp:// or smtps://',
      '  - inbound.untaggedBounces: must be one of "reject", "classify", "tag", "accept" (found "drop")',
      '  - timeouts.clientIdleMs: 660000 must be above timeouts.dataMs (700000) so the next hop\'s answer reaches the client first',
      '  - srs.domain: "example.com" is one of our domains; SRS needs a domain of its own (e.g. srs.example.com)',
      '',
    ].join('\n'));
  });

  it('prints the effective config with the relay password hidden, exit 0', async () => {
    const file = path.join(dir, 'good.json');
    writeFileSync(file, JSON.stringify({ domains: ['example.com'], relayAuth: { user: 'proxy', pass: 'hunter2-secret' } }));
    const r = await run(['check-config', '--config', file], { BATV_PROXY_OUTBOUND__RELAY: 'smtp://10.0.0.5:25' });
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    expect(r.out).not.toContain('hunter2-secret');
    const c = JSON.parse(r.out) as Record<string, Record<string, unknown>>;
    expect(c.relayAuth).toEqual({ user: 'proxy', pass: '***' });
    expect(c.outbound!.relay).toEqual({ url: 'smtp://10.0.0.5:25', host: '10.0.0.5', port: 25, secure: false });
    expect(c.outbound!.allowNetworks).toEqual(['127.0.0.0/8', '::1/128']);
  });
});

describe('a listen address in use is a configuration problem', () => {
  it('serve refuses with every taken address in one list; check-config too, unless a batv-proxy holds it', async () => {
    const net = await import('node:net');
    const { main } = await import('../../src/main.js');
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const port = (taken.address() as import('node:net').AddressInfo).port;
    const errs: string[] = [];
    const io = { out: () => undefined, err: (s: string) => void errs.push(s), env: { BATV_PROXY_OUTBOUND__LISTEN: `127.0.0.1:${port}`, BATV_PROXY_INBOUND__LISTEN: '127.0.0.1:0', BATV_PROXY_METRICS__LISTEN: '127.0.0.1:0' }, now: () => Date.now() };
    try {
      expect(await main(['serve'], io)).toBe(1);
      expect(errs.join('')).toBe(`batv-proxy serve: Invalid configuration:\n  - outbound.listen: 127.0.0.1:${port} in use by another program\n`);
      errs.length = 0;
      expect(await main(['check-config'], io)).toBe(1);
      expect(errs.join('')).toBe(`batv-proxy check-config: Invalid configuration:\n  - outbound.listen: 127.0.0.1:${port} in use by another program\n`);
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
    }
  });
});
