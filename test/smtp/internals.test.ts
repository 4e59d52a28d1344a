/**
 * Pins every hook src/smtp/internals.ts puts into smtp-server on the installed version: if an upgrade
 * renames or reshapes what a hook relies on, these fail (docs/architecture.md, "The listener adapter").
 */
import { createRequire } from 'node:module';
import { afterEach, describe, expect, it } from 'vitest';
import { installConnectionHooks, rawOf, splitAddressCommand } from '../../src/smtp/internals.js';
import { createListener, type Listener } from '../../src/smtp/listener.js';
import { replies } from '../../src/policy/replies.js';
import { halfClose } from '../helpers/half-close.js';

const require = createRequire(import.meta.url);
const installed = (require('smtp-server/package.json') as { version: string }).version;

let server: Listener | null = null;
afterEach(async () => {
  await server?.close(0, replies.shuttingDown());
  server = null;
});

async function listen(hooks: Parameters<typeof createListener>[1]): Promise<number> {
  server = createListener(
    { name: 'pin.test', maxClients: 10, maxMessageBytes: 1_000_000, maxRecipients: 10, clientIdleMs: 10_000, tls: null, authMethods: [], allowInsecureAuth: false },
    hooks,
  );
  return (await server.listen('127.0.0.1', 0)).port;
}

describe(`smtp-server ${installed}: the internals the adapter hooks`, () => {
  it('has the prototype methods the hooks wrap, and installing twice is harmless', async () => {
    const { SMTPConnection } = (await import('smtp-server/lib/smtp-connection.js')) as unknown as { SMTPConnection: { prototype: Record<string, unknown> } };
    for (const m of ['_parseAddressCommand', '_createParser', '_setListeners', 'close', 'send']) {
      expect(typeof SMTPConnection.prototype[m], m).toBe('function');
    }
    expect(() => {
      installConnectionHooks();
      installConnectionHooks();
    }).not.toThrow();
  });

  it('splits MAIL/RCPT text as sent', () => {
    expect(splitAddressCommand('MAIL FROM:<@a.example,@b.example:User@xn--bcher-kva.example> SIZE=10 ENVID=a+2Bb')).toEqual({
      raw: 'User@xn--bcher-kva.example',
      rawParams: ['SIZE=10', 'ENVID=a+2Bb'],
    });
    expect(splitAddressCommand('MAIL FROM:<>')).toEqual({ raw: '', rawParams: [] });
  });

  it('hands the hooks the raw address and parameters next to smtp-server\'s normalised ones', async () => {
    const seen: unknown[] = [];
    const port = await listen({
      onMailFrom(a, _s, cb) {
        seen.push({ parsed: a.address, ...rawOf(a) });
        cb();
      },
      onRcptTo(a, _s, cb) {
        seen.push({ parsed: a.address, ...rawOf(a) });
        cb();
      },
    });
    const r = await halfClose(port, [
      { send: 'EHLO c.test\r\n', replies: 1 },
      { send: 'MAIL FROM:<User@xn--bcher-kva.example> BODY=8BITMIME\r\n', replies: 1 },
      { send: 'RCPT TO:<x@[IPv6:0:0:0:0:0:0:0:1]> NOTIFY=NEVER\r\n', replies: 1 },
      { send: 'QUIT\r\n', replies: 1 },
    ]);
    expect(r.replies.slice(2, 4)).toEqual(['250 Accepted', '250 Accepted']);
    expect(seen[0]).toMatchObject({ raw: 'User@xn--bcher-kva.example', rawParams: ['BODY=8BITMIME'] });
    expect((seen[0] as { parsed: string }).parsed).not.toBe('User@xn--bcher-kva.example');
    expect(seen[1]).toMatchObject({ raw: 'x@[IPv6:0:0:0:0:0:0:0:1]', rawParams: ['NOTIFY=NEVER'] });
  });

  it('writes every reply a client is owed after its FIN, then closes', async () => {
    const port = await listen({
      onData(stream, _s, cb) {
        stream.resume();
        stream.on('end', () => setTimeout(() => cb(), 50));
      },
    });
    const r = await halfClose(port, [
      { send: 'EHLO c.test\r\n', replies: 1 },
      { send: 'MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n', replies: 3 },
      { send: 'Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n', fin: true },
    ]);
    expect(r.afterFin.map((l) => l.slice(0, 3))).toEqual(['250', '221']);
    expect(r.serverClosed).toBe(true);
  });

  it('hook 4 (drain): smtp-server\'s own close() answers a transaction\'s next command 421 (why drainConnections exists); the drain lets it finish and QUIT get 221', async () => {
    type Plain = { connections: unknown; server: import('node:net').Server; listen(p: number, h: string, cb: () => void): void; close(cb?: () => void): void };
    const { SMTPServer } = (await import('smtp-server')) as unknown as { SMTPServer: new (o: object) => Plain };
    const net = await import('node:net');
    const { talk } = await import('../helpers/talk.js');
    // What the drain reads: the connections set (the net server is the Listener's own).
    const plain = new SMTPServer({ logger: false, disableReverseLookup: true, authOptional: true, closeTimeout: 2000 });
    expect(plain.connections).toBeInstanceOf(Set);
    expect(plain.server).toBeInstanceOf(net.Server);
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    const t1 = talk((plain.server.address() as import('node:net').AddressInfo).port);
    await t1.greeting;
    await t1.cmd('EHLO x');
    expect(await t1.cmd('MAIL FROM:<a@example.com>')).toMatch(/^250 /);
    const closed = new Promise<void>((r) => plain.close(r));
    expect(await t1.cmd('RCPT TO:<b@example.org>')).toBe('421 Server shutting down');
    await closed;

    // The adapter's drain: the same transaction finishes and QUIT gets 221.
    const port = await listen({});
    const t2 = talk(port);
    await t2.greeting;
    await t2.cmd('EHLO x');
    expect(await t2.cmd('MAIL FROM:<a@example.com>')).toMatch(/^250 /);
    const drained = server!.close(5000, replies.shuttingDown());
    server = null;
    expect(await t2.cmd('RCPT TO:<b@example.org>')).toMatch(/^250 /);
    expect(await t2.cmd('RSET')).toMatch(/^250 /);
    expect(await t2.cmd('QUIT')).toMatch(/^221 /);
    await drained;
  });
});
