/**
 * AUTH brute force on the outbound listener is slowed: after 3 free failures from one client address,
 * each further attempt waits 1 s more (src/auth.ts). Measured over the wire with real sockets; client
 * addresses are picked on the loopback net (127.x.y.z) so one address's penalty is visibly its own.
 * Only lower bounds on time are asserted (a slow machine cannot make these fail).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../src/auth.js';
import type { Proxy } from '../../src/proxy.js';
import { startTestProxy } from '../helpers/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';

/** A minimal line client bound to a chosen local address. */
function client(port: number, localAddress: string) {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress });
  socket.setNoDelay(true);
  let buf = '';
  const waiting: Array<(l: string) => void> = [];
  const ready: string[] = [];
  let current: string[] = [];
  socket.on('data', (d) => {
    buf += d.toString('latin1');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      current.push(line);
      if (/^\d{3}(?: |$)/.test(line)) {
        const r = current.join('\n');
        current = [];
        const w = waiting.shift();
        if (w) w(r);
        else ready.push(r);
      }
    }
  });
  socket.on('error', () => undefined);
  const reply = () => new Promise<string>((resolve) => { const r = ready.shift(); if (r !== undefined) resolve(r); else waiting.push(resolve); });
  return {
    greeting: reply(),
    cmd(line: string) { socket.write(`${line}\r\n`); return reply(); },
    close() { socket.destroy(); },
  };
}

const plain = (user: string, pass: string) => `AUTH PLAIN ${Buffer.from(`\0${user}\0${pass}`).toString('base64')}`;

describe('AUTH brute force', () => {
  let proxy: Proxy;
  let sink: Sink;
  beforeAll(async () => {
    sink = await startSink();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-auth-'));
    const usersFile = path.join(dir, 'users');
    writeFileSync(usersFile, `alice:${await hashPassword('correct horse battery staple', 1024)}\n`);
    ({ proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}`, allowNetworks: ['192.0.2.0/24'], usersFile, allowInsecureAuth: true } }));
  });
  afterAll(async () => {
    await proxy.close(50);
    await sink.close();
  });

  it('wrong passwords from one address get slower after 3 (≥1 s, then ≥2 s), on one connection or many; another address is not slowed and logs in', async () => {
    const attacker = '127.66.1.1';
    const times: number[] = [];
    // three on one connection, two more on new connections: the brake is per address, not per connection
    const c = client(proxy.outbound.port, attacker);
    expect(await c.greeting).toMatch(/^220 /);
    await c.cmd('EHLO brute.test');
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      expect(await c.cmd(plain('alice', `guess-${i}`))).toBe('535 5.7.8 Authentication credentials invalid');
      times.push(Date.now() - t0);
    }
    c.close();
    for (let i = 3; i < 5; i++) {
      const d = client(proxy.outbound.port, attacker);
      await d.greeting;
      await d.cmd('EHLO brute.test');
      const t0 = Date.now();
      expect(await d.cmd(i === 4 ? plain('nobody', 'x') : plain('alice', `guess-${i}`))).toBe('535 5.7.8 Authentication credentials invalid');
      times.push(Date.now() - t0);
      d.close();
    }
    expect(times[3]).toBeGreaterThanOrEqual(950);
    expect(times[4]).toBeGreaterThanOrEqual(1950);
    expect(times[4]! - times[3]!).toBeGreaterThanOrEqual(900);
    // the first three were not braked (a generous bound: scrypt N=1024 takes milliseconds)
    expect(Math.max(...times.slice(0, 3))).toBeLessThan(900);

    // a different client address is not slowed, and the right password works there
    const e = client(proxy.outbound.port, '127.66.2.2');
    await e.greeting;
    await e.cmd('EHLO honest.test');
    const t0 = Date.now();
    expect(await e.cmd(plain('alice', 'correct horse battery staple'))).toBe('235 Authentication successful');
    expect(Date.now() - t0).toBeLessThan(900);
    expect(await e.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    e.close();
  });

  it('parallel guesses from one address are braked too (at most one password checked per second after 3 failures)', async () => {
    // The brake used to delay each attempt only by (failures so far - 2) s, read when the attempt started:
    // N connections guessing at once all sleep the same 1 s and are all checked, so an attacker's guess
    // rate grows with its connection count (up to limits.maxClients) instead of being held down.
    const addr = '127.66.4.4';
    for (let i = 0; i < 3; i++) {
      const c = client(proxy.outbound.port, addr);
      await c.greeting;
      await c.cmd('EHLO brute.test');
      expect(await c.cmd(plain('alice', `free-${i}`))).toBe('535 5.7.8 Authentication credentials invalid');
      c.close();
    }
    const parallel = await Promise.all(Array.from({ length: 4 }, async () => {
      const c = client(proxy.outbound.port, addr);
      await c.greeting;
      await c.cmd('EHLO brute.test');
      return c;
    }));
    const t0 = Date.now();
    const checked: number[] = [];
    // a brake may also answer surplus attempts at once with a 4xx; those are not guesses checked
    parallel.forEach((c, i) => void c.cmd(plain('alice', `parallel-${i}`)).then((r) => { if (r.startsWith('535')) checked.push(Date.now() - t0); }));
    await new Promise((r) => setTimeout(r, 1900));
    for (const c of parallel) c.close();
    expect(checked.length).toBeLessThanOrEqual(1);
  });

  it('AUTH LOGIN failures count against the same address', async () => {
    const addr = '127.66.3.3';
    const times: number[] = [];
    for (let i = 0; i < 4; i++) {
      const c = client(proxy.outbound.port, addr);
      await c.greeting;
      await c.cmd('EHLO brute.test');
      expect(await c.cmd('AUTH LOGIN')).toBe('334 VXNlcm5hbWU6');
      expect(await c.cmd(Buffer.from('alice').toString('base64'))).toBe('334 UGFzc3dvcmQ6');
      const t0 = Date.now();
      expect(await c.cmd(Buffer.from(`nope-${i}`).toString('base64'))).toBe('535 5.7.8 Authentication credentials invalid');
      times.push(Date.now() - t0);
      c.close();
    }
    expect(times[3]).toBeGreaterThanOrEqual(950);
  });
});
