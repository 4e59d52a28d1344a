/**
 * The `docker compose up` scenario with the processes started directly (no container engine here): the
 * built proxy configured by the same BATV_PROXY_* variables as the compose file's proxy service, a sink
 * standing in for Mailpit as both next hops, and docker/demo-sender.sh run as the compose file's sender
 * service runs it, pointed at the proxy with PROXY_HOST / OUT_PORT / IN_PORT and the same keys directory.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { startSink, type Sink } from '../helpers/sink.js';
import { BIN, cleanEnv, ensureBuilt, REPO, run, startServe, type RunResult, type ServeProcess } from '../helpers/proc.js';

type Obj = Record<string, unknown>;

describe('the compose scenario, processes started directly', () => {
  let dir: string;
  let keys: string;
  let mailpit: Sink;
  let proxy: ServeProcess | null = null;
  let demo: RunResult;
  let proxyEnv: Record<string, string>;
  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-demo-'));
    keys = path.join(dir, 'keys');
    mailpit = await startSink({ name: 'mailpit.test' });
    // The compose file's proxy environment, with Mailpit's address and the listen ports replaced for this
    // machine, plus the image's ENV (keys and capture dirs under the volume, here a temp dir).
    const compose = parseYaml(readFileSync(path.join(REPO, 'docker-compose.yml'), 'utf8')) as { services: Record<string, Obj> };
    const fromCompose = compose.services.proxy!.environment as Record<string, string>;
    proxyEnv = {
      ...fromCompose,
      BATV_PROXY_OUTBOUND__LISTEN: '127.0.0.1:0',
      BATV_PROXY_OUTBOUND__RELAY: fromCompose.BATV_PROXY_OUTBOUND__RELAY!.replace('mailpit:1025', `127.0.0.1:${mailpit.port}`),
      BATV_PROXY_INBOUND__LISTEN: '127.0.0.1:0',
      BATV_PROXY_INBOUND__MAILBOX: fromCompose.BATV_PROXY_INBOUND__MAILBOX!.replace('mailpit:1025', `127.0.0.1:${mailpit.port}`),
      BATV_PROXY_METRICS__LISTEN: '127.0.0.1:0',
      BATV_PROXY_KEYS__DIR: keys,
      BATV_PROXY_OUTBOUND__CAPTURE_DIR: path.join(dir, 'mail', 'outbox'),
      BATV_PROXY_INBOUND__CAPTURE_DIR: path.join(dir, 'mail', 'inbox'),
    };
    proxy = await startServe({ cwd: dir, env: proxyEnv });
    demo = await run('sh', [path.join(REPO, 'docker', 'demo-sender.sh')], {
      cwd: dir,
      env: cleanEnv({
        PROXY_HOST: '127.0.0.1',
        OUT_PORT: String(proxy.outbound.port),
        IN_PORT: String(proxy.inbound.port),
        BATV_PROXY_KEYS__DIR: keys,
        DEMO_CLI: `node ${BIN}`,
      }),
      timeoutMs: 30_000,
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await mailpit.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('uses the compose file\'s settings: our domain, the SRS domain, untagged bounces refused', () => {
    expect(proxyEnv.BATV_PROXY_DOMAINS).toBe('example.com');
    expect(proxyEnv.BATV_PROXY_SRS__DOMAIN).toBe('srs.example.com');
    expect(proxyEnv.BATV_PROXY_INBOUND__UNTAGGED_BOUNCES).toBe('reject');
    expect(proxy!.lines.find((l) => l.msg === 'created a new keyring')).toMatchObject({ key: 0, file: path.join(keys, 'keyring.json') });
  });

  it('the demo script exits 0 and says what happened at each step (the refusal of step 3 on stderr)', () => {
    expect(demo.stderr).toBe('send-test: 550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused\n');
    expect(demo.code).toBe(0);
    const out = demo.stdout.split('\n');
    expect(out[0]).toBe('1. alice@example.com sends a message out: the proxy signs the envelope sender');
    expect(out[1]).toBe('250 Ok: queued as sink');
    expect(out[2]).toMatch(/^2\. a real bounce comes back to the signed address prvs=0\d{3}[0-9a-f]{6}=alice@example\.com: accepted and unwrapped$/);
    expect(out[3]).toBe('250 Ok: queued as sink');
    expect(out[4]).toBe('3. a forged bounce to the bare address (backscatter) is refused');
    expect(out[5]).toBe('done: Mailpit shows the signed envelope sender and the unwrapped bounce with its X-BATV-Proxy verdict');
  });

  it('"Mailpit" got the signed message and the unwrapped bounce, and nothing else', () => {
    const [out, bounce] = mailpit.messages;
    expect(mailpit.messages.length).toBe(2);
    expect(out!.mailFrom).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=alice@example\.com$/);
    expect(out!.rcptTo).toEqual(['bob@example.net']);
    expect(out!.body.toString('latin1')).toMatch(/\r\nSubject: Hello from the demo\r\n/);
    expect(bounce!.mailFrom).toBe('');
    expect(bounce!.rcptTo).toEqual(['alice@example.com']);
    expect(bounce!.body.toString('latin1')).toMatch(/\r\nX-BATV-Proxy: batv-valid; key=0; age=0d; by=[^\r]+\r\n/);
    expect(bounce!.body.toString('latin1')).toMatch(/\r\nSubject: Undelivered Mail Returned to Sender\r\n/);
  });

  it('refused the forged bounce at RCPT with the 550 5.7.1 backscatter reply', async () => {
    const refused = await proxy!.waitForLine((l) => l.msg === 'transaction' && l.role === 'inbound' && (l.rcpts as Array<{ rcpt: string }>)[0]?.rcpt === 'alice@example.com', { timeoutMs: 3000 });
    expect(refused.rcpts).toEqual([{
      rcpt: 'alice@example.com',
      to: 'alice@example.com',
      verdict: 'untagged-bounce',
      reply: '550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused',
    }]);
  });
});
