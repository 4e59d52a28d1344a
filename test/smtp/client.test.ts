import { createHash } from 'node:crypto';
import net from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { SmtpReply } from '../../src/reply.js';
import { MAX_REPLY_LINES, connectNextHop, type NextHopOptions, type NextHopSession } from '../../src/smtp/client.js';
import { NextHopError, formatReply, passThrough, type Reply } from '../../src/smtp/hop-reply.js';
import { closedPort, startBlackhole, startFakePeer, type FakePeer } from '../helpers/fake-peer.js';
import { startPostfixSink, type PostfixSink } from '../helpers/postfix-sink.js';
import { selfSignedCert, startSink, type Sink } from '../helpers/sink.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const s = (buf: Buffer): string => buf.toString('latin1');
const sha256 = (buf: Buffer): string => createHash('sha256').update(buf).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A body whose 'data' events are exactly these chunks. */
const body = (...chunks: string[]): Readable => Readable.from(chunks.map(b));

const opened: NextHopSession[] = [];
async function connect(port: number, extra: Partial<NextHopOptions> = {}): Promise<NextHopSession> {
  const session = await connectNextHop({
    host: '127.0.0.1', port, name: 'proxy.test',
    connectTimeoutMs: 2000, greetingTimeoutMs: 2000, commandTimeoutMs: 2000, dataTimeoutMs: 2000,
    ...extra,
  });
  opened.push(session);
  return session;
}

/** The NextHopError a promise rejects with, as { stage, kind, line } (line: what the proxy's client sees). */
async function failure(p: Promise<unknown>): Promise<{ stage: string; kind: string; line: string; code: number | null }> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof NextHopError)) throw err;
    return { stage: err.stage, kind: err.kind, line: err.toSmtpReply().line, code: err.reply?.code ?? null };
  }
  throw new Error('expected a NextHopError');
}

async function envelope(session: NextHopSession): Promise<void> {
  expect((await session.command('MAIL FROM:<a@b.example>')).code).toBe(250);
  expect((await session.command('RCPT TO:<c@d.example>')).code).toBe(250);
}

afterEach(() => {
  for (const session of opened.splice(0)) session.abort();
});

describe('connectNextHop() against a scripted peer', () => {
  let peer: FakePeer;
  let hop: string;
  beforeAll(async () => {
    peer = await startFakePeer();
    hop = `127.0.0.1:${peer.port}`;
  });
  afterAll(() => peer.close());
  beforeEach(() => {
    peer.script = {};
    peer.reset();
  });

  it('reads a multi-line greeting, sends EHLO with our name and parses the extensions', async () => {
    peer.script = { GREETING: '220-fake.peer ESMTP\r\n220 ready', EHLO: '250-fake.peer hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-size 10240000\r\n250 AUTH PLAIN LOGIN' };
    const session = await connect(peer.port);
    expect([...session.extensions]).toEqual([['PIPELINING', ''], ['8BITMIME', ''], ['SIZE', '10240000'], ['AUTH', 'PLAIN LOGIN']]);
    expect(session.secure).toBe(false);
    expect(session.closed).toBe(false);
    const conn = await peer.connection(0);
    expect(s(conn.received)).toBe('EHLO proxy.test\r\n');
  });

  it('falls back to HELO when EHLO gets a 5xx, with no extensions', async () => {
    peer.script = { EHLO: '502 5.5.2 Error: command not recognized', HELO: '250 fake.peer' };
    const session = await connect(peer.port);
    expect(session.extensions.size).toBe(0);
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test', 'HELO proxy.test']);
  });

  it('rejects with refused at ehlo when EHLO gets a 4xx, or both EHLO and HELO get a 5xx', async () => {
    peer.script = { EHLO: '421 4.3.2 Service not available' };
    expect(await failure(connect(peer.port))).toEqual({
      stage: 'ehlo', kind: 'refused', code: 421,
      line: `421 4.4.1 Next hop ${hop} unreachable: EHLO answered 421 4.3.2 Service not available`,
    });
    peer.script = { EHLO: '500 5.5.1 no', HELO: '550 5.7.1 go away' };
    expect(await failure(connect(peer.port))).toEqual({
      stage: 'ehlo', kind: 'refused', code: 550, line: `421 4.4.1 Next hop ${hop} unreachable: HELO answered 550 5.7.1 go away`,
    });
  });

  it('refuses an EHLO name that could inject a command, before connecting', async () => {
    await expect(connect(peer.port, { name: 'a.example\r\nRSET' })).rejects.toThrow(TypeError);
    await sleep(20);
    expect(peer.connections).toEqual([]);
  });

  it('rejects a connection refused with 421 4.4.1 naming the hop', async () => {
    const port = await closedPort();
    expect(await failure(connect(port))).toEqual({
      stage: 'connect', kind: 'refused', code: null, line: `421 4.4.1 Next hop 127.0.0.1:${port} unreachable: connection refused`,
    });
  });

  it('times out at connect when the SYN goes unanswered', async () => {
    const hole = await startBlackhole();
    try {
      const t0 = Date.now();
      expect(await failure(connect(hole.port, { connectTimeoutMs: 200 }))).toEqual({
        stage: 'connect', kind: 'timeout', code: null, line: `451 4.4.2 Next hop 127.0.0.1:${hole.port} timed out at connect`,
      });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    } finally {
      await hole.close();
    }
  });

  it('rejects a 554 greeting without sending anything', async () => {
    peer.script = { GREETING: '554 5.3.2 No SMTP service here' };
    expect(await failure(connect(peer.port))).toEqual({
      stage: 'greeting', kind: 'refused', code: 554, line: `421 4.4.1 Next hop ${hop} unreachable: greeting 554 5.3.2 No SMTP service here`,
    });
    const conn = await peer.connection(0);
    await conn.closed;
    expect(conn.received.length).toBe(0);
  });

  it('rejects a peer that drops the connection instead of greeting', async () => {
    peer.script = { GREETING: { then: 'drop' } };
    expect(await failure(connect(peer.port))).toEqual({
      stage: 'greeting', kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at greeting`,
    });
  });

  it('times out at greeting after greetingTimeoutMs', async () => {
    peer.script = { GREETING: { then: 'stall' } };
    const t0 = Date.now();
    expect(await failure(connect(peer.port, { greetingTimeoutMs: 200 }))).toEqual({
      stage: 'greeting', kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at greeting`,
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('times out at ehlo after commandTimeoutMs', async () => {
    peer.script = { EHLO: { then: 'stall' } };
    expect(await failure(connect(peer.port, { commandTimeoutMs: 200 }))).toEqual({
      stage: 'ehlo', kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at ehlo`,
    });
  });

  it.each([
    ['the TLS handshake after 220 to STARTTLS', { EHLO: '250-fake.peer\r\n250 STARTTLS', STARTTLS: { reply: '220 2.0.0 Ready', then: 'stall' } }, 'starttls'],
    ['AUTH', { EHLO: '250-fake.peer\r\n250 AUTH PLAIN', AUTH: { then: 'stall' } }, 'auth'],
  ] as const)('times out in %s after commandTimeoutMs', async (_name, script, stage) => {
    peer.script = script;
    expect(await failure(connect(peer.port, { commandTimeoutMs: 200, auth: { user: 'u', pass: 'p' } }))).toEqual({
      stage, kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at ${stage}`,
    });
  });

  it('requireTls fails at starttls when STARTTLS is not offered', async () => {
    expect(await failure(connect(peer.port, { requireTls: true }))).toEqual({
      stage: 'starttls', kind: 'tls', code: null, line: `421 4.7.0 Next hop ${hop} TLS failure at starttls: STARTTLS not offered`,
    });
  });

  it('carries on in clear text when STARTTLS is offered but refused with 454 and TLS is not required', async () => {
    peer.script = { EHLO: '250-fake.peer\r\n250 STARTTLS' };
    const session = await connect(peer.port);
    expect(session.secure).toBe(false);
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test', 'STARTTLS']);
    peer.script = { EHLO: '250-fake.peer\r\n250 STARTTLS' };
    expect(await failure(connect(peer.port, { requireTls: true }))).toEqual({
      stage: 'starttls', kind: 'tls', code: 454,
      line: `421 4.7.0 Next hop ${hop} TLS failure at starttls: STARTTLS refused: 454 4.7.0 TLS not available`,
    });
  });

  it('refuses a reply injected after the 220 to STARTTLS (response injection)', async () => {
    peer.script = { EHLO: '250-fake.peer\r\n250 STARTTLS', STARTTLS: { raw: '220 2.0.0 Go ahead\r\n250 injected\r\n' } };
    expect(await failure(connect(peer.port))).toEqual({
      stage: 'starttls', kind: 'protocol', code: 250, line: `451 4.5.0 Next hop ${hop} protocol error at starttls: unsolicited reply 250 injected`,
    });
  });

  it('sends AUTH PLAIN with the base64 of NUL user NUL pass and succeeds on 235', async () => {
    peer.script = { EHLO: '250-fake.peer\r\n250 AUTH LOGIN PLAIN', AUTH: '235 2.7.0 Authentication successful' };
    await connect(peer.port, { auth: { user: 'u', pass: 'p' } });
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test', 'AUTH PLAIN AHUAcA==']);
  });

  it('uses AUTH LOGIN when only LOGIN is offered', async () => {
    peer.script = { EHLO: '250-fake.peer\r\n250 AUTH LOGIN', AUTH: '334 VXNlcm5hbWU6', OTHER: ['334 UGFzc3dvcmQ6', '235 2.7.0 Ok'] };
    await connect(peer.port, { auth: { user: 'user', pass: 'pass' } });
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test', 'AUTH LOGIN', 'dXNlcg==', 'cGFzcw==']);
  });

  it('fails at auth when AUTH is configured but not offered', async () => {
    expect(await failure(connect(peer.port, { auth: { user: 'u', pass: 'p' } }))).toEqual({
      stage: 'auth', kind: 'auth', code: null, line: `451 4.7.0 Next hop ${hop} authentication failed at auth: AUTH not offered`,
    });
  });
});

describe('NextHopSession commands against a scripted peer', () => {
  let peer: FakePeer;
  let hop: string;
  beforeAll(async () => {
    peer = await startFakePeer();
    hop = `127.0.0.1:${peer.port}`;
  });
  afterAll(() => peer.close());
  beforeEach(() => {
    peer.script = {};
    peer.reset();
  });

  it('sends a command line byte for byte and resolves with the parsed reply', async () => {
    const session = await connect(peer.port);
    const reply = await session.command('MAIL FROM:<a@b.example> SIZE=12');
    expect(reply).toEqual({ code: 250, enhanced: '2.1.0', lines: ['2.1.0 Ok'] });
    expect(s((await peer.connection(0)).received)).toBe('EHLO proxy.test\r\nMAIL FROM:<a@b.example> SIZE=12\r\n');
  });

  it('parses multi-line replies, bare LF endings and a code without text', async () => {
    peer.script = { NOOP: [{ raw: '250-a\r\n250 b\r\n' }, { raw: '250-first\n250 last\n' }, { raw: '250\r\n' }] };
    const session = await connect(peer.port);
    const multi = await session.command('NOOP');
    expect(multi).toEqual({ code: 250, enhanced: null, lines: ['a', 'b'] });
    expect(formatReply(multi)).toBe('250-a\r\n250 b');
    expect(await session.command('NOOP')).toEqual({ code: 250, enhanced: null, lines: ['first', 'last'] });
    expect(await session.command('NOOP')).toEqual({ code: 250, enhanced: null, lines: [''] });
  });

  it('passes 4xx and 5xx replies at MAIL and RCPT through unchanged', async () => {
    peer.script = {
      MAIL: ['451 4.3.0 Temporary lookup failure', '250 2.1.0 Ok'],
      RCPT: ['550-5.1.1 <x@d.example>: Recipient address rejected:\r\n550 5.1.1 User unknown in local recipient table', '452 4.2.2 Mailbox full'],
    };
    const session = await connect(peer.port);
    const mail = await session.command('MAIL FROM:<a@b.example>');
    expect(mail).toEqual({ code: 451, enhanced: '4.3.0', lines: ['4.3.0 Temporary lookup failure'] });
    expect(passThrough(mail).line).toBe('451 4.3.0 Temporary lookup failure');
    await session.command('MAIL FROM:<a@b.example>');
    const rcpt = await session.command('RCPT TO:<x@d.example>');
    expect(formatReply(rcpt)).toBe('550-5.1.1 <x@d.example>: Recipient address rejected:\r\n550 5.1.1 User unknown in local recipient table');
    expect(passThrough(rcpt).line).toBe('550 5.1.1 <x@d.example>: Recipient address rejected: User unknown in local recipient table');
    expect(await session.command('RCPT TO:<y@d.example>')).toEqual({ code: 452, enhanced: '4.2.2', lines: ['4.2.2 Mailbox full'] });
  });

  it('passes a 5xx to DATA through and leaves the body unread', async () => {
    peer.script = { DATA: '554 5.5.1 Error: no valid recipients' };
    const session = await connect(peer.port);
    await envelope(session);
    const src = body('Subject: x\r\n\r\nhello\r\n');
    expect(await session.data(src)).toEqual({ code: 554, enhanced: '5.5.1', lines: ['5.5.1 Error: no valid recipients'] });
    expect(src.readableFlowing).toBe(null);
    expect((await session.rset()).code).toBe(250);
    expect((await peer.connection(0)).commands.slice(-2)).toEqual(['DATA', 'RSET']);
  });

  it.each([
    ['451 4.3.0 Error: queue file write error', 451, '4.3.0'],
    ['552 5.3.4 Error: message file too big', 552, '5.3.4'],
  ])('passes "%s" at end of data through unchanged', async (text, code, enhanced) => {
    peer.script = { END: text };
    const session = await connect(peer.port);
    await envelope(session);
    const reply = await session.data(body('hi\r\n'));
    expect(reply).toEqual({ code, enhanced, lines: [text.slice(4)] });
    expect(passThrough(reply).line).toBe(text);
    expect(session.closed).toBe(false);
  });

  it('relays a whole transaction with the exact bytes on the wire', async () => {
    const session = await connect(peer.port);
    await envelope(session);
    const reply = await session.data(body('Subject: t\r\n\r\n.\r\n..x\r\n', 'end'));
    expect(reply).toEqual({ code: 250, enhanced: '2.0.0', lines: ['2.0.0 Ok: queued'] });
    expect(await session.quit()).toEqual({ code: 221, enhanced: '2.0.0', lines: ['2.0.0 Bye'] });
    expect(session.closed).toBe(true);
    const conn = await peer.connection(0);
    expect(s(conn.received)).toBe(
      'EHLO proxy.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n'
      + 'Subject: t\r\n\r\n..\r\n...x\r\nend\r\n.\r\nQUIT\r\n',
    );
  });

  it.each([
    ['lines that are just "."', ['.\r\n', 'a\r\n.\r\n'], '..\r\na\r\n..\r\n.\r\n'],
    ['lines starting with ".."', ['..\r\n...x\r\n'], '...\r\n....x\r\n.\r\n'],
    ['a chunk boundary between CR and LF before a dot', ['a\r', '\n.b\r\n'], 'a\r\n..b\r\n.\r\n'],
    ['a dot opening a chunk after a CRLF', ['a\r\n', '.', 'b\r\n'], 'a\r\n..b\r\n.\r\n'],
    ['a body without final CRLF', ['no newline'], 'no newline\r\n.\r\n'],
    // 8-bit bytes pass; NUL is dropped (docs/smuggling.md: a NUL-stripping receiver must read what we checked)
    ['8-bit bytes (NUL dropped)', ['\x00\xff\x80\r\n.\xe9\r\n'], '\xff\x80\r\n..\xe9\r\n.\r\n'],
    ['an empty body', [], '.\r\n'],
    ['a bare LF before a dot (made CRLF)', ['a\n.\r\n'], 'a\r\n..\r\n.\r\n'],
    ['a bare CR before a dot (made CRLF)', ['a\r.\r\r\n'], 'a\r\n..\r\n\r\n.\r\n'],
  ])('dot-stuffs %s exactly on the wire', async (_name, chunks, wire) => {
    const session = await connect(peer.port);
    await envelope(session);
    expect((await session.data(body(...chunks))).code).toBe(250);
    expect((await peer.connection(0)).messages.map(s)).toEqual([wire]);
  });

  it('queues concurrent calls and sends each command only after the previous reply', async () => {
    let mailAnswered = false;
    const seen: string[] = [];
    peer.script = {
      MAIL: () => {
        setTimeout(() => { mailAnswered = true; }, 100); // fires just before the delayed reply is written
        return { reply: '250 2.1.0 Ok', delayMs: 100 };
      },
      RCPT: (line) => {
        seen.push(`${line} (MAIL answered: ${mailAnswered})`);
        return '250 2.1.5 Ok';
      },
    };
    const session = await connect(peer.port);
    const all = Promise.all([
      session.command('MAIL FROM:<a@b.example>'),
      session.command('RCPT TO:<c@d.example>'),
      session.data(body('x\r\n')),
      session.rset(),
    ]);
    expect((await all).map((r) => r.code)).toEqual([250, 250, 250, 250]);
    expect(seen).toEqual(['RCPT TO:<c@d.example> (MAIL answered: true)']);
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test', 'MAIL FROM:<a@b.example>', 'RCPT TO:<c@d.example>', 'DATA', 'RSET']);
  });

  it('refuses command lines containing CR or LF, and DATA, before sending anything', async () => {
    const session = await connect(peer.port);
    await expect(session.command('RCPT TO:<a@b>\r\nRSET')).rejects.toThrow(new TypeError('Cannot send command: it contains CR or LF'));
    await expect(session.command('DATA')).rejects.toThrow(TypeError);
    expect((await peer.connection(0)).commands).toEqual(['EHLO proxy.test']);
  });

  it('treats a reply with no command outstanding as a protocol error that ends the session', async () => {
    peer.script = { MAIL: { raw: '250 2.1.0 Ok\r\n250 2.1.0 again\r\n' } };
    const session = await connect(peer.port);
    const ended = new Promise<NextHopError | null>((resolve) => session.onClose(resolve));
    expect((await session.command('MAIL FROM:<a@b.example>')).code).toBe(250);
    const err = await ended;
    expect(err?.toSmtpReply().line).toBe(`451 4.5.0 Next hop ${hop} protocol error at mail: unsolicited reply 250 2.1.0 again`);
    expect(session.closed).toBe(true);
    expect(await failure(session.command('RCPT TO:<c@d.example>'))).toEqual({
      stage: 'rcpt', kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at rcpt`,
    });
  });

  it('treats an unsolicited 421 as the next hop closing', async () => {
    peer.script = { MAIL: { raw: '250 2.1.0 Ok\r\n421 4.3.2 Shutting down\r\n', then: 'drop' } };
    const session = await connect(peer.port);
    const ended = new Promise<NextHopError | null>((resolve) => session.onClose(resolve));
    await session.command('MAIL FROM:<a@b.example>');
    const err = await ended;
    expect([err?.kind, err?.reply?.code, err?.toSmtpReply().line]).toEqual(['closed', 421, `451 4.4.2 Next hop ${hop} closed the connection at mail`]);
  });

  it.each([
    ['a line over 4096 bytes', `250 ${'x'.repeat(5000)}\r\n`, 'reply line over 4096 bytes'],
    ['a partial line over 4096 bytes', `250 ${'x'.repeat(5000)}`, 'reply line over 4096 bytes'],
    ['a reply over 100 lines', `${'250-x\r\n'.repeat(MAX_REPLY_LINES)}250 x\r\n`, 'reply over 100 lines'],
    ['a line that is not a reply', 'hello there\r\n', 'not a reply line: "hello there"'],
    ['lines with different codes', '250-a\r\n251 b\r\n', 'reply codes differ between lines'],
  ])('rejects %s as a protocol error', async (_name, raw, detail) => {
    peer.script = { MAIL: { raw } };
    const session = await connect(peer.port);
    expect(await failure(session.command('MAIL FROM:<a@b.example>'))).toEqual({
      stage: 'mail', kind: 'protocol', code: null, line: `451 4.5.0 Next hop ${hop} protocol error at mail: ${detail}`,
    });
    expect(session.closed).toBe(true);
  });

  it.each([['MAIL', 'mail'], ['RCPT', 'rcpt'], ['DATA', 'data']] as const)(
    'maps the peer dropping the connection at %s to 451 4.4.2 closed at %s',
    async (verb, stage) => {
      peer.script = { [verb]: { then: 'drop' } };
      const session = await connect(peer.port);
      const run = async (): Promise<unknown> => {
        await session.command('MAIL FROM:<a@b.example>');
        await session.command('RCPT TO:<c@d.example>');
        return session.data(body('x\r\n'));
      };
      expect(await failure(run())).toEqual({ stage, kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at ${stage}` });
    },
  );

  it('maps the peer dropping the connection mid-body to closed at body, and drains the body', async () => {
    peer.script = { BODY: { afterBytes: 64 * 1024, action: 'drop' } };
    const session = await connect(peer.port);
    await envelope(session);
    const src = Readable.from(Array.from({ length: 256 }, () => Buffer.alloc(16 * 1024, 0x61)));
    expect(await failure(session.data(src))).toEqual({ stage: 'body', kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at body` });
    await finished(src);
    expect((await peer.connection(0)).messages).toEqual([]);
  });

  it('maps the peer dropping the connection after the body, before its reply, to closed at data-end', async () => {
    peer.script = { END: { then: 'drop' } };
    const session = await connect(peer.port);
    await envelope(session);
    expect(await failure(session.data(body('x\r\n')))).toEqual({
      stage: 'data-end', kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at data-end`,
    });
  });

  it.each([['MAIL', 'mail'], ['RCPT', 'rcpt'], ['DATA', 'data'], ['RSET', 'rset']] as const)(
    'times out at %s after commandTimeoutMs when the peer stalls',
    async (verb, stage) => {
      peer.script = { [verb]: { then: 'stall' } };
      const session = await connect(peer.port, { commandTimeoutMs: 200 });
      const run = async (): Promise<unknown> => {
        await session.command('MAIL FROM:<a@b.example>');
        await session.command('RCPT TO:<c@d.example>');
        if (verb === 'RSET') return session.rset();
        return session.data(body('x\r\n'));
      };
      const t0 = Date.now();
      expect(await failure(run())).toEqual({ stage, kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at ${stage}` });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    },
  );

  it('times out at data-end after dataTimeoutMs when no reply follows the end of data', async () => {
    peer.script = { END: { then: 'stall' } };
    const session = await connect(peer.port, { commandTimeoutMs: 2000, dataTimeoutMs: 200 });
    await envelope(session);
    const t0 = Date.now();
    expect(await failure(session.data(body('x\r\n')))).toEqual({ stage: 'data-end', kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at data-end` });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('times out at body when the peer stops reading and writes stay blocked for dataTimeoutMs', async () => {
    peer.script = { BODY: { afterBytes: 1, action: 'stop-reading' } };
    const session = await connect(peer.port, { dataTimeoutMs: 200 });
    await envelope(session);
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    let produced = 0;
    const src = new Readable({ read() { produced += chunk.length; this.push(produced > 256 * 1024 * 1024 ? null : chunk); } });
    expect(await failure(session.data(src))).toEqual({ stage: 'body', kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at body` });
    expect(produced).toBeLessThan(128 * 1024 * 1024); // backpressure: the source was not read ahead
    src.destroy();
  });

  it('resolves with a 5xx the peer sends mid-body, closes without ever sending the final dot', async () => {
    peer.script = { BODY: { afterBytes: 1, action: { raw: '552 5.3.4 Message too big\r\n', then: 'drop' } } };
    const session = await connect(peer.port);
    await envelope(session);
    const src = new PassThrough();
    src.write('first part\r\n');
    const result = session.data(src);
    const conn = await peer.connection(0);
    await sleep(50);
    src.end('second part\r\n');
    expect(await result).toEqual({ code: 552, enhanced: '5.3.4', lines: ['5.3.4 Message too big'] });
    expect(session.closed).toBe(true);
    await conn.closed;
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });

  it('abort() mid-body destroys the connection and the peer never sees the end of data', async () => {
    const session = await connect(peer.port);
    await envelope(session);
    const src = new PassThrough();
    const result = session.data(src);
    src.write('Subject: cut off\r\n\r\nfirst line\r\n');
    const conn = await peer.connection(0);
    for (let i = 0; i < 50 && !s(conn.received).includes('first line'); i++) await sleep(10);
    const closes: Array<NextHopError | null> = [];
    session.onClose((e) => closes.push(e));
    session.abort();
    expect(await failure(result)).toEqual({ stage: 'body', kind: 'closed', code: null, line: `451 4.4.2 Next hop ${hop} closed the connection at body` });
    src.end('.\r\nrest\r\n');
    await conn.closed;
    expect(session.closed).toBe(true);
    expect(closes).toEqual([null]);
    expect(s(conn.pendingData ?? Buffer.alloc(0))).toBe('Subject: cut off\r\n\r\nfirst line\r\n');
    expect(conn.messages).toEqual([]);
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });

  it.each([
    ['errors', (src: PassThrough) => src.destroy(new Error('client vanished')), 'client vanished'],
    ['is destroyed without an error', (src: PassThrough) => src.destroy(), 'Cannot relay message: body closed before its end'],
  ])('when the body %s mid-way it rejects with that and never terminates the message', async (_name, cutOff, message) => {
    const session = await connect(peer.port);
    await envelope(session);
    const src = new PassThrough();
    const result = session.data(src);
    src.write('half a message\r\n');
    const conn = await peer.connection(0);
    for (let i = 0; i < 50 && !s(conn.received).includes('half'); i++) await sleep(10);
    cutOff(src);
    await expect(result).rejects.toThrow(message);
    await conn.closed;
    expect(session.closed).toBe(true);
    expect(conn.messages).toEqual([]);
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });

  it('beforeEnd runs once after the whole body is read; an SmtpReply from it withholds the message and its last chunk', async () => {
    const session = await connect(peer.port);
    await envelope(session);
    const src = Readable.from([Buffer.from('Subject: x\r\n\r\n'), Buffer.from('body\r\n')]);
    const refusal = new SmtpReply(550, '5.7.1', 'Delivery status reports to this address are refused');
    const calls: boolean[] = [];
    const closes: Array<NextHopError | null> = [];
    session.onClose((e) => closes.push(e));
    const result = session.data(src, () => {
      calls.push(src.readableEnded);
      return refusal;
    });
    await expect(result).rejects.toBe(refusal);
    expect(calls).toEqual([true]);
    const conn = await peer.connection(0);
    await conn.closed;
    expect([session.closed, closes]).toEqual([true, [null]]);
    // The last chunk is held back to go out with the terminator (src/smtp/dotstuff.ts writeStuffed), so a
    // withheld message also never delivers its last bytes.
    expect(s(conn.pendingData ?? Buffer.alloc(0))).toBe('Subject: x\r\n\r\n');
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });

  it('beforeEnd returning null lets the message complete', async () => {
    const session = await connect(peer.port);
    await envelope(session);
    expect((await session.data(body('x\r\n'), () => null)).code).toBe(250);
    expect((await peer.connection(0)).messages.map(s)).toEqual(['x\r\n.\r\n']);
  });

  it('refuses a body that has already ended, before sending DATA', async () => {
    const session = await connect(peer.port);
    await envelope(session);
    const src = body();
    src.resume();
    await finished(src);
    await expect(session.data(src)).rejects.toThrow(new TypeError('Cannot send a body that has already ended or been destroyed'));
    expect((await peer.connection(0)).commands).not.toContain('DATA');
  });

  it('names other verbs stage "command": a NOOP that stalls times out at command', async () => {
    peer.script = { NOOP: { then: 'stall' } };
    const session = await connect(peer.port, { commandTimeoutMs: 200 });
    expect(await failure(session.command('NOOP'))).toEqual({ stage: 'command', kind: 'timeout', code: null, line: `451 4.4.2 Next hop ${hop} timed out at command` });
  });

  it('quit() is bounded by commandTimeoutMs when the peer stalls, and never rejects', async () => {
    peer.script = { QUIT: { then: 'stall' } };
    const session = await connect(peer.port, { commandTimeoutMs: 200 });
    const t0 = Date.now();
    expect(await session.quit()).toBe(null);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(session.closed).toBe(true);
    expect(await session.quit()).toBe(null);
  });

  it('tells onClose listeners what ended the session when the peer goes away while idle', async () => {
    peer.script = { MAIL: { reply: '250 2.1.0 Ok', then: 'drop' } };
    const session = await connect(peer.port);
    const ended = new Promise<NextHopError | null>((resolve) => session.onClose(resolve));
    await session.command('MAIL FROM:<a@b.example>');
    const err = await ended;
    expect([err?.stage, err?.kind]).toEqual(['mail', 'closed']);
    const late = await new Promise<NextHopError | null>((resolve) => session.onClose(resolve));
    expect(late).toBe(err);
  });
});

describe('NextHopSession against smtp-server (sink)', () => {
  let sink: Sink;
  const { key, cert } = selfSignedCert();
  beforeAll(async () => {
    sink = await startSink({ size: 100_000_000, refuseRecipients: { 'nobody@d.example': { code: 550, message: '5.1.1 <nobody@d.example>: no such user' } } });
  });
  afterAll(() => sink.close());
  beforeEach(() => sink.reset());

  it('delivers the envelope with parameters and the exact body; passes a refused recipient through', async () => {
    const session = await connect(sink.port);
    expect(session.extensions.get('SIZE')).toBe('100000000');
    expect(session.extensions.has('8BITMIME')).toBe(true);
    expect((await session.command('MAIL FROM:<a@b.example> SIZE=40 BODY=8BITMIME')).code).toBe(250);
    expect((await session.command('RCPT TO:<c@d.example>')).code).toBe(250);
    const refused = await session.command('RCPT TO:<nobody@d.example>');
    expect(formatReply(refused)).toBe('550 5.1.1 <nobody@d.example>: no such user');
    const text = 'Subject: hi\r\n\r\n.\r\n..dots\r\n\xe9t\xe9\r\nlast';
    expect(formatReply(await session.data(body(text)))).toBe('250 Ok: queued as sink');
    const [m] = await sink.waitForMessages(1);
    expect(m).toEqual({
      mailFrom: 'a@b.example', mailParams: { SIZE: '40', BODY: '8BITMIME' }, rcptTo: ['c@d.example'], rcptParams: [{}],
      body: b(`${text}\r\n`), secure: false, user: null,
    });
  });

  it('passes smtp-server refusals through at MAIL and end of data, and sees only the extensions it advertises', async () => {
    const strict = await startSink({
      hide: ['8BITMIME', 'PIPELINING'], show: ['DSN'],
      refuseSenders: { 'spam@b.example': { code: 553, message: '5.7.1 <spam@b.example>: Sender address rejected' } },
      refuseData: (m) => (m.body.includes('virus') ? { code: 554, message: '5.6.0 Message content rejected' } : undefined),
    });
    try {
      const session = await connect(strict.port);
      expect([...session.extensions.keys()]).toEqual(['SMTPUTF8', 'DSN']);
      expect(formatReply(await session.command('MAIL FROM:<spam@b.example>'))).toBe('553 5.7.1 <spam@b.example>: Sender address rejected');
      await envelope(session);
      expect(formatReply(await session.data(body('a virus\r\n')))).toBe('554 5.6.0 Message content rejected');
      await envelope(session);
      expect((await session.data(body('clean\r\n'))).code).toBe(250);
      expect((await strict.waitForMessages(1)).map((m) => s(m.body))).toEqual(['clean\r\n']);
    } finally {
      await strict.close();
    }
  });

  it('round-trips a 20 MiB random body with dots at line starts, line ends normalised to CRLF (sha256)', async () => {
    let seed = 0x2545f491;
    const rand = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const hash = createHash('sha256');
    let total = 0;
    function* chunks(): Generator<Buffer> {
      while (total < 20 * 1024 * 1024) {
        const parts: Buffer[] = total === 0 ? [b('Subject: random\r\n\r\n')] : [];
        for (let i = 0; i < 400; i++) {
          const bytes = Buffer.alloc(rand(160));
          for (let j = 0; j < bytes.length; j++) bytes[j] = rand(256);
          // random bytes (bare CR and LF included), then a line start with 0-2 dots or a lone "."
          parts.push(bytes, b(['\r\n', '\r\n', '\r\n.', '\r\n..', '\r\n.\r\n', '\n.'][rand(6)] as string));
        }
        if (total > 20 * 1024 * 1024 - 200_000) parts.push(b('\r\n'));
        const chunk = Buffer.concat(parts);
        // no chunk ends in a bare CR, so normalising each one alone gives what the whole body normalises to
        const expected = b(s(chunk).replace(/\r\n|\r|\n/g, '\r\n').replace(/\x00/g, ''));
        hash.update(expected);
        total += expected.length;
        yield chunk;
      }
    }
    const session = await connect(sink.port);
    await envelope(session);
    expect((await session.data(Readable.from(chunks()))).code).toBe(250);
    const [m] = await sink.waitForMessages(1);
    expect(s(m?.body.subarray(-2) ?? Buffer.alloc(0))).toBe('\r\n');
    expect(m?.body.length).toBe(total);
    expect(sha256(m?.body ?? Buffer.alloc(0))).toBe(hash.digest('hex'));
  }, 60_000);

  it('delivers random bodies in random chunks with line ends normalised to CRLF and NUL dropped (property)', async () => {
    const session = await connect(sink.port);
    const lineArb = fc.tuple(
      fc.constantFrom('', '.', '..', '.x', '..x', 'x', 'a.b', '\xff\x00'),
      fc.constantFrom('\r\n', '\r\n', '\n', '\r', ''),
    ).map(([t, e]) => t + e);
    await fc.assert(
      fc.asyncProperty(fc.array(lineArb, { maxLength: 20 }), fc.array(fc.nat(500), { maxLength: 6 }), async (lines, cuts) => {
        const input = b(lines.join(''));
        const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((x, y) => x - y);
        const chunks = [...points, input.length].map((p, i) => input.subarray(i === 0 ? 0 : (points[i - 1] as number), p)).filter((c) => c.length);
        sink.reset();
        await envelope(session);
        expect((await session.data(Readable.from(chunks))).code).toBe(250);
        const [m] = await sink.waitForMessages(1);
        // documented: every bare CR and LF becomes CRLF, NUL is dropped, a body not ending in CRLF gains one
        const n = s(input).replace(/\r\n|\r|\n/g, '\r\n').replace(/\x00/g, '');
        const expected = n === '' || n.endsWith('\r\n') ? n : `${n}\r\n`;
        expect(s(m?.body ?? Buffer.alloc(0))).toBe(expected);
      }),
      { numRuns: 100 },
    );
  }, 60_000);

  it('upgrades with STARTTLS, verifies the certificate against ca, and says EHLO again', async () => {
    const tlsSink = await startSink({ tls: { key, cert } });
    try {
      const session = await connect(tlsSink.port, { requireTls: true, tls: { ca: cert } });
      expect(session.secure).toBe(true);
      expect(session.extensions.has('STARTTLS')).toBe(false);
      await envelope(session);
      expect((await session.data(body('secret\r\n'))).code).toBe(250);
      const [m] = await tlsSink.waitForMessages(1);
      expect([m?.secure, s(m?.body ?? Buffer.alloc(0))]).toEqual([true, 'secret\r\n']);
    } finally {
      await tlsSink.close();
    }
  });

  it('fails at starttls with 421 4.7.0 when the certificate is not trusted', async () => {
    const tlsSink = await startSink({ tls: { key, cert } });
    try {
      expect(await failure(connect(tlsSink.port))).toEqual({
        stage: 'starttls', kind: 'tls', code: null,
        line: `421 4.7.0 Next hop 127.0.0.1:${tlsSink.port} TLS failure at starttls: self-signed certificate`,
      });
    } finally {
      await tlsSink.close();
    }
  });

  it('speaks implicit TLS (smtps) when secure is set', async () => {
    const tlsSink = await startSink({ tls: { key, cert }, implicitTls: true });
    try {
      const session = await connect(tlsSink.port, { secure: true, tls: { ca: cert, servername: 'localhost' } });
      expect(session.secure).toBe(true);
      await envelope(session);
      expect((await session.data(body('x\r\n'))).code).toBe(250);
      expect((await tlsSink.waitForMessages(1))[0]?.secure).toBe(true);
    } finally {
      await tlsSink.close();
    }
  });

  it('authenticates with AUTH PLAIN, or LOGIN when only that is offered, and fails on wrong credentials', async () => {
    const plain = await startSink({ auth: { user: 'relay', pass: 's3cret' } });
    const login = await startSink({ auth: { user: 'relay', pass: 's3cret', methods: ['LOGIN'] } });
    try {
      for (const target of [plain, login]) {
        const session = await connect(target.port, { auth: { user: 'relay', pass: 's3cret' } });
        await envelope(session);
        expect((await session.data(body('x\r\n'))).code).toBe(250);
        expect((await target.waitForMessages(1))[0]?.user).toBe('relay');
      }
      expect(await failure(connect(plain.port, { auth: { user: 'relay', pass: 'wrong' } }))).toEqual({
        stage: 'auth', kind: 'auth', code: 535,
        line: `451 4.7.0 Next hop 127.0.0.1:${plain.port} authentication failed at auth: 535 5.7.8 Authentication credentials invalid`,
      });
    } finally {
      await plain.close();
      await login.close();
    }
  });
});

describe('NextHopSession against Postfix smtp-sink', () => {
  let pf: PostfixSink;
  let discard: PostfixSink;
  beforeAll(async () => {
    pf = await startPostfixSink();
    discard = await startPostfixSink({ dump: false });
  });
  afterAll(async () => {
    await pf.stop();
    await discard.stop();
  });

  it('relays the envelope and a dotted 8-bit body that smtp-sink stores line for line', async () => {
    const session = await connect(pf.port);
    expect(session.extensions.has('PIPELINING')).toBe(true);
    expect(session.extensions.get('AUTH')).toBe('PLAIN LOGIN');
    expect(await session.command('MAIL FROM:<a@b.example> SIZE=12')).toEqual({ code: 250, enhanced: '2.1.0', lines: ['2.1.0 Ok'] });
    expect(await session.command('RCPT TO:<c@d.example> NOTIFY=NEVER')).toEqual({ code: 250, enhanced: '2.1.5', lines: ['2.1.5 Ok'] });
    const reply = await session.data(body('Subject: dots\r\n\r\n.\r\n', '..\r\n.leading\r\n\xff\xfe 8-bit\r', '\n.', '\r\nlast'));
    expect(reply).toEqual({ code: 250, enhanced: '2.0.0', lines: ['2.0.0 Ok'] });
    expect(await session.quit()).toEqual({ code: 221, enhanced: null, lines: ['Bye'] });
    const [d] = await pf.waitForDumps(1);
    expect(d?.heloArgs).toBe('proxy.test');
    expect(d?.mailArgs).toBe('<a@b.example> SIZE=12');
    expect(d?.rcptArgs).toEqual(['<c@d.example> NOTIFY=NEVER']);
    expect(s(d?.body ?? Buffer.alloc(0))).toBe('Subject: dots\n\n.\n..\n.leading\n\xff\xfe 8-bit\n.\nlast\n');
  });

  it('sets TCP_NODELAY on the next-hop socket (else every small command waits for a delayed ACK)', async () => {
    // Asserted on the socket call, not on a duration: a timing bound fails on a busy machine.
    const spy = vi.spyOn(net.Socket.prototype, 'setNoDelay');
    try {
      const session = await connect(discard.port);
      expect(spy.mock.calls).toEqual([[true]]);
      await envelope(session);
      expect((await session.data(body('Subject: small\r\n\r\nhi\r\n'))).code).toBe(250);
      await session.quit();
    } finally {
      spy.mockRestore();
    }
  });

  it('streams a 50 MiB body with flat memory', async () => {
    const session = await connect(discard.port, { dataTimeoutMs: 30_000 });
    await envelope(session);
    const chunk = b('.a line that starts with a dot and needs stuffing\r\n'.repeat(1300)); // ~64 KiB
    let sent = 0;
    const src = new Readable({
      read() {
        sent += chunk.length;
        this.push(sent > 50 * 1024 * 1024 ? null : chunk);
      },
    });
    const before = process.memoryUsage();
    let peakRss = before.rss;
    let peakBuffers = before.arrayBuffers;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers);
    }, 5);
    try {
      expect((await session.data(src)).code).toBe(250);
    } finally {
      clearInterval(sampler);
    }
    expect(sent).toBeGreaterThan(50 * 1024 * 1024);
    // measured: ~3 MiB of Buffers and ~8 MiB RSS; buffering the body would take over 50 MiB
    expect((peakBuffers - before.arrayBuffers) / 2 ** 20).toBeLessThan(16);
    expect((peakRss - before.rss) / 2 ** 20).toBeLessThan(32);
  }, 60_000);
});

describe('NextHopError.toSmtpReply()', () => {
  it.each([
    ['refused', 'connect', 'connection refused', '421 4.4.1 Next hop mx.example:25 unreachable: connection refused'],
    ['timeout', 'rcpt', 'no reply in 200 ms', '451 4.4.2 Next hop mx.example:25 timed out at rcpt'],
    ['closed', 'data-end', 'connection closed by the next hop', '451 4.4.2 Next hop mx.example:25 closed the connection at data-end'],
    ['tls', 'starttls', 'certificate has expired', '421 4.7.0 Next hop mx.example:25 TLS failure at starttls: certificate has expired'],
    ['protocol', 'mail', 'not a reply line: "x\r\ny"', '451 4.5.0 Next hop mx.example:25 protocol error at mail: not a reply line: "x y"'],
    ['auth', 'auth', '535 5.7.8 Authentication failed', '451 4.7.0 Next hop mx.example:25 authentication failed at auth: 535 5.7.8 Authentication failed'],
  ] as const)('maps kind %s to one 4xx line naming the hop and the stage', (kind, stage, detail, line) => {
    const reply = new NextHopError('mx.example:25', stage, kind, detail).toSmtpReply();
    expect(reply.line).toBe(line);
    expect(reply.responseCode === 421 || reply.responseCode === 451).toBe(true);
  });
});

describe('formatReply() and passThrough()', () => {
  it('formats a reply as the client would be sent it and keeps the enhanced code on one line', () => {
    const r: Reply = { code: 451, enhanced: '4.7.1', lines: ['4.7.1 Try again later', '4.7.1 Greylisted'] };
    expect(formatReply(r)).toBe('451-4.7.1 Try again later\r\n451 4.7.1 Greylisted');
    expect(passThrough(r).line).toBe('451 4.7.1 Try again later Greylisted');
    expect(passThrough({ code: 250, enhanced: null, lines: ['Ok'] }).line).toBe('250 Ok');
  });
});
