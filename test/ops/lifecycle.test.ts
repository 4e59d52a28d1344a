/**
 * The real process (`node bin/batv-proxy.js serve --config FILE`) under the signals the README documents:
 * SIGTERM drains a transaction that is in the middle of DATA, SIGHUP swaps keys without losing a bounce
 * (and keeps the old config when the new one is broken), and a `keys rotate` is picked up without a signal.
 * The next hop and the mailbox host are a real smtp-server sink.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { cli, connectOutcome, ensureBuilt, startServe, type ServeProcess } from '../helpers/proc.js';

const GRACE_MS = 5000;
const RELOAD_DONE = 'reload done';
const RELOAD_REFUSED = 'reload refused; still running on the previous config and keys';

function configFor(dir: string, sink: Sink, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    domains: ['example.com'],
    hostname: 'proxy.test',
    srs: { domain: 'srs.example.net' },
    keys: { dir: path.join(dir, 'keys') },
    outbound: { listen: '127.0.0.1:0', relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['127.0.0.0/8'] },
    inbound: { listen: '127.0.0.1:0', mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject' },
    timeouts: { connectMs: 2000, greetingMs: 2000, commandMs: GRACE_MS, dataMs: 10_000, clientIdleMs: 20_000 },
    log: { level: 'info' },
    metrics: { listen: null }, // not the default 127.0.0.1:9425: test files run in parallel
    ...over,
  };
}

async function ehlo(port: number): Promise<Talk> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 proxy\.test /);
  expect(await t.cmd('EHLO client.test')).toMatch(/^250-proxy\.test /);
  return t;
}

/** connectOutcome, retried for up to 500 ms until the connection is refused. */
async function refusedSoon(port: number): Promise<string> {
  const deadline = Date.now() + 500;
  for (;;) {
    const r = await connectOutcome(port);
    if (r !== 'connected' || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 20));
  }
}

/** One complete outbound message from alice@example.com; resolves with the sink's MAIL FROM. */
async function sendOut(p: ServeProcess, sink: Sink, subject: string): Promise<string> {
  sink.reset();
  const t = await ehlo(p.outbound.port);
  expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
  expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
  expect((await t.data(`Subject: ${subject}\r\n\r\nHello.\r\n`)).end).toBe('250 Ok: queued as sink');
  await t.quit();
  const [m] = await sink.waitForMessages(1);
  return m!.mailFrom;
}

/** One serve process per describe block, with its own directory and sink; `get()` inside the tests. */
function servedFor(prefix: string): { get(): { p: ServeProcess; sink: Sink } } {
  let dir: string;
  let sink: Sink;
  let p: ServeProcess | null = null;
  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), prefix));
    sink = await startSink({ name: 'sink.test' });
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify(configFor(dir, sink)));
    p = await startServe({ args: ['--config', path.join(dir, 'config.json')], cwd: dir });
  });
  afterAll(async () => {
    await p?.stop();
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { get: () => ({ p: p!, sink }) };
}

describe('SIGTERM drains a transaction in the middle of DATA', () => {
  const served = servedFor('batv-life-a-');

  it('finishes the message with the next hop\'s 250, refuses new connections, and exits 0 within the grace', async () => {
    const { p: proc, sink } = served.get();
    const t = await ehlo(proc.outbound.port);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    t.write('DATA\r\n');
    expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
    t.write('Subject: drain\r\n\r\nfirst half\r\n');

    const n = proc.lines.length;
    const signalled = Date.now();
    proc.signal('SIGTERM');
    expect(await proc.waitForLine((l) => l.msg === 'stopping: no new connections; running transactions may finish', { from: n })).toMatchObject({ signal: 'SIGTERM' });
    // The line is written just before the listeners close, so allow the proxy a moment to get there.
    expect(await refusedSoon(proc.outbound.port)).toBe('ECONNREFUSED');
    expect(await refusedSoon(proc.inbound.port)).toBe('ECONNREFUSED');

    t.write('second half\r\n.\r\n');
    expect(await t.reply()).toBe('250 Ok: queued as sink');
    await t.quit();

    const [m] = await sink.waitForMessages(1);
    expect(m!.mailFrom).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=alice@example\.com$/);
    expect(m!.rcptTo).toEqual(['bob@example.net']);
    expect(m!.body.toString('latin1')).toMatch(/\r\nSubject: drain\r\n\r\nfirst half\r\nsecond half\r\n$/);

    const exit = await Promise.race([proc.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), GRACE_MS + 2000))]);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(Date.now() - signalled).toBeLessThan(GRACE_MS);
    expect(proc.lines.at(-1)).toMatchObject({ msg: 'stopped' });
    expect(proc.stderr()).toBe('');
  });
});

describe('SIGTERM between MAIL and DATA, then QUIT (issue 13.5)', () => {
  const served = servedFor('batv-life-quit-');

  it('the transaction under way finishes (RCPT, DATA), its QUIT gets 221; another connection\'s next MAIL gets 421 4.3.2', async () => {
    const { p: proc, sink } = served.get();
    const t = await ehlo(proc.outbound.port);
    const other = await ehlo(proc.outbound.port);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await other.cmd('MAIL FROM:<carol@example.com>')).toBe('250 Accepted');
    const n = proc.lines.length;
    proc.signal('SIGTERM');
    await proc.waitForLine((l) => l.msg === 'stopping: no new connections; running transactions may finish', { from: n });
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await t.data('Subject: after SIGTERM\r\n\r\nHello.\r\n')).end).toBe('250 Ok: queued as sink');
    expect(await t.cmd('QUIT')).toMatch(/^221 /);
    // The other client finishes its transaction too, then tries a new one: refused, connection closed.
    expect(await other.cmd('RCPT TO:<dave@example.net>')).toBe('250 Accepted');
    expect((await other.data('Subject: second\r\n\r\nHi.\r\n')).end).toBe('250 Ok: queued as sink');
    expect(await other.cmd('MAIL FROM:<carol@example.com>')).toBe('421 4.3.2 Service shutting down; try again later');
    const got = await sink.waitForMessages(2);
    expect(got.map((m) => m.rcptTo[0]).sort()).toEqual(['bob@example.net', 'dave@example.net']);
    const exit = await Promise.race([proc.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), GRACE_MS + 2000))]);
    expect(exit).toEqual({ code: 0, signal: null });
  });
});

describe('SIGTERM with an idle client connection (no transaction running)', () => {
  const served = servedFor('batv-life-idle-');

  it('closes the idle session at once with the proxy\'s 421 and exits without waiting out the grace', async () => {
    const { p: proc } = served.get();
    const idle = await ehlo(proc.outbound.port); // e.g. a sending MTA's connection cache
    const signalled = Date.now();
    proc.signal('SIGTERM');
    const bye = await idle.reply().catch((e: Error) => e.message);
    const byeAfter = Date.now() - signalled;
    const exit = await Promise.race([proc.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), GRACE_MS + 2000))]);
    const exitAfter = Date.now() - signalled;
    expect({ exit, bye, byeWithin1s: byeAfter < 1000, exitWithin1s: exitAfter < 1000 }).toEqual({
      exit: { code: 0, signal: null },
      bye: '421 4.3.2 Service shutting down; try again later',
      byeWithin1s: true,
      exitWithin1s: true,
    });
  });
});

describe('reloads: SIGHUP and the key-file watch', () => {
  let dir: string;
  let file: string;
  let sink: Sink;
  let p: ServeProcess | null = null;
  let goodConfig: string;
  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-life-b-'));
    file = path.join(dir, 'config.json');
    sink = await startSink({ name: 'sink.test' });
    goodConfig = JSON.stringify(configFor(dir, sink));
    writeFileSync(file, goodConfig);
    p = await startServe({ args: ['--config', file], cwd: dir });
    expect(p.lines.find((l) => l.msg === 'created a new keyring')).toMatchObject({ key: 0, file: path.join(dir, 'keys', 'keyring.json') });
  });
  afterAll(async () => {
    await p?.stop();
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGHUP after "keys rotate": a bounce to a tag of the old key is accepted (also one in flight), and MAIL FROM carries the new key', async () => {
    const proc = p!;
    const oldTag = await sendOut(proc, sink, 'before rotation');
    expect(oldTag).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=alice@example\.com$/);

    // A bounce to the old tag whose RCPT was accepted before the reload and whose DATA comes after it.
    sink.reset();
    const inFlight = await ehlo(proc.inbound.port);
    expect(await inFlight.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await inFlight.cmd(`RCPT TO:<${oldTag}>`)).toBe('250 Accepted');

    const rotated = await cli(['keys', 'rotate', '--dir', path.join(dir, 'keys')], { cwd: dir });
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(/^Key 1 \([A-Za-z0-9_-]{43}\) signs from now on; older keys keep verifying for 22 days, then "keys retire" removes them\n$/);
    const n = proc.lines.length;
    proc.signal('SIGHUP');
    const reload = await proc.waitForLine((l) => l.why === 'SIGHUP', { from: n });

    expect((await inFlight.data('Subject: Undelivered Mail Returned to Sender\r\n\r\nin flight\r\n')).end).toBe('250 Ok: queued as sink');
    await inFlight.quit();
    const [bounce] = await sink.waitForMessages(1);
    expect(bounce!.mailFrom).toBe('');
    expect(bounce!.rcptTo).toEqual(['alice@example.com']);

    // A new bounce to the old tag after the reload.
    sink.reset();
    const after = await ehlo(proc.inbound.port);
    expect(await after.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await after.cmd(`RCPT TO:<${oldTag}>`)).toBe('250 Accepted');
    expect((await after.data('Subject: Undelivered Mail Returned to Sender\r\n\r\nafter\r\n')).end).toBe('250 Ok: queued as sink');
    await after.quit();
    const [bounce2] = await sink.waitForMessages(1);
    expect(bounce2!.rcptTo).toEqual(['alice@example.com']);
    expect(bounce2!.body.toString('latin1')).toMatch(/\r\nX-BATV-Proxy: batv-valid; key=0; age=0d; by=proxy\.test\r\n/);

    // New mail is signed with key 1.
    expect(await sendOut(proc, sink, 'after rotation')).toMatch(/^prvs=1\d{3}[0-9a-f]{6}=alice@example\.com$/);
    expect(reload).toMatchObject({ msg: RELOAD_DONE, why: 'SIGHUP' });
  });

  it('SIGHUP with a broken config file keeps the old config running and logs the refusal with every problem', async () => {
    const proc = p!;
    writeFileSync(file, JSON.stringify({ ...JSON.parse(goodConfig), domains: [], outbound: { listen: '127.0.0.1:0', relay: 'http://mx.example.net' } }));
    let n = proc.lines.length;
    proc.signal('SIGHUP');
    const refused = await proc.waitForLine((l) => l.why === 'SIGHUP', { from: n });
    expect(refused).toMatchObject({
      level: 50,
      msg: RELOAD_REFUSED,
      why: 'SIGHUP',
      err: `Invalid configuration ${file}:\n  - domains: list at least one domain of ours\n  - outbound.relay: "http://mx.example.net" must start with smtp:// or smtps://`,
    });

    writeFileSync(file, '{ "domains": [ "example.com" ');
    n = proc.lines.length;
    proc.signal('SIGHUP');
    const unparsable = await proc.waitForLine((l) => l.why === 'SIGHUP', { from: n });
    expect(unparsable.msg).toBe(RELOAD_REFUSED);
    expect(String(unparsable.err)).toBe(`Invalid configuration ${file}:\n  - cannot parse ${file}:1:30: Flow sequence in block collection must be sufficiently indented and end with a ]`);

    // Still relaying, signing for example.com, to the same next hop.
    expect(await sendOut(proc, sink, 'after a refused reload')).toMatch(/^prvs=\d{4}[0-9a-f]{6}=alice@example\.com$/);
    writeFileSync(file, goodConfig);
  });

  it('"keys rotate" without any signal: within about a second new mail is signed with the new key', async () => {
    const proc = p!;
    const n = proc.lines.length;
    const rotated = await cli(['keys', 'rotate', '--dir', path.join(dir, 'keys')], { cwd: dir });
    expect(rotated.code).toBe(0);
    const next = Number(/^Key (\d) /.exec(rotated.stdout)?.[1]);
    const t0 = Date.now();
    const line = await proc.waitForLine((l) => l.why === 'keys changed', { from: n, timeoutMs: 2000 }).catch(() => null);
    const waited = Date.now() - t0;
    expect(await sendOut(proc, sink, 'after the second rotation')).toMatch(new RegExp(`^prvs=${next}\\d{3}[0-9a-f]{6}=alice@example\\.com$`));
    expect(line).toMatchObject({ msg: RELOAD_DONE, why: 'keys changed' });
    expect(waited).toBeLessThan(1500);
  });
});
