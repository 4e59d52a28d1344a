/**
 * Every command in the README is run by a test. Each ```sh block of README.md runs with `bash -e`, one
 * block at a time and in README order, in a temp working directory, against a proxy started the way
 * `npm start` starts it (`node bin/batv-proxy.js serve`, zero config, so keys/ and mail/ land in the temp
 * directory). `npx batv-proxy` becomes `node <repo>/bin/batv-proxy.js`; when 2525/2526 are taken on this
 * machine, other free ports replace them consistently in the proxy's BATV_PROXY_* overrides and in the
 * commands (and so in the environment of the commands, which the CLI reads like the proxy does);
 * /tmp/postsrsd.secret becomes a file in the temp directory. Each block must exit 0 (the README appends
 * `|| true` where a refusal is expected), and its output must be what the README says it is.
 *
 * The first two blocks are not run recursively: `npm install && npm start` and `npm test` are checked
 * against package.json instead (start is the zero-config serve used here, install builds dist/ through
 * prepare, test is vitest run, of which this file is part).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { talk } from '../helpers/talk.js';
import { BIN, cleanEnv, ensureBuilt, freePort, portFree, REPO, run, startServe, type RunResult, type ServeProcess } from '../helpers/proc.js';
import { DEFAULTS } from '../../src/config.js';
import { loadConfig } from '../../src/config/load.js';
import { main } from '../../src/main.js';
import type { Io } from '../../src/cli/args.js';

const README = readFileSync(path.join(REPO, 'README.md'), 'utf8');
const blocks = [...README.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
const runnable = blocks.slice(2);
const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { scripts: Record<string, string>; bin: Record<string, string> };

const today = () => Math.floor(Date.now() / 86_400_000);
const ddd = () => String((today() + 7) % 1000).padStart(3, '0');

function inDir(dir: string, sub: string): string[] {
  return readdirSync(path.join(dir, sub)).filter((f) => f.endsWith('.eml')).sort().map((f) => path.join(dir, sub, f));
}

describe('README: the two start commands', () => {
  it('the README starts with `npm install && npm start` and `npm test`', () => {
    expect(blocks[0]).toBe('npm install && npm start\n');
    expect(blocks[1]).toBe('npm test\n');
  });

  it('npm install builds dist/ (prepare → build → tsc) and npm start is the zero-config serve these tests run', () => {
    expect(pkg.scripts.prepare).toBe('npm run build');
    // dist/ is emptied first so npm pack never ships a file whose source is gone.
    expect(pkg.scripts.build).toBe("node -e \"require('node:fs').rmSync('dist',{recursive:true,force:true})\" && tsc -p tsconfig.build.json");
    expect(pkg.scripts.start).toBe('node bin/batv-proxy.js serve');
    expect(pkg.bin['batv-proxy']).toBe('bin/batv-proxy.js');
  });

  it('npm test runs the whole suite with vitest (this file included)', () => {
    expect(pkg.scripts.test).toBe('vitest run');
  });

  it('every `npm run NAME` the README mentions is a script in package.json', () => {
    const named = [...README.matchAll(/`npm run ([a-z0-9:-]+)`/g)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(0);
    expect(named.filter((n) => !(n in pkg.scripts))).toEqual([]);
  });

  it('the files the README points to exist', () => {
    for (const f of ['src/config.ts', 'scripts/install-peers.sh', 'bench/README.md', 'Dockerfile', 'docker-compose.yml', 'src/tags', 'src/policy', 'src/smtp', 'src/outbound.ts', 'src/inbound.ts', 'src/proxy.ts', 'src/cli']) {
      expect(() => statSync(path.join(REPO, f)), f).not.toThrow();
    }
  });
});

describe('README: the documented settings', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'batv-readme-cfg-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const io = (): Io & { text: () => string } => {
    let out = '';
    return { out: (t) => { out += t; }, err: (t) => { out += t; }, env: {}, now: () => Date.now(), text: () => out };
  };

  it('the YAML example is a valid config (check-config exit 0)', async () => {
    const yaml = /^```yaml\n([\s\S]*?)^```$/m.exec(README)![1]!;
    const file = path.join(dir, 'example.yaml');
    writeFileSync(file, yaml);
    const o = io();
    expect(await main(['check-config', '--config', file], o), o.text()).toBe(0);
    const c = await loadConfig(file);
    expect(c.domains).toEqual(['example.com', 'example.org']);
    expect(c.inbound.untaggedBounces).toBe('classify');
  });

  it('the environment examples override as the README says', async () => {
    const c = await loadConfig(null, {
      BATV_PROXY_OUTBOUND__RELAY: 'smtp://10.0.0.5:25',
      BATV_PROXY_DOMAINS: 'example.com,example.org',
      BATV_PROXY_INBOUND__UNTAGGED_BOUNCES: 'reject',
    });
    expect(c.outbound.relay).toEqual({ url: 'smtp://10.0.0.5:25', host: '10.0.0.5', port: 25, secure: false });
    expect(c.domains).toEqual(['example.com', 'example.org']);
    expect(c.inbound.untaggedBounces).toBe('reject');
  });

  it('the default listeners are the README\'s 127.0.0.1:2525 and 127.0.0.1:2526', () => {
    expect(DEFAULTS.outbound.listen).toBe('127.0.0.1:2525');
    expect(DEFAULTS.inbound.listen).toBe('127.0.0.1:2526');
  });

  it('the default of inbound.untaggedBounces is the one the README\'s table marks "(default)": classify', () => {
    const marked = /^\| `(\w+)` \(default\) \|/m.exec(README)?.[1];
    expect(marked).toBe('classify');
    expect(DEFAULTS.inbound.untaggedBounces).toBe(marked);
  });

  it('every verb the CLI section lists has --help (exit 0)', async () => {
    const list = /documents each verb: (.*?)\.\n/s.exec(README)![1]!;
    const verbs = [...list.matchAll(/`([a-z-]+)(?: [a-z|]+)?`/g)].map((m) => m[1]!);
    expect(verbs).toEqual(['serve', 'sign', 'verify', 'srs-forward', 'srs-reverse', 'keys', 'explain', 'check-config', 'doctor', 'hash-password', 'send-test']);
    for (const v of verbs) {
      const o = io();
      expect(await main([v, '--help'], o), v).toBe(0);
      expect(o.text(), v).toMatch(new RegExp(`^Usage: batv-proxy ${v}`));
    }
  });
});

describe('README: every ```sh block, run against `npm start`', () => {
  let dir: string;
  let proxy: ServeProcess | null = null;
  let outPort = 2525;
  let inPort = 2526;
  let metricsPort = 9425;
  let env: Record<string, string>;
  const results = new Map<number, RunResult>();

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-readme-'));
    if (!(await portFree(2525)) || !(await portFree(2526))) {
      outPort = await freePort([2525, 2526]);
      inPort = await freePort([2525, 2526, outPort]);
    }
    if (!(await portFree(9425))) metricsPort = await freePort([2525, 2526, 9425, outPort, inPort]);
    const overrides: Record<string, string> = {
      ...(outPort === 2525 && inPort === 2526 ? {} : {
        BATV_PROXY_OUTBOUND__LISTEN: `127.0.0.1:${outPort}`,
        BATV_PROXY_INBOUND__LISTEN: `127.0.0.1:${inPort}`,
      }),
      ...(metricsPort === 9425 ? {} : { BATV_PROXY_METRICS__LISTEN: `127.0.0.1:${metricsPort}` }),
    };
    env = cleanEnv(overrides);
    proxy = await startServe({ cwd: dir, env: overrides });
    expect(proxy.outbound.port).toBe(outPort);
    expect(proxy.inbound.port).toBe(inPort);
  });
  afterAll(async () => {
    await proxy?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const rewrite = (script: string): string => script
    .replaceAll('npx batv-proxy', `node '${BIN}'`)
    .replaceAll('127.0.0.1:2525', `127.0.0.1:${outPort}`)
    .replaceAll('127.0.0.1:2526', `127.0.0.1:${inPort}`)
    .replaceAll('127.0.0.1:9425', `127.0.0.1:${metricsPort}`)
    .replaceAll('/tmp/postsrsd.secret', path.join(dir, 'postsrsd.secret'));

  async function runBlock(i: number): Promise<RunResult> {
    const raw = await run('bash', ['-e', '-c', rewrite(runnable[i]!)], { cwd: dir, env, timeoutMs: 30_000 });
    results.set(i, raw);
    // grep prints the captured .eml lines with their CRLF; compare lines without the CR.
    return { ...raw, stdout: raw.stdout.replace(/\r\n/g, '\n') };
  }

  /** Index of the one runnable block whose text matches. */
  const blockWith = (re: RegExp): number => {
    const found = runnable.map((b, i) => (re.test(b) ? i : -1)).filter((i) => i >= 0);
    expect(found.length, String(re)).toBe(1);
    return found[0]!;
  };

  it('the zero-config start made keys/keyring.json, mode 0600, with a 43-character secret', () => {
    const file = path.join(dir, 'keys', 'keyring.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const { keys } = JSON.parse(readFileSync(file, 'utf8')) as { keys: Array<{ kid: string; k: string; status: string }> };
    expect(keys.map((k) => [k.kid, k.status])).toEqual([['0', 'active']]);
    expect(Buffer.from(keys[0]!.k, 'base64url').toString('latin1')).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('has the blocks this test knows, in this order', () => {
    expect(runnable.map((b) => b.split('\n')[0])).toEqual([
      'swaks --server 127.0.0.1:2525 --from alice@example.com --to bob@example.net --silent 2',
      'npx batv-proxy explain "$(grep -ho \'prvs=[^>]*\' mail/outbox/*.eml | tail -1)"',
      'swaks --server 127.0.0.1:2526 --from \'<>\' --to "$(grep -ho \'prvs=[^>]*\' mail/outbox/*.eml | tail -1)" --silent 2',
      'swaks --server 127.0.0.1:2525 --from carol@elsewhere.example --to bob@example.net --silent 2',
      'npx batv-proxy check-config',
      'npx batv-proxy keys list',
      'printf \'old-postsrsd-secret\\n\' > /tmp/postsrsd.secret',
      'npx batv-proxy sign user@example.com --secret secret --keynum 5 --now 2026-01-01T12:00:00Z',
    ]);
  });

  it('walk-through 1: swaks out through 2525; the captured Return-Path carries prvs=…; one Received: added', async () => {
    const r = await runBlock(blockWith(/--from alice@example\.com --to bob@example\.net/));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Return-Path: <prvs=0${ddd()}[0-9a-f]{6}=alice@example\\.com>\\n$`));
    const [eml] = inDir(dir, 'mail/outbox');
    const head = readFileSync(eml!, 'latin1').split('\r\n\r\n')[0]!;
    expect(head.split('\r\n').filter((l) => l.startsWith('Received:')).length).toBe(1);
    expect(head.split('\r\n').slice(0, 3)).toEqual([r.stdout.trim(), 'X-Envelope-To: <bob@example.net>', expect.stringMatching(/^Received: from /)]);
  });

  it('walk-through 2: explain says what the tag means and that a bounce to it is accepted', async () => {
    const r = await runBlock(blockWith(/explain/));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(new RegExp(`^address: prvs=0${ddd()}[0-9a-f]{6}=alice@example\\.com$`));
    expect(lines).toContain('scheme: BATV prvs (draft-levine-smtp-batv-01)');
    expect(lines).toContain('original: alice@example.com');
    expect(lines).toContainEqual(expect.stringMatching(/^signature: valid with key 0 \(active, thumbprint [A-Za-z0-9_-]{43}\)$/));
    expect(lines).toContain('verdict: accepted (age 0 days): a bounce is delivered to alice@example.com');
  });

  it('walk-through 3: the real bounce reaches alice@example.com with X-BATV-Proxy: batv-valid; key=0; the forged one gets the README\'s refusal', async () => {
    const r = await runBlock(blockWith(/--from '<>' --to alice@example\.com/));
    expect(r.code).toBe(0);
    const out = r.stdout + r.stderr;
    const grepped = r.stdout.split('\n').filter((l) => /^X-(BATV-Proxy|Envelope-To)/.test(l));
    expect(grepped).toEqual(['X-Envelope-To: <alice@example.com>', expect.stringMatching(/^X-BATV-Proxy: batv-valid; key=0; age=0d; by=/)]);
    const inbox = inDir(dir, 'mail/inbox');
    expect(inbox.length).toBe(1);
    expect(out).toContain('550 5.7.1 Delivery status report to an untagged address refused as backscatter (');
  });

  it('walk-through 4: forwarded mail gets SRS0 under srs.example.com', async () => {
    const r = await runBlock(blockWith(/--from carol@elsewhere\.example/));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^Return-Path: <SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=elsewhere\.example=carol@srs\.example\.com>\n$/);
  });

  it('configuration: check-config prints the effective config; doctor finds nothing to FAIL and sees the running proxy', async () => {
    const r = await runBlock(blockWith(/check-config/));
    expect(r.code).toBe(0);
    const json = r.stdout.slice(0, r.stdout.indexOf('\n}\n') + 3);
    const c = JSON.parse(json) as { domains: string[]; outbound: { listen: string }; inbound: { listen: string } };
    expect(c.domains).toEqual(['example.com']);
    expect(c.outbound.listen).toBe(`127.0.0.1:${outPort}`);
    const doctor = r.stdout.slice(json.length).split('\n').filter(Boolean);
    expect(doctor.filter((l) => l.startsWith('FAIL'))).toEqual([]);
    expect(doctor).toContain(`ok    outbound.listen: 127.0.0.1:${outPort} is served by a running batv-proxy`);
    expect(doctor).toContain(`ok    inbound.listen: 127.0.0.1:${inPort} is served by a running batv-proxy`);
  });

  it('keys: list, rotate, list shows key 1 signing and key 0 verify-only; the running proxy signs with key 1 without a signal', async () => {
    const r = await runBlock(blockWith(/keys rotate/));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.split('\n');
    expect(lines[0]).toBe('num  created                   age  role            thumbprint');
    expect(lines[1]).toMatch(/^0    \S{24}  0d   active \(signs\)  [A-Za-z0-9_-]{43}$/);
    expect(lines[2]).toMatch(/^Key 1 \([A-Za-z0-9_-]{43}\) signs from now on; older keys keep verifying for 22 days, then "keys retire" removes them$/);
    expect(lines[3]).toBe('num  created                   age  role                                  thumbprint');
    expect(lines[4]).toMatch(/^1    \S{24}  0d   active \(signs\)                        [A-Za-z0-9_-]{43}$/);
    expect(lines[5]).toMatch(/^0    \S{24}  0d   verify-only, retire after \d{4}-\d\d-\d\d  [A-Za-z0-9_-]{43}$/);
    expect(lines.length).toBe(7);

    // "the running proxy notices the change to the key files by itself"
    await new Promise((res) => setTimeout(res, 1000));
    const t = talk(outPort);
    await t.greeting;
    await t.cmd('EHLO readme.test');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data('Subject: after rotate\r\n\r\nHi.\r\n')).end).toMatch(/^250 /);
    await t.quit();
    const newest = inDir(dir, 'mail/outbox').map((f) => readFileSync(f, 'latin1')).find((m) => m.includes('Subject: after rotate'))!;
    expect(newest.split('\r\n')[0]).toMatch(new RegExp(`^Return-Path: <prvs=1${ddd()}[0-9a-f]{6}=alice@example\\.com>$`));
  });

  it('keys import: the postsrsd secret and the exim secret (key 3) are added as verify-only keys', async () => {
    const r = await runBlock(blockWith(/keys import/));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^Imported key \d \([A-Za-z0-9_-]{43}\), verify-only$/);
    expect(lines[1]).toMatch(/^Imported key 3 \([A-Za-z0-9_-]{43}\), verify-only$/);
    expect(lines.length).toBe(3);
  });

  it('the tag verbs print the values the README gives (sign → the tag verify takes; srs-forward → the address srs-reverse takes)', async () => {
    const i = blockWith(/srs-reverse/);
    const r = await runBlock(i);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const verifyArg = /verify (\S+)/.exec(runnable[i]!)![1]!;
    const reverseArg = /srs-reverse (\S+)/.exec(runnable[i]!)![1]!;
    expect(r.stdout).toBe(`${verifyArg}\nuser@example.com\n${reverseArg}\ntest@otherdomain.com\n`);
    expect(r.stdout).toBe('prvs=5461cd18bc=user@example.com\nuser@example.com\nSRS0=vmyz=2W=otherdomain.com=test@example.com\ntest@otherdomain.com\n');
  });

  it('ran every block', () => {
    expect([...results.keys()].sort()).toEqual(runnable.map((_b, i) => i));
  });
});
