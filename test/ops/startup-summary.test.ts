/**
 * `serve` on a terminal: a summary in plain words before the JSON log lines (listeners, where mail goes,
 * the status page URL, the first swaks command); with stdout a pipe, JSON lines only. The function is
 * tested directly; one real process runs under a pseudo-terminal (util-linux `script`).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { startupSummary } from '../../src/cli/serve.js';
import { BIN, cleanEnv, ensureBuilt, freePort, startServe } from '../helpers/proc.js';

describe('startupSummary', () => {
  it('zero-config: capture folders (not the capture port), the status page, swaks, and the example-domains note', () => {
    const text = startupSummary({
      config: parseConfig({}),
      outbound: { host: '127.0.0.1', port: 2525 }, inbound: { host: '127.0.0.1', port: 2526 }, metrics: { host: '127.0.0.1', port: 9425 },
      outbox: 'mail/outbox', inbox: 'mail/inbox', cwd: '/srv/batv',
    });
    expect(text).toBe([
      'batv-proxy is running.',
      '',
      '  outbound  127.0.0.1:2525  senders of example.com get BATV tags; other senders get SRS under srs.example.com',
      '            mail goes to /srv/batv/mail/outbox/ (as .eml files; set outbound.relay to relay instead)',
      '  inbound   127.0.0.1:2526  bounces for example.com, srs.example.com; forged ones are refused',
      '            mail goes to /srv/batv/mail/inbox/ (as .eml files; set inbound.mailbox to relay instead)',
      '  status    http://127.0.0.1:9425/  (also /metrics, /healthz, /readyz)',
      '',
      '  Try:      swaks --server 127.0.0.1:2525 --from alice@example.com --to bob@example.net',
      '',
      '  Note: domains is the example default (example.com). Set domains (and srs.domain) to your own,',
      '  or mail from your own domain gets SRS instead of BATV.',
      '',
      '',
    ].join('\n'));
  });

  it('own domains and next hops: the URLs, wildcard listeners reached on loopback, no note; metrics off said so', () => {
    const text = startupSummary({
      config: parseConfig({ domains: ['corp.example'], srs: { domain: 'srs.corp.example' }, outbound: { relay: 'smtp://mx.internal:25' }, inbound: { mailbox: 'smtp://mail.internal:25' }, metrics: { listen: null } }),
      outbound: { host: '0.0.0.0', port: 2525 }, inbound: { host: '::', port: 2526 }, metrics: null,
      outbox: null, inbox: null, cwd: '/',
    }).split('\n');
    expect(text.slice(2, 9)).toEqual([
      '  outbound  0.0.0.0:2525  senders of corp.example get BATV tags; other senders get SRS under srs.corp.example',
      '            mail goes to smtp://mx.internal:25',
      '  inbound   [::]:2526  bounces for corp.example, srs.corp.example; forged ones are refused',
      '            mail goes to smtp://mail.internal:25',
      '  status    off (metrics.listen is null)',
      '',
      '  Try:      swaks --server 127.0.0.1:2525 --from alice@corp.example --to bob@example.net',
    ]);
    expect(text.join('\n')).not.toContain('Note:');
  });
});

describe('serve under a pseudo-terminal and with stdout a pipe', () => {
  let dir: string;
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-summary-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('on a terminal the summary comes first, then the JSON lines', async () => {
    const o = await freePort();
    const i = await freePort([o]);
    const ports = { o, i, m: await freePort([o, i]) };
    const env = cleanEnv({
      BATV_PROXY_OUTBOUND__LISTEN: `127.0.0.1:${ports.o}`, BATV_PROXY_INBOUND__LISTEN: `127.0.0.1:${ports.i}`, BATV_PROXY_METRICS__LISTEN: `127.0.0.1:${ports.m}`,
      TERM: 'dumb',
    });
    const pidFile = path.join(dir, 'serve.pid');
    // `exec` makes the shell's PID the node process's, so it can be stopped by that PID.
    const child = spawn('script', ['-qfec', `echo $$ > '${pidFile}'; exec '${process.execPath}' '${BIN}' serve`, '/dev/null'], { cwd: dir, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const deadline = Date.now() + 15_000;
    while (!/"msg":"inbound listening"/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    process.kill(pid, 'SIGTERM');
    expect(await exited).toBe(0);
    const lines = out.replace(/\r\n/g, '\n').split('\n');
    expect(lines.slice(0, 10)).toEqual([
      'batv-proxy is running.',
      '',
      '  outbound  127.0.0.1:' + ports.o + '  senders of example.com get BATV tags; other senders get SRS under srs.example.com',
      `            mail goes to ${dir}/mail/outbox/ (as .eml files; set outbound.relay to relay instead)`,
      '  inbound   127.0.0.1:' + ports.i + '  bounces for example.com, srs.example.com; forged ones are refused',
      `            mail goes to ${dir}/mail/inbox/ (as .eml files; set inbound.mailbox to relay instead)`,
      `  status    http://127.0.0.1:${ports.m}/  (also /metrics, /healthz, /readyz)`,
      '',
      `  Try:      swaks --server 127.0.0.1:${ports.o} --from alice@example.com --to bob@example.net`,
      '',
    ]);
    const json = lines.filter((l) => l.startsWith('{'));
    expect(json.map((l) => (JSON.parse(l) as { msg: string }).msg)).toContain('created a new keyring');
    expect(lines.findIndex((l) => l.startsWith('{'))).toBeGreaterThan(10);
  }, 30_000);

  it('with stdout a pipe: JSON lines only, no summary', async () => {
    const p = await startServe({ cwd: dir, env: { BATV_PROXY_OUTBOUND__LISTEN: '127.0.0.1:0', BATV_PROXY_INBOUND__LISTEN: '127.0.0.1:0', BATV_PROXY_METRICS__LISTEN: '127.0.0.1:0' } });
    await p.stop();
    expect(p.lines.filter((l) => 'unparsed' in l)).toEqual([]);
  });
});
