/**
 * The embedded capture next hop (src/capture.ts) writes each message it receives as mail/<dir>/<id>.eml, by
 * way of <id>.eml.tmp renamed at the end. A message cut short (the client, here the proxy, leaves in the
 * middle of DATA, which is how the proxy abandons a body it refused or lost) must leave no file at all:
 * no .eml (it never completed) and no .eml.tmp (issue 13.5).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCapture, type Capture } from '../../src/capture.js';
import { systemClock } from '../../src/clock.js';

let dir: string;
let capture: Capture;
beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-capture-'));
  capture = await startCapture(dir, systemClock);
});
afterEach(async () => {
  await capture.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Speaks to the capture server line by line; resolves each reply. */
async function session(): Promise<{ send(line: string): Promise<string>; write(bytes: string): void; socket: net.Socket }> {
  const port = Number(new URL(capture.url).port);
  const socket = net.connect(port, '127.0.0.1');
  let buf = '';
  const waiting: ((reply: string) => void)[] = [];
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buf += d;
    let m: RegExpExecArray | null;
    while ((m = /^(\d{3} [^\r\n]*)\r\n/m.exec(buf))) {
      const end = m.index + m[0].length;
      const reply = buf.slice(0, end);
      buf = buf.slice(end);
      waiting.shift()?.(reply.trimEnd());
    }
  });
  const next = () => new Promise<string>((resolve) => waiting.push(resolve));
  await next(); // greeting
  return { send: (line) => { socket.write(`${line}\r\n`); return next(); }, write: (b) => socket.write(b), socket };
}

const files = () => fs.readdirSync(dir).sort();

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}; files: ${files().join(', ')}`);
}

describe('capture next hop', () => {
  it('writes a complete message as one .eml and nothing else', async () => {
    const s = await session();
    expect(await s.send('EHLO test')).toMatch(/^250 /m);
    expect(await s.send('MAIL FROM:<a@example.com>')).toMatch(/^250 /);
    expect(await s.send('RCPT TO:<b@example.org>')).toMatch(/^250 /);
    expect(await s.send('DATA')).toMatch(/^354 /);
    expect(await s.send('Subject: x\r\n\r\nbody\r\n.')).toMatch(/^250 2\.6\.0 Ok: captured as .+\.eml$/);
    s.socket.destroy();
    await until(() => files().length === 1, 'the .eml');
    expect(files()[0]).toMatch(/\.eml$/);
    expect(fs.readFileSync(path.join(dir, files()[0]!), 'utf8')).toBe('Return-Path: <a@example.com>\r\nX-Envelope-To: <b@example.org>\r\nSubject: x\r\n\r\nbody\r\n');
  });

  it('leaves neither .eml nor .eml.tmp when the connection ends in the middle of DATA', async () => {
    const s = await session();
    await s.send('EHLO test');
    await s.send('MAIL FROM:<a@example.com>');
    await s.send('RCPT TO:<b@example.org>');
    expect(await s.send('DATA')).toMatch(/^354 /);
    s.write('Subject: cut short\r\n\r\n' + 'x'.repeat(200_000) + '\r\n');
    await until(() => files().some((f) => f.endsWith('.eml.tmp')), 'the .eml.tmp to be started');
    s.socket.destroy();
    await until(() => files().length === 0, 'the .eml.tmp to be removed');
    // and a later message is captured as usual
    const t = await session();
    await t.send('EHLO test');
    await t.send('MAIL FROM:<a@example.com>');
    await t.send('RCPT TO:<b@example.org>');
    await t.send('DATA');
    expect(await t.send('Subject: y\r\n\r\nok\r\n.')).toMatch(/^250 /);
    t.socket.destroy();
    await until(() => files().length === 1 && files()[0]!.endsWith('.eml'), 'the second message');
  });
});
