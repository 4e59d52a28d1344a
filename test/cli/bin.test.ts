/**
 * The built CLI as users run it (`node bin/batv-proxy.js ...`, what `npx batv-proxy` starts): exit codes,
 * stdout/stderr, and check-config. Builds dist/ once unless it is newer than every file in src/.
 * Kept small: every case spawns a process.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, redacted } from '../../src/config/load.js';
import { startTestProxy } from '../helpers/proxy.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin', 'batv-proxy.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

function distIsFresh(): boolean {
  const built = path.join(ROOT, 'dist', 'main.js');
  return fs.existsSync(built) && fs.statSync(built).mtimeMs >= newestMtime(path.join(ROOT, 'src'));
}

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** Runs the CLI in `cwd` with exactly `env` (plus PATH), never the test runner's BATV_PROXY_* variables. */
function cli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, encoding: 'utf8' }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, out: stdout, err: stderr });
    });
  });
}

let tmp: string;

beforeAll(() => {
  if (!distIsFresh()) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'ignore' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-bin-'));
}, 120_000);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('bin/batv-proxy.js', () => {
  it('sign prints the tag on stdout and exits 0', async () => {
    const r = await cli(['sign', 'user@example.com', '--secret', 'secret', '--keynum', '5', '--now', '2026-01-01T12:00:00Z'], tmp);
    expect(r).toEqual({ code: 0, out: 'prvs=5461cd18bc=user@example.com\n', err: '' });
  });

  it('--version prints the package version and exits 0; sign --help lists --config', async () => {
    const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(await cli(['--version'], tmp)).toEqual({ code: 0, out: `batv-proxy ${version}\n`, err: '' });
    const help = await cli(['sign', '--help'], tmp);
    expect(help.out.split('\n')[0]).toBe('Usage: batv-proxy sign ADDRESS [--secret S] [--keynum K] [--now ISO8601] [--dir DIR] [--config FILE]');
  });

  it('exits 1 for a refused address and 2 for a usage error, with nothing on stdout', async () => {
    const [refused, usage] = await Promise.all([
      cli(['sign', '<>', '--secret', 'secret'], tmp),
      cli(['sign', 'user@example.com', '--nope'], tmp),
    ]);
    expect(refused).toEqual({ code: 1, out: '', err: 'Cannot sign "<>": the null sender is never signed\n' });
    expect({ code: usage.code, out: usage.out, first: usage.err.split('\n')[0] }).toEqual({ code: 2, out: '', first: 'batv-proxy sign: Unknown option \'--nope\'' });
  });

  it('check-config --config bad.json exits 1 listing every wrong field', async () => {
    const bad = path.join(tmp, 'bad.json');
    fs.writeFileSync(bad, JSON.stringify({ bogus: true, domains: [], srs: { hashMin: 9 }, outbound: { relay: 'http://relay.example' }, timeouts: { connectMs: -5 } }));
    const r = await cli(['check-config', '--config', bad], tmp);
    expect(r).toEqual({
      code: 1,
      out: '',
      err: [
        `batv-proxy check-config: Invalid configuration ${bad}:`,
        '  - bogus: unknown setting',
        '  - domains: list at least one domain of ours',
        '  - srs.hashMin: 9 is above srs.hashLength (4)',
        '  - outbound.relay: "http://relay.example" must start with smtp:// or smtps://',
        '  - timeouts.connectMs: must be a whole number from 100 to 600000 (found -5)',
        '',
      ].join('\n'),
    });
  });

  it('check-config without a config prints the effective config as JSON and hides relayAuth.pass', async () => {
    const env = {
      BATV_PROXY_RELAY_AUTH__USER: 'relay-user',
      BATV_PROXY_RELAY_AUTH__PASS: 'hunter2-pass',
      BATV_PROXY_OUTBOUND__RELAY: 'smtp://mx.internal:2525',
    };
    const r = await cli(['check-config'], tmp, env);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    expect(r.out.includes('hunter2-pass')).toBe(false);
    const shown = JSON.parse(r.out) as { relayAuth: unknown; domains: unknown; outbound: { relay: unknown; listen: unknown } };
    expect(shown.relayAuth).toEqual({ user: 'relay-user', pass: '***' });
    expect(shown.domains).toEqual(['example.com']);
    expect(shown.outbound.listen).toBe('127.0.0.1:2525');
    expect(shown.outbound.relay).toEqual({ url: 'smtp://mx.internal:2525', host: 'mx.internal', port: 2525, secure: false });
    expect(shown).toEqual(redacted(await loadConfig(null, env)));
  });
});

describe('check-config beside a running proxy', () => {
  it('lists on stderr what a reload (SIGHUP) of that proxy cannot apply (src/runtime.ts RESTART_ONLY)', async () => {
    const { proxy } = await startTestProxy();
    try {
      const r = await cli(['check-config'], tmp, { BATV_PROXY_OUTBOUND__LISTEN: `127.0.0.1:${proxy.outbound.port}`, BATV_PROXY_INBOUND__LISTEN: `127.0.0.1:${proxy.inbound.port}` });
      expect(r.code).toBe(0);
      expect(r.err.split('\n').slice(0, 3)).toEqual([
        'A reload (SIGHUP) applies every setting except these, which need a restart:',
        '  outbound.listen: the listener stays bound to its address',
        '  inbound.listen: the listener stays bound to its address',
      ]);
      expect(r.err).toContain('\n  keys.dir: the keys directory is watched from the start\n');
      expect(JSON.parse(r.out).outbound.listen).toBe(`127.0.0.1:${proxy.outbound.port}`);
    } finally {
      await proxy.close();
    }
  });
});
