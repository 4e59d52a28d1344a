/**
 * Starts a proxy for end-to-end tests: listeners on 127.0.0.1 port 0, keys given directly (no files),
 * a fixed clock, the next hops pointed wherever the test says.
 */
import { fixedClock } from '../../src/clock.js';
import { merge, parseConfig, type Config } from '../../src/config.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey, type TagKeyring } from '../../src/tags/keyring.js';
import { createLogger, type Logger } from '../../src/log.js';
import { Writable } from 'node:stream';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const TEST_SECRET = 'test-secret-0';
export const T0 = Date.parse('2026-01-01T12:00:00Z');

export function testKeyring(...secrets: string[]): TagKeyring {
  const list = secrets.length ? secrets : [TEST_SECRET];
  return makeKeyring(list.map((s, i) => tagKey(i, utf8(s))));
}

/** One capture directory per test process (used only when a test leaves a next hop unset). */
let captureRoot: string | undefined;
function captureDir(kind: string): string {
  captureRoot ??= mkdtempSync(path.join(os.tmpdir(), 'batv-capture-'));
  return path.join(captureRoot, kind);
}

export function testConfig(over: Record<string, unknown> = {}): Config {
  return parseConfig(merge({
    domains: ['example.com', 'example.org'],
    hostname: 'proxy.test',
    srs: { domain: 'srs.example.net' },
    outbound: { listen: '127.0.0.1:0', relay: null, allowNetworks: ['127.0.0.0/8', '::1/128'], captureDir: captureDir('outbox') },
    // Tests refuse untagged bounces at RCPT unless they say otherwise (the shipped default is classify).
    inbound: { listen: '127.0.0.1:0', mailbox: null, captureDir: captureDir('inbox'), untaggedBounces: 'reject' },
    timeouts: { connectMs: 1000, greetingMs: 1000, commandMs: 1000, dataMs: 2000, clientIdleMs: 5000 },
    // No metrics listener unless a test asks for one (the shipped default, 127.0.0.1:9425, would collide).
    metrics: { listen: null },
    log: { level: 'silent' },
  }, over));
}

/** Log lines a test can inspect (JSON objects). */
export function captureLog(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk: Buffer, _e, cb) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } });
  return { log: createLogger('info', sink as never), lines };
}

export async function startTestProxy(over: Record<string, unknown> = {}, opts: { keyring?: TagKeyring; now?: number; log?: Logger } = {}): Promise<{ proxy: Proxy; clock: ReturnType<typeof fixedClock> }> {
  const clock = fixedClock(opts.now ?? T0);
  const proxy = await startProxy(testConfig(over), { clock, keyring: opts.keyring ?? testKeyring(), ...(opts.log ? { log: opts.log } : {}) });
  return { proxy, clock };
}
