/**
 * SIGTERM behind a load balancer (src/cli/serve.ts, src/proxy.ts drain()): once anything has asked
 * /readyz, SIGTERM first makes /readyz answer 503 "draining" while both listeners keep accepting and
 * serving for 2 s (said in the log line), then closes them as before. Nothing has probed /readyz (no
 * balancer watching), or SIGINT: the listeners close at once, as before. A SIGINT during the drain ends
 * it at once. The real process (`node bin/batv-proxy.js serve`), a real smtp-server sink as the next hop.
 * test/scale/haproxy.test.ts shows the same with HAProxy marking the replica DOWN.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectOutcome, ensureBuilt, freePort, startServe, type LogLine, type ServeProcess } from '../helpers/proc.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk } from '../helpers/talk.js';

const DRAINING = 'draining: /readyz answers 503 "draining"; listeners keep accepting for 2000 ms, then close';
const STOPPING = 'stopping: no new connections; running transactions may finish';

let dir: string;
let sink: Sink;
let p: ServeProcess | null = null;
let config: Record<string, unknown>;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(path.join(os.tmpdir(), 'batv-drain-'));
  sink = await startSink();
  const hop = `smtp://127.0.0.1:${sink.port}`;
  config = {
    domains: ['example.com'],
    hostname: 'proxy.test',
    keys: { dir: path.join(dir, 'keys') },
    outbound: { listen: '127.0.0.1:0', relay: hop, allowNetworks: ['127.0.0.0/8'] },
    inbound: { listen: '127.0.0.1:0', mailbox: hop },
    timeouts: { connectMs: 2000, greetingMs: 2000, commandMs: 5000, dataMs: 10_000, clientIdleMs: 20_000 },
    log: { level: 'info' },
  };
});
afterEach(async () => {
  await p?.stop();
  p = null;
});
afterAll(async () => {
  await sink.close();
  rmSync(dir, { recursive: true, force: true });
});

async function serve(): Promise<{ proc: ServeProcess; readyz: () => Promise<[number, string]> }> {
  const port = await freePort();
  const file = path.join(dir, `config-${port}.json`);
  writeFileSync(file, JSON.stringify({ ...config, metrics: { listen: `127.0.0.1:${port}` } }));
  const proc = await startServe({ args: ['--config', file], cwd: dir });
  p = proc;
  return { proc, readyz: async () => { const r = await fetch(`http://127.0.0.1:${port}/readyz`); return [r.status, await r.text()]; } };
}

/** A complete outbound message on a new connection; resolves with the final reply. */
async function oneMessage(port: number, subject: string): Promise<string> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 proxy\.test /);
  expect(await t.cmd('EHLO client.test')).toMatch(/^250-proxy\.test /);
  expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
  expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
  const end = (await t.data(`Subject: ${subject}\r\n\r\nHello.\r\n`)).end;
  await t.quit();
  return end;
}

const msgs = (proc: ServeProcess, from: number): string[] => proc.lines.slice(from).map((l: LogLine) => String(l.msg));

describe('SIGTERM once /readyz has been probed', () => {
  it('/readyz answers 503 "draining" at once; both listeners keep accepting and relaying until the drain ends, then close; exit 0', async () => {
    const { proc, readyz } = await serve();
    expect(await readyz()).toEqual([200, 'ready\n']);
    const n = proc.lines.length;
    proc.signal('SIGTERM');
    expect(await proc.waitForLine((l) => l.msg === DRAINING, { from: n })).toMatchObject({ signal: 'SIGTERM', drain_ms: 2000 });
    expect(await readyz()).toEqual([503, 'draining\n']);
    // Still serving: a new connection gets a whole transaction relayed, on both listeners.
    sink.reset();
    expect(await oneMessage(proc.outbound.port, 'during the drain')).toBe('250 Ok: queued as sink');
    expect(await connectOutcome(proc.inbound.port)).toBe('connected');
    expect(msgs(proc, n)).not.toContain(STOPPING);
    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=alice@example\.com$/);

    await proc.waitForLine((l) => l.msg === STOPPING, { from: n });
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    expect(msgs(proc, n).filter((x) => x === DRAINING || x === STOPPING || x === 'stopped')).toEqual([DRAINING, STOPPING, 'stopped']);
    expect(await connectOutcome(proc.outbound.port)).toBe('ECONNREFUSED');
    expect(proc.stderr()).toBe('');
  });

  it('SIGINT during the drain closes at once', async () => {
    const { proc, readyz } = await serve();
    expect((await readyz())[0]).toBe(200);
    const n = proc.lines.length;
    proc.signal('SIGTERM');
    await proc.waitForLine((l) => l.msg === DRAINING, { from: n });
    proc.signal('SIGINT');
    expect(await proc.waitForLine((l) => l.msg === STOPPING, { from: n })).toMatchObject({ signal: 'SIGINT' });
    expect(await proc.exited).toEqual({ code: 0, signal: null });
  });
});

describe('SIGTERM with nothing probing /readyz', () => {
  it('closes at once, as before: no drain line, the listeners refuse', async () => {
    const { proc } = await serve();
    const n = proc.lines.length;
    proc.signal('SIGTERM');
    expect(await proc.waitForLine((l) => l.msg === STOPPING, { from: n })).toMatchObject({ signal: 'SIGTERM' });
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    expect(msgs(proc, n)).not.toContain(DRAINING);
    expect(await connectOutcome(proc.outbound.port)).toBe('ECONNREFUSED');
  });
});
