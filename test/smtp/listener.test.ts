/**
 * The listener adapter (src/smtp/listener.ts) on the installed smtp-server: apply() and advertise()
 * write options smtp-server has no setter for, so these pin that EHLO, the SIZE check and the client cap
 * follow them, and that close() tells idle clients 421 at once while a transaction may finish.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createListener, hook, type Listener, type ListenerOptions } from '../../src/smtp/listener.js';
import { replies } from '../../src/policy/replies.js';
import { talk } from '../helpers/talk.js';

const OPTS: ListenerOptions = {
  name: 'first.test', maxClients: 10, maxMessageBytes: 100_000, maxRecipients: 10, clientIdleMs: 10_000,
  tls: null, authMethods: [], allowInsecureAuth: false, perClient: { max: 5, reply: replies.tooManyFromClient },
};

let listener: Listener | null = null;
afterEach(async () => {
  await listener?.close(0, replies.shuttingDown());
  listener = null;
});

async function start(opts: ListenerOptions = OPTS): Promise<number> {
  listener = createListener(opts, {
    onData(stream, _s, cb) {
      stream.resume();
      stream.on('end', () => cb());
    },
  });
  return (await listener.listen('127.0.0.1', 0)).port;
}

async function ehlo(port: number): Promise<string[]> {
  const t = talk(port);
  await t.greeting;
  const r = (await t.cmd('EHLO client.test')).split('\n');
  await t.quit();
  return r;
}

describe('Listener', () => {
  it('apply() changes the EHLO name, the advertised SIZE and the SIZE check for the next session', async () => {
    const port = await start();
    expect((await ehlo(port))[0]).toBe('250-first.test Nice to meet you, [127.0.0.1]');
    expect(await ehlo(port)).toContain('250 SIZE 100000');
    listener!.apply({ ...OPTS, name: 'second.test', maxMessageBytes: 2048 });
    const lines = await ehlo(port);
    expect(lines[0]).toBe('250-second.test Nice to meet you, [127.0.0.1]');
    expect(lines).toContain('250 SIZE 2048');
    const t = talk(port);
    await t.greeting;
    await t.cmd('EHLO client.test');
    expect(await t.cmd('MAIL FROM:<a@example.com> SIZE=4096')).toBe('552 Error: message exceeds fixed maximum message size 2048');
    await t.quit();
  });

  it('advertise() offers only what the next hop offers, and the smaller of the two sizes', async () => {
    const port = await start();
    listener!.advertise(new Map([['8BITMIME', ''], ['SIZE', '5000']]));
    const lines = (await ehlo(port)).map((l) => l.slice(4));
    expect(lines).toContain('8BITMIME');
    expect(lines).not.toContain('SMTPUTF8');
    expect(lines).not.toContain('DSN');
    expect(lines).toContain('SIZE 5000');
    listener!.advertise(new Map([['SMTPUTF8', ''], ['DSN', '']]));
    const again = (await ehlo(port)).map((l) => l.slice(4));
    expect(again).toEqual(expect.arrayContaining(['SMTPUTF8', 'DSN', 'SIZE 100000']));
    expect(again).not.toContain('8BITMIME');
  });

  it('apply() moves the per-client cap for new connections', async () => {
    const port = await start();
    listener!.apply({ ...OPTS, perClient: { max: 1, reply: replies.tooManyFromClient } });
    const first = talk(port);
    expect(await first.greeting).toMatch(/^220 /);
    const second = talk(port);
    expect(await second.greeting).toBe('421 4.7.0 Too many connections from 127.0.0.1; try again later');
    await first.quit();
  });

  it('close() tells an idle client 421 at once and lets one in DATA finish its message', async () => {
    const port = await start();
    const idle = talk(port);
    await idle.greeting;
    await idle.cmd('EHLO idle.test');
    const busy = talk(port);
    await busy.greeting;
    await busy.cmd('EHLO busy.test');
    expect(await busy.cmd('MAIL FROM:<a@example.com>')).toBe('250 Accepted');
    expect(await busy.cmd('RCPT TO:<b@example.net>')).toBe('250 Accepted');
    expect(await busy.cmd('DATA')).toMatch(/^354 /);
    const closed = listener!.close(5000, replies.shuttingDown());
    expect(await idle.reply()).toBe('421 4.3.2 Service shutting down; try again later');
    busy.write('Subject: x\r\n\r\nbody\r\n.\r\n');
    expect(await busy.reply()).toBe('250 OK: message queued');
    expect(await busy.reply()).toBe('421 4.3.2 Service shutting down; try again later');
    await closed;
    listener = null;
  });

  it('hook() calls back once with the reply of whatever the body throws', async () => {
    const calls: unknown[][] = [];
    hook(async () => { throw new Error('boom'); }, (...a) => calls.push(a), () => calls.push(['unexpected']));
    hook(async () => { throw replies.needMail(); }, (...a) => calls.push(a), () => calls.push(['unexpected']));
    await new Promise((r) => setTimeout(r, 10));
    expect(calls.map((c) => (c[0] as { message?: string } | string)).map((x) => (typeof x === 'string' ? x : x.message))).toEqual([
      'unexpected', '4.3.0 Local error in processing; try again later', '5.5.1 Need MAIL command first',
    ]);
  });
});
