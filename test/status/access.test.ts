/**
 * Protection of the metrics listener: with metrics.token (or tokenFile) and/or metrics.usersFile every path
 * but /healthz and /readyz answers 401 without credentials and 200 with them; the token never shows in
 * check-config's output; bad settings are refused with the setting named.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../src/auth.js';
import { ConfigError, parseConfig } from '../../src/config.js';
import { redacted } from '../../src/config/load.js';
import type { Proxy } from '../../src/proxy.js';
import { startTestProxy } from '../helpers/proxy.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';

const TOKEN = 'status-token-0123456789abcdef';
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

async function get(proxy: Proxy, p: string, authorization?: string): Promise<{ status: number; challenge: string | null }> {
  const a = proxy.metricsAddress!;
  const r = await fetch(`http://${a.host}:${a.port}${p}`, { headers: authorization ? { authorization } : {} });
  await r.arrayBuffer();
  return { status: r.status, challenge: r.headers.get('www-authenticate') };
}

describe('metrics.tokenFile and metrics.usersFile', () => {
  let dir: string;
  let proxy: Proxy;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-metrics-access-'));
    writeFileSync(path.join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
    writeFileSync(path.join(dir, 'users'), `# admins\nops:${await hashPassword('correct horse', 1024)}\n`, { mode: 0o600 });
    ({ proxy } = await startTestProxy({ metrics: { listen: '127.0.0.1:0', tokenFile: path.join(dir, 'token'), usersFile: path.join(dir, 'users') } }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    rmSync(dir, { recursive: true, force: true });
  });

  it('401 with a challenge on /, /status.json, /metrics and the assets without credentials', async () => {
    for (const p of ['/', '/status.json', '/metrics', '/assets/status.js', '/assets/uplot/uPlot.iife.min.js', '/nothing']) {
      expect(await get(proxy, p), p).toEqual({ status: 401, challenge: 'Bearer realm="batv-proxy", Basic realm="batv-proxy", charset="UTF-8"' });
    }
  });

  it('200 with the bearer token, with the token as a basic-auth password, and with a user of the users file', async () => {
    for (const auth of [`Bearer ${TOKEN}`, basic('anyone', TOKEN), basic('ops', 'correct horse')]) {
      expect((await get(proxy, '/status.json', auth)).status).toBe(200);
      expect((await get(proxy, '/metrics', auth)).status).toBe(200);
    }
  });

  it('401 with a wrong token, a wrong password or an unknown user', async () => {
    for (const auth of [`Bearer ${TOKEN}x`, 'Bearer ', basic('ops', 'wrong'), basic('nobody', 'correct horse'), 'Digest abc', basic('ops', `${TOKEN.slice(1)}`)]) {
      expect((await get(proxy, '/status.json', auth)).status, auth).toBe(401);
    }
  });

  it('/healthz and /readyz stay open for health checks and load balancers', async () => {
    expect((await get(proxy, '/healthz')).status).toBe(200);
    expect((await get(proxy, '/readyz')).status).toBe(200);
  });
});

describe('without protection', () => {
  let proxy: Proxy;
  beforeAll(async () => { ({ proxy } = await startTestProxy({ metrics: { listen: '127.0.0.1:0' } })); });
  afterAll(async () => { await closeTestProxy(proxy); });

  it('every path answers without credentials (the listener is on loopback by default)', async () => {
    expect(await get(proxy, '/status.json')).toEqual({ status: 200, challenge: null });
    expect(await get(proxy, '/')).toEqual({ status: 200, challenge: null });
  });
});

describe('metrics settings', () => {
  it('the shipped default is 127.0.0.1:9425 with no protection', () => {
    expect(parseConfig({}).metrics).toEqual({ listen: '127.0.0.1:9425', token: null, tokenFile: null, usersFile: null });
  });

  it('check-config\'s view hides the token', () => {
    const r = redacted(parseConfig({ metrics: { token: TOKEN } })) as { metrics: Record<string, unknown> };
    expect(r.metrics).toEqual({ listen: '127.0.0.1:9425', token: '***', tokenFile: null, usersFile: null });
    expect(JSON.stringify(r)).not.toContain(TOKEN);
  });

  it('refuses a short token, token and tokenFile together, and names the setting', () => {
    const problems = (over: unknown) => { try { parseConfig(over); return []; } catch (e) { return (e as ConfigError).problems; } };
    expect(problems({ metrics: { token: 'short' } })).toEqual(['metrics.token: must be at least 16 characters (e.g. from "openssl rand -base64 32")']);
    expect(problems({ metrics: { token: TOKEN, tokenFile: '/run/secrets/t' } })).toEqual(['metrics: set token or tokenFile, not both']);
    expect(problems({ metrics: { usersFile: '' } })).toEqual(['metrics.usersFile: must be a non-empty string or null (found "")']);
  });

  it('a token file that cannot be read stops the start with the setting and file named', async () => {
    await expect(startTestProxy({ metrics: { listen: '127.0.0.1:0', tokenFile: '/nonexistent/token' } }))
      .rejects.toThrow('metrics.tokenFile: cannot read /nonexistent/token: ENOENT');
  });
});
