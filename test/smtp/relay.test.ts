/**
 * Unit tests for src/smtp/relay.ts: RelayLink (one client connection's next-hop session and transaction)
 * and NextHopPool (warm sessions per hop), against a scripted raw-TCP peer on loopback.
 *
 * What is pinned: a session opens only at begin(); the next hop's MAIL/RCPT/DATA replies come back
 * exactly; a session is reused (one connection, several MAILs), with RSET only where a transaction is
 * still open; a pooled session the peer closed is never used; maxIdlePerHop and idleMs are respected;
 * a failed session is never pooled; abort/close mid-DATA closes the connection without the final dot;
 * refused / blackholed / silent next hops give the documented NextHopError replies.
 * Timeouts are small only where a timeout is the thing tested; nothing asserts a duration.
 */
import { PassThrough, Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { SmtpReply } from '../../src/reply.js';
import type { NextHopOptions, NextHopSession } from '../../src/smtp/client.js';
import { NextHopError, passThrough, replyLine } from '../../src/smtp/hop-reply.js';
import { NextHopPool, RelayLink, type HopAddress, type PoolOptions } from '../../src/smtp/relay.js';
import { closedPort, startBlackhole, startFakePeer, type FakePeer, type PeerConnection, type PeerScript } from '../helpers/fake-peer.js';

const s = (buf: Buffer | null): string => (buf ?? Buffer.alloc(0)).toString('latin1');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const body = (...chunks: string[]): Readable => Readable.from(chunks.map((c) => Buffer.from(c, 'latin1')));
const hopOf = (port: number): HopAddress => ({ url: `smtp://127.0.0.1:${port}`, host: '127.0.0.1', port, secure: false });
/** Generous: only reached when something is broken (other suites share this 2-core machine). */
const POLL = { timeout: 10_000, interval: 10 };
const EHLO = 'EHLO proxy.test';

// ---- fixtures, cleaned up after every test ----
const peers: FakePeer[] = [];
const pools: NextHopPool[] = [];
const links: RelayLink[] = [];

async function peerWith(script: PeerScript = {}): Promise<FakePeer> {
  const p = await startFakePeer(script);
  peers.push(p);
  return p;
}

interface Rig {
  pool: NextHopPool;
  /** Every session the pool opened, in order. */
  sessions: NextHopSession[];
  /** onExtensions calls: the hop URL and the keywords. */
  extensionCalls: Array<[string, string[]]>;
  link(): RelayLink;
}

function rig(opts: Partial<PoolOptions> = {}, session: Partial<NextHopOptions> = {}): Rig {
  const extensionCalls: Array<[string, string[]]> = [];
  const pool = new NextHopPool({
    maxIdlePerHop: 8,
    idleMs: 60_000,
    sessionOptions: (hop) => ({
      host: hop.host, port: hop.port, name: 'proxy.test',
      connectTimeoutMs: 10_000, greetingTimeoutMs: 10_000, commandTimeoutMs: 10_000, dataTimeoutMs: 10_000,
      ...session,
    }),
    onExtensions: (hop, ext) => extensionCalls.push([hop.url, [...ext.keys()]]),
    ...opts,
  });
  pools.push(pool);
  const sessions: NextHopSession[] = [];
  const open = pool.open.bind(pool);
  pool.open = async (hop) => {
    const got = await open(hop);
    sessions.push(got);
    return got;
  };
  return {
    pool, sessions, extensionCalls,
    link() {
      const l = new RelayLink(pool);
      links.push(l);
      return l;
    },
  };
}

afterEach(async () => {
  for (const l of links.splice(0)) l.abort();
  await Promise.all(pools.splice(0).map((p) => p.close()));
  await Promise.all(peers.splice(0).map((p) => p.close()));
});

/** The NextHopError a promise rejects with, as { stage, kind, line } (line: what the proxy's client gets). */
async function failure(p: Promise<unknown>): Promise<{ stage: string; kind: string; line: string }> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof NextHopError)) throw err;
    return { stage: err.stage, kind: err.kind, line: err.toSmtpReply().line };
  }
  throw new Error('expected a NextHopError');
}

/** One whole transaction on `link`: MAIL, one RCPT, DATA; returns the final reply's line. */
async function transaction(link: RelayLink, hop: HopAddress, from: string, to: string, text = 'Subject: t\r\n\r\nhi\r\n'): Promise<string> {
  expect((await link.begin(hop, `MAIL FROM:<${from}>`)).code).toBe(250);
  expect((await link.rcpt(`RCPT TO:<${to}>`)).code).toBe(250);
  return replyLine(await link.data(body(text)));
}

const closedSession = (x: NextHopSession): Promise<void> => new Promise((r) => x.onClose(() => r()));

describe('RelayLink opens its session lazily', () => {
  it('opens nothing until begin(); then one session: greeting, EHLO, the exact MAIL line', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const link = r.link();
    await sleep(50);
    expect([peer.connections.length, r.pool.opened, link.extensions.size]).toEqual([0, 0, 0]);
    await expect(link.rcpt('RCPT TO:<b@d.example>')).rejects.toThrow('RelayLink: no transaction open');
    await expect(link.data(body('x\r\n'))).rejects.toThrow('RelayLink: no transaction open');
    expect(peer.connections.length).toBe(0);

    const reply = await link.begin(hop, 'MAIL FROM:<a@b.example> SIZE=12');
    expect(reply).toEqual({ code: 250, enhanced: '2.1.0', lines: ['2.1.0 Ok'] });
    expect(r.pool.opened).toBe(1);
    expect([...link.extensions]).toEqual([['PIPELINING', ''], ['8BITMIME', ''], ['SIZE', '10240000']]);
    expect(r.extensionCalls).toEqual([[hop.url, ['PIPELINING', '8BITMIME', 'SIZE']]]);
    expect(peer.connections.length).toBe(1);
    expect(s((await peer.connection(0)).received)).toBe(`${EHLO}\r\nMAIL FROM:<a@b.example> SIZE=12\r\n`);
  });

  it('builds the MAIL line from the session\'s own extensions when given a function', async () => {
    const peer = await peerWith({ EHLO: '250-fake.peer\r\n250 SMTPUTF8' });
    const r = rig();
    const seen: string[][] = [];
    await r.link().begin(hopOf(peer.port), (ext) => {
      seen.push([...ext.keys()]);
      return `MAIL FROM:<a@b.example>${ext.has('SMTPUTF8') ? ' SMTPUTF8' : ''}${ext.has('SIZE') ? ' SIZE=1' : ''}`;
    });
    expect(seen).toEqual([['SMTPUTF8']]);
    expect((await peer.connection(0)).commands).toEqual([EHLO, 'MAIL FROM:<a@b.example> SMTPUTF8']);
  });
});

describe('RelayLink passes the next hop\'s replies back exactly', () => {
  it('MAIL and RCPT refusals, single- and multi-line, come back as replies (not errors)', async () => {
    const peer = await peerWith({
      MAIL: ['550 5.7.1 <a@b.example>: Sender address rejected: Access denied', '250 2.1.0 Ok'],
      RCPT: ['451-4.3.0 <x@d.example>: Temporary lookup failure\r\n451 4.3.0 try again later', '550 5.1.1 <y@d.example>: Recipient address rejected: User unknown', '250 2.1.5 Ok'],
    });
    const hop = hopOf(peer.port);
    const link = rig().link();
    const mail = await link.begin(hop, 'MAIL FROM:<a@b.example>');
    expect(mail).toEqual({ code: 550, enhanced: '5.7.1', lines: ['5.7.1 <a@b.example>: Sender address rejected: Access denied'] });
    expect(passThrough(mail).line).toBe('550 5.7.1 <a@b.example>: Sender address rejected: Access denied');
    expect(replyLine(await link.begin(hop, 'MAIL FROM:<a@b.example>'))).toBe('250 2.1.0 Ok');
    const r1 = await link.rcpt('RCPT TO:<x@d.example>');
    expect(r1).toEqual({ code: 451, enhanced: '4.3.0', lines: ['4.3.0 <x@d.example>: Temporary lookup failure', '4.3.0 try again later'] });
    expect(passThrough(r1).line).toBe('451 4.3.0 <x@d.example>: Temporary lookup failure try again later');
    expect(passThrough(await link.rcpt('RCPT TO:<y@d.example>')).line).toBe('550 5.1.1 <y@d.example>: Recipient address rejected: User unknown');
    expect(replyLine(await link.rcpt('RCPT TO:<z@d.example>'))).toBe('250 2.1.5 Ok');
    expect(replyLine(await link.data(body('Subject: t\r\n\r\n.dot\r\nend\r\n')))).toBe('250 2.0.0 Ok: queued');
    const conn = await peer.connection(0);
    // a refused MAIL still counts as a transaction begun: the next begin() resets first (harmless)
    expect(conn.commands).toEqual([EHLO, 'MAIL FROM:<a@b.example>', 'RSET', 'MAIL FROM:<a@b.example>', 'RCPT TO:<x@d.example>', 'RCPT TO:<y@d.example>', 'RCPT TO:<z@d.example>', 'DATA']);
    expect(conn.messages.map(s)).toEqual(['Subject: t\r\n\r\n..dot\r\nend\r\n.\r\n']);
  });

  it.each([
    ['450 4.7.1 Service unavailable, try again', 450, '4.7.1'],
    ['554 5.7.1 Message rejected as spam', 554, '5.7.1'],
    ['250 2.0.0 Ok: queued as 4F2A1B', 250, '2.0.0'],
  ])('the reply after the end of data ("%s") comes back unchanged', async (text, code, enhanced) => {
    const peer = await peerWith({ END: text });
    const link = rig().link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@b.example>');
    await link.rcpt('RCPT TO:<c@d.example>');
    const reply = await link.data(body('x\r\n'));
    expect(reply).toEqual({ code, enhanced, lines: [text.slice(4)] });
    expect(replyLine(reply)).toBe(text);
  });

  it('a refusal of DATA itself (no 354) comes back, the body is left unread and nothing is sent', async () => {
    const peer = await peerWith({ DATA: '554 5.5.1 Error: no valid recipients' });
    const link = rig().link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@b.example>');
    await link.rcpt('RCPT TO:<c@d.example>');
    const src = body('Subject: x\r\n\r\nhello\r\n');
    expect(replyLine(await link.data(src))).toBe('554 5.5.1 Error: no valid recipients');
    expect(src.readableFlowing).toBe(null);
    const conn = await peer.connection(0);
    expect([conn.messages.length, conn.pendingData, s(conn.received).includes('hello')]).toEqual([0, null, false]);
  });

  it('a 5xx the next hop sends mid-body comes back; that session is closed and never pooled', async () => {
    const peer = await peerWith({ BODY: { afterBytes: 1, action: { raw: '552 5.3.4 Message size exceeds fixed limit\r\n', then: 'drop' } } });
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@b.example>');
    await link.rcpt('RCPT TO:<c@d.example>');
    const src = new PassThrough();
    src.write('first part\r\n');
    const result = link.data(src);
    const conn = await peer.connection(0);
    await expect.poll(() => s(conn.pendingData), POLL).toContain('first part');
    src.end('second part\r\n');
    expect(replyLine(await result)).toBe('552 5.3.4 Message size exceeds fixed limit');
    link.close();
    await conn.closed;
    expect(r.pool.idleCount()).toBe(0);
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });
});

describe('RelayLink and NextHopPool reuse sessions', () => {
  it('a second transaction on the same link uses the same connection, with no RSET after a completed DATA', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const link = r.link();
    expect(await transaction(link, hop, 'a@x.example', 'b@y.example')).toBe('250 2.0.0 Ok: queued');
    expect(await transaction(link, hop, 'c@x.example', 'd@y.example')).toBe('250 2.0.0 Ok: queued');
    expect(peer.connections.length).toBe(1);
    expect(r.pool.opened).toBe(1);
    expect(peer.connections[0]!.commands).toEqual([
      EHLO, 'MAIL FROM:<a@x.example>', 'RCPT TO:<b@y.example>', 'DATA', 'MAIL FROM:<c@x.example>', 'RCPT TO:<d@y.example>', 'DATA',
    ]);
    expect(peer.connections[0]!.messages.length).toBe(2);
  });

  it('begin() while a transaction is open (MAIL/RCPT accepted, no DATA) sends RSET first', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const link = rig().link();
    await link.begin(hop, 'MAIL FROM:<a@x.example>');
    await link.rcpt('RCPT TO:<b@y.example>');
    expect(replyLine(await link.begin(hop, 'MAIL FROM:<c@x.example>'))).toBe('250 2.1.0 Ok');
    expect((await peer.connection(0)).commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>', 'RCPT TO:<b@y.example>', 'RSET', 'MAIL FROM:<c@x.example>']);
    expect(peer.connections.length).toBe(1);
  });

  it('when that RSET fails the session is dropped and the new transaction gets a fresh connection', async () => {
    const peer = await peerWith({ RSET: { then: 'drop' } });
    const hop = hopOf(peer.port);
    const r = rig();
    const link = r.link();
    await link.begin(hop, 'MAIL FROM:<a@x.example>');
    expect(replyLine(await link.begin(hop, 'MAIL FROM:<c@x.example>'))).toBe('250 2.1.0 Ok');
    expect(r.pool.opened).toBe(2);
    const [first, second] = [await peer.connection(0), await peer.connection(1)];
    await first.closed;
    expect(first.commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>', 'RSET']);
    expect(second.commands).toEqual([EHLO, 'MAIL FROM:<c@x.example>']);
  });

  it('a client that leaves after a completed transaction pools its session; the next client reuses it', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    expect(await transaction(one, hop, 'a@x.example', 'b@y.example')).toBe('250 2.0.0 Ok: queued');
    one.close();
    expect(r.pool.idleCount()).toBe(1);
    const two = r.link();
    expect(await transaction(two, hop, 'c@x.example', 'd@y.example')).toBe('250 2.0.0 Ok: queued');
    expect(r.pool.idleCount()).toBe(0);
    expect([peer.connections.length, r.pool.opened, r.extensionCalls.length]).toEqual([1, 1, 1]);
    const commands = peer.connections[0]!.commands;
    expect(commands.filter((c) => c.startsWith('MAIL '))).toEqual(['MAIL FROM:<a@x.example>', 'MAIL FROM:<c@x.example>']);
    expect(commands).not.toContain('RSET');
    expect(peer.connections[0]!.isClosed).toBe(false);
  });

  it('a client that leaves with MAIL/RCPT accepted but no DATA: RSET, then the session is pooled and reused', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    await one.begin(hop, 'MAIL FROM:<a@x.example>');
    await one.rcpt('RCPT TO:<b@y.example>');
    one.close();
    await expect.poll(() => r.pool.idleCount(), POLL).toBe(1);
    const two = r.link();
    expect(replyLine(await two.begin(hop, 'MAIL FROM:<c@x.example>'))).toBe('250 2.1.0 Ok');
    expect(peer.connections.length).toBe(1);
    expect(peer.connections[0]!.commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>', 'RCPT TO:<b@y.example>', 'RSET', 'MAIL FROM:<c@x.example>']);
  });

  it('when the RSET at leave is refused the session is aborted, not pooled (the peer sees the close, no QUIT)', async () => {
    const peer = await peerWith({ RSET: '421 4.3.2 Service shutting down' });
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>');
    link.close();
    const conn = await peer.connection(0);
    await conn.closed;
    expect(conn.commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>', 'RSET']);
    expect(r.pool.idleCount()).toBe(0);
  });

  it('a pooled session the peer closed while idle is not used: a fresh connection, and the transaction succeeds', async () => {
    // every connection drops right after its first 250 to the end of data
    const peer = await peerWith({ END: [{ reply: '250 2.0.0 Ok: queued', then: 'drop' }, '250 2.0.0 Ok: queued'] });
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    expect(await transaction(one, hop, 'a@x.example', 'b@y.example')).toBe('250 2.0.0 Ok: queued');
    one.close();
    expect(r.pool.idleCount()).toBe(1); // pooled before the peer's close arrives
    await closedSession(r.sessions[0]!);
    await (await peer.connection(0)).closed;
    const two = r.link();
    expect(await transaction(two, hop, 'c@x.example', 'd@y.example')).toBe('250 2.0.0 Ok: queued');
    expect([peer.connections.length, r.pool.opened]).toEqual([2, 2]);
    expect(peer.connections[0]!.commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>', 'RCPT TO:<b@y.example>', 'DATA']);
    expect(peer.connections[1]!.commands).toEqual([EHLO, 'MAIL FROM:<c@x.example>', 'RCPT TO:<d@y.example>', 'DATA']);
  });

  it('a pooled session found dead at MAIL is replaced once by a fresh one; the client sees the fresh 250', async () => {
    // on every connection the second MAIL is met with a close instead of a reply
    const peer = await peerWith({ MAIL: ['250 2.1.0 Ok', { then: 'drop' }] });
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    await transaction(one, hop, 'a@x.example', 'b@y.example');
    one.close();
    const two = r.link();
    expect(await two.begin(hop, 'MAIL FROM:<c@x.example>')).toEqual({ code: 250, enhanced: '2.1.0', lines: ['2.1.0 Ok'] });
    expect(r.pool.opened).toBe(2);
    expect((await peer.connection(0)).commands.slice(-1)).toEqual(['MAIL FROM:<c@x.example>']);
    expect((await peer.connection(1)).commands).toEqual([EHLO, 'MAIL FROM:<c@x.example>']);
    expect(replyLine(await two.rcpt('RCPT TO:<d@y.example>'))).toBe('250 2.1.5 Ok');
  });

  it('the replacement is tried only once: if it dies at MAIL too, the transaction fails with closed at mail', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    await transaction(one, hop, 'a@x.example', 'b@y.example');
    one.close();
    peer.script = { MAIL: { then: 'drop' } };
    const two = r.link();
    expect(await failure(two.begin(hop, 'MAIL FROM:<c@x.example>'))).toEqual({
      stage: 'mail', kind: 'closed', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} closed the connection at mail`,
    });
    expect([r.pool.opened, peer.connections.length, r.pool.idleCount()]).toEqual([2, 2, 0]);
  });

  it('a fresh session that dies at MAIL is not retried', async () => {
    const peer = await peerWith({ MAIL: { then: 'drop' } });
    const r = rig();
    const link = r.link();
    expect(await failure(link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>'))).toEqual({
      stage: 'mail', kind: 'closed', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} closed the connection at mail`,
    });
    expect([r.pool.opened, peer.connections.length]).toEqual([1, 1]);
    await expect(link.rcpt('RCPT TO:<b@y.example>')).rejects.toThrow('RelayLink: no transaction open');
  });

  it('switching hops after a completed transaction pools the first hop\'s session', async () => {
    const [a, b] = [await peerWith(), await peerWith()];
    const r = rig();
    const link = r.link();
    await transaction(link, hopOf(a.port), 'a@x.example', 'b@y.example');
    expect(replyLine(await link.begin(hopOf(b.port), 'MAIL FROM:<c@x.example>'))).toBe('250 2.1.0 Ok');
    expect(r.pool.idleCount()).toBe(1);
    await r.link().begin(hopOf(a.port), 'MAIL FROM:<e@x.example>');
    expect([a.connections.length, b.connections.length, r.pool.opened]).toEqual([1, 1, 2]);
    expect(a.connections[0]!.commands.slice(-1)).toEqual(['MAIL FROM:<e@x.example>']);
  });
});

describe('NextHopPool limits', () => {
  it('keeps at most maxIdlePerHop idle sessions per hop; a release beyond that QUITs the session', async () => {
    const [a, b] = [await peerWith(), await peerWith()];
    const r = rig({ maxIdlePerHop: 2 });
    const ls = [r.link(), r.link(), r.link()];
    for (const [i, l] of ls.entries()) await l.begin(hopOf(a.port), `MAIL FROM:<s${i}@x.example>`);
    for (const [i, l] of ls.entries()) expect(await (l.rcpt(`RCPT TO:<r${i}@y.example>`).then(() => l.data(body('x\r\n'))).then(replyLine))).toBe('250 2.0.0 Ok: queued');
    expect([a.connections.length, r.pool.opened]).toEqual([3, 3]);
    for (const l of ls) l.close();
    expect(r.pool.idleCount()).toBe(2);
    const third = await a.connection(2);
    await third.closed;
    expect(third.commands.slice(-1)).toEqual(['QUIT']);
    expect([a.connections[0]!.isClosed, a.connections[1]!.isClosed]).toEqual([false, false]);

    // the limit is per hop: another hop keeps its own
    const lb = [r.link(), r.link()];
    for (const l of lb) await transaction(l, hopOf(b.port), 'a@x.example', 'b@y.example');
    for (const l of lb) l.close();
    expect(r.pool.idleCount()).toBe(4);

    // three new clients of hop a: two warm sessions, one new connection
    const again = [r.link(), r.link(), r.link()];
    for (const l of again) expect(replyLine(await l.begin(hopOf(a.port), 'MAIL FROM:<n@x.example>'))).toBe('250 2.1.0 Ok');
    expect([a.connections.length, r.pool.opened, r.pool.idleCount()]).toEqual([4, 6, 2]);
  });

  it('maxIdlePerHop 0 pools nothing: every released session is QUIT', async () => {
    const peer = await peerWith();
    const r = rig({ maxIdlePerHop: 0 });
    const link = r.link();
    await transaction(link, hopOf(peer.port), 'a@x.example', 'b@y.example');
    link.close();
    const conn = await peer.connection(0);
    await conn.closed;
    expect([r.pool.idleCount(), conn.commands.slice(-1)]).toEqual([0, ['QUIT']]);
  });

  it('an idle session is QUIT after idleMs and leaves the pool', async () => {
    const peer = await peerWith();
    const r = rig({ idleMs: 50 });
    const link = r.link();
    await transaction(link, hopOf(peer.port), 'a@x.example', 'b@y.example');
    link.close();
    const conn = await peer.connection(0);
    await conn.closed;
    expect(conn.commands.slice(-1)).toEqual(['QUIT']);
    expect(r.pool.idleCount()).toBe(0);
    await r.link().begin(hopOf(peer.port), 'MAIL FROM:<c@x.example>');
    expect([peer.connections.length, r.pool.opened]).toEqual([2, 2]);
  });

  it('close() QUITs every idle session; a session released afterwards is QUIT at once', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const [one, two] = [r.link(), r.link()];
    await transaction(one, hop, 'a@x.example', 'b@y.example');
    await transaction(two, hop, 'c@x.example', 'd@y.example');
    one.close();
    await r.pool.close();
    const first = await peer.connection(0);
    await first.closed;
    expect([first.commands.slice(-1), r.pool.idleCount()]).toEqual([['QUIT'], 0]);
    two.close();
    const second = await peer.connection(1);
    await second.closed;
    expect([second.commands.slice(-1), r.pool.idleCount()]).toEqual([['QUIT'], 0]);
  });

  it('release() of a closed session is a no-op', async () => {
    const peer = await peerWith();
    const r = rig();
    const session = await r.pool.open(hopOf(peer.port));
    session.abort();
    r.pool.release(hopOf(peer.port), session);
    expect(r.pool.idleCount()).toBe(0);
  });
});

describe('a failed session is never returned to the pool', () => {
  it('the peer dropping at RCPT: 451 closed at rcpt, the transaction is over, the next client connects afresh', async () => {
    const peer = await peerWith({ RCPT: { then: 'drop' } });
    const hop = hopOf(peer.port);
    const r = rig();
    const link = r.link();
    await link.begin(hop, 'MAIL FROM:<a@x.example>');
    expect(await failure(link.rcpt('RCPT TO:<b@y.example>'))).toEqual({
      stage: 'rcpt', kind: 'closed', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} closed the connection at rcpt`,
    });
    link.close();
    expect(r.pool.idleCount()).toBe(0);
    await r.link().begin(hop, 'MAIL FROM:<c@x.example>');
    expect([peer.connections.length, r.pool.opened]).toEqual([2, 2]);
  });

  it('a MAIL that times out: 451 timed out at mail, the connection is closed, nothing pooled, no retry', async () => {
    const peer = await peerWith({ MAIL: { then: 'stall' } });
    const r = rig({}, { commandTimeoutMs: 300 });
    const link = r.link();
    expect(await failure(link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>'))).toEqual({
      stage: 'mail', kind: 'timeout', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} timed out at mail`,
    });
    await (await peer.connection(0)).closed;
    link.close();
    expect([r.pool.idleCount(), r.pool.opened, peer.connections.length]).toEqual([0, 1, 1]);
  });

  it('the peer dropping mid-body: 451 closed at body, nothing pooled', async () => {
    const peer = await peerWith({ BODY: { afterBytes: 64 * 1024, action: 'drop' } });
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>');
    await link.rcpt('RCPT TO:<b@y.example>');
    // 4 MiB: far more than the socket buffers hold, so the close is seen while the body is still going
    const src = Readable.from(Array.from({ length: 256 }, () => Buffer.alloc(16 * 1024, 0x61)));
    expect(await failure(link.data(src))).toEqual({
      stage: 'body', kind: 'closed', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} closed the connection at body`,
    });
    link.close();
    expect(r.pool.idleCount()).toBe(0);
    expect((await peer.connection(0)).messages).toEqual([]);
  });

  it('a body that errors mid-way: data() rejects with its error, the connection is closed without the final dot', async () => {
    const peer = await peerWith();
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>');
    await link.rcpt('RCPT TO:<b@y.example>');
    const src = new PassThrough();
    const result = link.data(src);
    src.write('half a message\r\n');
    const conn = await peer.connection(0);
    await expect.poll(() => s(conn.pendingData), POLL).toBe('half a message\r\n');
    src.destroy(new Error('client vanished'));
    await expect(result).rejects.toThrow('client vanished');
    await conn.closed;
    link.close();
    expect([r.pool.idleCount(), conn.messages.length]).toEqual([0, 0]);
    expect(s(conn.received)).not.toContain('\r\n.\r\n');
  });
});

describe('abort and leaving mid-DATA close the connection', () => {
  it('close() while the body is being sent aborts: the peer sees the close and never the end of data', async () => {
    const peer = await peerWith();
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>');
    await link.rcpt('RCPT TO:<b@y.example>');
    const src = new PassThrough();
    const result = link.data(src).then(() => 'resolved', (e: unknown) => (e instanceof NextHopError ? `${e.stage}/${e.kind}` : String(e)));
    src.write('Subject: cut off\r\n\r\nfirst line\r\n');
    const conn = await peer.connection(0);
    await expect.poll(() => s(conn.pendingData), POLL).toContain('first line');
    link.close();
    await conn.closed;
    src.end('.\r\nrest\r\n');
    expect(await result).toBe('body/closed');
    expect(s(conn.pendingData)).toBe('Subject: cut off\r\n\r\nfirst line\r\n');
    expect([conn.messages.length, conn.commands.includes('QUIT'), conn.commands.includes('RSET')]).toEqual([0, false, false]);
    expect(r.pool.idleCount()).toBe(0);
  });

  it('abort() closes the connection at once (no QUIT, no RSET); the next begin() connects afresh', async () => {
    const peer = await peerWith();
    const hop = hopOf(peer.port);
    const r = rig();
    const link = r.link();
    await link.begin(hop, 'MAIL FROM:<a@x.example>');
    link.abort();
    const conn = await peer.connection(0);
    await conn.closed;
    expect(conn.commands).toEqual([EHLO, 'MAIL FROM:<a@x.example>']);
    link.close();
    expect(r.pool.idleCount()).toBe(0);
    await link.begin(hop, 'MAIL FROM:<c@x.example>');
    expect([peer.connections.length, r.pool.opened]).toEqual([2, 2]);
  });

  it('an SmtpReply from beforeEnd is thrown as it is and the next hop never gets the final dot', async () => {
    const peer = await peerWith();
    const r = rig();
    const link = r.link();
    await link.begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>');
    await link.rcpt('RCPT TO:<b@y.example>');
    const refusal = new SmtpReply(550, '5.7.1', 'Delivery status report to an untagged address refused as backscatter (test)');
    await expect(link.data(Readable.from([Buffer.from('Subject: x\r\n\r\n'), Buffer.from('body\r\n')]), () => refusal)).rejects.toBe(refusal);
    const conn = await peer.connection(0);
    await conn.closed;
    link.close();
    // Everything but the last chunk, which waits for the terminator and is never sent.
    expect(s(conn.pendingData)).toBe('Subject: x\r\n\r\n');
    expect([conn.messages.length, r.pool.idleCount()]).toEqual([0, 0]);
  });
});

describe('transport failures reaching the next hop', () => {
  it('connection refused: 421 4.4.1 naming the hop; no session, no transaction', async () => {
    const port = await closedPort();
    const r = rig();
    const link = r.link();
    expect(await failure(link.begin(hopOf(port), 'MAIL FROM:<a@x.example>'))).toEqual({
      stage: 'connect', kind: 'refused', line: `421 4.4.1 Next hop 127.0.0.1:${port} unreachable: connection refused`,
    });
    expect([r.pool.opened, r.pool.idleCount()]).toEqual([0, 0]);
    await expect(link.rcpt('RCPT TO:<b@y.example>')).rejects.toThrow('RelayLink: no transaction open');
  });

  it('a blackholed hop (SYN never answered): 451 4.4.2 timed out at connect', async () => {
    const hole = await startBlackhole();
    try {
      const r = rig({}, { connectTimeoutMs: 300 });
      expect(await failure(r.link().begin(hopOf(hole.port), 'MAIL FROM:<a@x.example>'))).toEqual({
        stage: 'connect', kind: 'timeout', line: `451 4.4.2 Next hop 127.0.0.1:${hole.port} timed out at connect`,
      });
      expect(r.pool.opened).toBe(0);
    } finally {
      await hole.close();
    }
  });

  it('a hop that accepts but never greets: 451 4.4.2 timed out at greeting, and the connection is closed', async () => {
    const peer = await peerWith({ GREETING: { then: 'stall' } });
    const r = rig({}, { greetingTimeoutMs: 300 });
    expect(await failure(r.link().begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>'))).toEqual({
      stage: 'greeting', kind: 'timeout', line: `451 4.4.2 Next hop 127.0.0.1:${peer.port} timed out at greeting`,
    });
    const conn = await peer.connection(0);
    await conn.closed;
    expect([conn.commands, r.pool.opened]).toEqual([[], 0]);
  });

  it('a 554 greeting: 421 4.4.1 unreachable with the greeting, nothing sent', async () => {
    const peer = await peerWith({ GREETING: '554 5.3.2 No service here' });
    const r = rig();
    expect(await failure(r.link().begin(hopOf(peer.port), 'MAIL FROM:<a@x.example>'))).toEqual({
      stage: 'greeting', kind: 'refused', line: `421 4.4.1 Next hop 127.0.0.1:${peer.port} unreachable: greeting 554 5.3.2 No service here`,
    });
    const conn = await peer.connection(0);
    await conn.closed;
    expect(conn.commands).toEqual([]);
  });
});

describe('known bugs', () => {
  /**
   * A next hop that, like Postfix, keeps its transaction open when it refuses DATA itself (a non-354 reply:
   * smtpd_data_restrictions, a milter at DATA, "554 5.5.1 Error: no valid recipients") and answers a new
   * MAIL in that state with "503 5.5.1 Error: nested MAIL command" (Postfix smtpd.c data_cmd() returns
   * without mail_reset()).
   */
  function postfixLike(): PeerScript {
    const open = new WeakSet<PeerConnection>();
    return {
      MAIL: (_line, conn) => {
        if (open.has(conn)) return '503 5.5.1 Error: nested MAIL command';
        open.add(conn);
        return '250 2.1.0 Ok';
      },
      RSET: (_line, conn) => {
        open.delete(conn);
        return '250 2.0.0 Ok';
      },
      DATA: '554 5.7.1 <DATA>: Data command rejected: Improper use of SMTP command pipelining',
      END: (_line, conn) => {
        open.delete(conn);
        return '250 2.0.0 Ok: queued';
      },
    };
  }

  // Found by this test: any reply to DATA ended the link's transaction, also a refusal of DATA itself,
  // after which the next hop's MAIL transaction is still open; the next begin() on that session (on this
  // link or another client's, through the pool) sent MAIL without RSET and got "503 5.5.1 Error: nested
  // MAIL command". A refused DATA now leaves the session to be RSET first.
  it('after the next hop refuses DATA (no 354), the session is RSET before its next MAIL', async () => {
    const peer = await peerWith(postfixLike());
    const hop = hopOf(peer.port);
    const r = rig();
    const one = r.link();
    await one.begin(hop, 'MAIL FROM:<a@x.example>');
    await one.rcpt('RCPT TO:<b@y.example>');
    expect(replyLine(await one.data(body('x\r\n')))).toBe('554 5.7.1 <DATA>: Data command rejected: Improper use of SMTP command pipelining');
    // Again on the same link: RSET, then MAIL.
    expect(replyLine(await one.begin(hop, 'MAIL FROM:<a2@x.example>'))).toBe('250 2.1.0 Ok');
    await one.rcpt('RCPT TO:<b@y.example>');
    expect(replyLine(await one.data(body('x\r\n')))).toBe('554 5.7.1 <DATA>: Data command rejected: Improper use of SMTP command pipelining');
    one.close(); // the client gives up; the session is RSET, then pooled
    await expect.poll(() => r.pool.idleCount(), POLL).toBe(1);
    const two = r.link();
    const reply = await two.begin(hop, 'MAIL FROM:<c@x.example>');
    expect(replyLine(reply)).toBe('250 2.1.0 Ok');
    expect(peer.connections.length).toBe(1);
    expect(peer.connections[0]!.commands.filter((c) => !/^(EHLO|HELO)/.test(c))).toEqual([
      'MAIL FROM:<a@x.example>', 'RCPT TO:<b@y.example>', 'DATA', 'RSET', 'MAIL FROM:<a2@x.example>', 'RCPT TO:<b@y.example>', 'DATA', 'RSET', 'MAIL FROM:<c@x.example>',
    ]);
  });
});
