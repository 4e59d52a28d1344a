/**
 * Fault injection on the client side: clients that vanish mid-transaction, slow-drip clients, clients
 * that fall silent, connection floods past limits.maxClients, and whole transactions pipelined in one
 * write. Same accounting as the next-hop faults: every 250 after DATA matches exactly one message the
 * next hop acknowledged, every other outcome (a refusal, or a client that vanished) matches none.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { FAULT_TIMEOUTS, startRig, type Role } from '../helpers/fault-rig.js';
import { Ledger, sendMessage, tokenOf } from '../helpers/ledger.js';
import { startSink } from '../helpers/sink.js';
import { startTestProxy } from '../helpers/proxy.js';
import { talk, type Talk } from '../helpers/talk.js';
import type { Proxy } from '../../src/proxy.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const who = (role: Role) => (role === 'outbound'
  ? { from: 'alice@example.com', to: 'b@example.net' }
  : { from: 'friend@example.net', to: 'alice@example.com' });
const CLEAN = { lost: [], duplicated: [], phantom: [] };
const TERMINATOR = Buffer.from('\r\n.\r\n');

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(5);
}

describe.each(['outbound', 'inbound'] as const)('%s: a client that vanishes', (role) => {
  const cuts: Array<{ name: string; after: (token: string, l: Ledger) => string }> = [
    { name: 'right after the 354', after: () => '' },
    { name: 'after the header block', after: (tok) => `From: a@example.com\r\nSubject: fault-token ${tok}\r\n\r\n` },
    { name: 'after 200 KiB of body', after: (tok, l) => l.body(tok, `${'z'.repeat(98)}\r\n`.repeat(2000)) },
    { name: 'in the middle of a CRLF.CRLF (after CRLF.)', after: (tok, l) => `${l.body(tok)}.` },
  ];
  for (const cut of cuts) {
    it.concurrent(`${cut.name}: the next hop never sees the end of the message, and the proxy goes on`, async () => {
      const ledger = new Ledger(role);
      const rig = await startRig(role, { END: ledger.ackEnd() });
      try {
        const { from, to } = who(role);
        const t = await rig.session();
        const token = ledger.token();
        ledger.tell(token, null);
        expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
        expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
        t.write('DATA\r\n');
        expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
        const sent = cut.after(token, ledger);
        if (sent) t.write(sent);
        await sleep(100);
        t.destroy();
        // the proxy aborts the next-hop session it was streaming into
        const conn = rig.peer.connections.find((c) => c.commands.some((x) => x.startsWith('DATA')));
        expect(conn).toBeDefined();
        await until(() => conn!.isClosed);
        expect(conn!.isClosed).toBe(true);
        expect(conn!.messages).toHaveLength(0);
        const afterData = conn!.received.subarray(conn!.received.indexOf(Buffer.from('DATA\r\n')) + 6);
        expect(afterData.includes(TERMINATOR)).toBe(false);
        // a fresh client is served
        const u = await rig.session();
        expect((await sendMessage(u, ledger, { from, to: [to] })).end).toBe('250 2.0.0 Ok: queued as FAKE');
        await u.quit();
        expect(ledger.audit()).toEqual(CLEAN);
        expect(ledger.acknowledged()).toHaveLength(1);
      } finally {
        await rig.close();
      }
    });
  }

  it.concurrent('between RCPT and DATA: the next-hop session is reset and reused, nothing is delivered', async () => {
    const ledger = new Ledger(role);
    const rig = await startRig(role, { END: ledger.ackEnd() });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
      t.destroy();
      await until(() => rig.peer.connections.some((c) => c.commands.includes('RSET')) && rig.proxy.pool.idleCount() === 1);
      const used = rig.peer.connections.filter((c) => c.commands.some((x) => x.startsWith('MAIL')));
      expect(used).toHaveLength(1);
      expect(used[0]!.commands.slice(-1)).toEqual(['RSET']);
      expect(used[0]!.isClosed).toBe(false);
      const u = await rig.session();
      expect((await sendMessage(u, ledger, { from, to: [to] })).end).toBe('250 2.0.0 Ok: queued as FAKE');
      await u.quit();
      // the warm session was reused: still one next-hop connection with a transaction on it
      expect(rig.peer.connections.filter((c) => c.commands.some((x) => x.startsWith('MAIL')))).toHaveLength(1);
      expect(ledger.audit()).toEqual(CLEAN);
    } finally {
      await rig.close();
    }
  });
});

describe('slow clients', () => {
  it.concurrent('outbound: commands and a 64-piece body dripped over ~1.3 s (longer than dataMs) arrive byte for byte, once', async () => {
    const sink = await startSink();
    const ledger = new Ledger('drip');
    ledger.watch(sink);
    const { proxy } = await startTestProxy({ timeouts: FAULT_TIMEOUTS, outbound: { relay: `smtp://127.0.0.1:${sink.port}` } });
    try {
      const t = talk(proxy.outbound.port);
      await t.greeting;
      const drip = async (s: string, pause: number) => { for (const ch of s) { t.write(ch); await sleep(pause); } };
      await drip('EHLO slow.client.test\r\n', 2);
      expect(await t.reply()).toMatch(/^250-/);
      await drip('MAIL FROM:<alice@example.com>\r\n', 2);
      expect(await t.reply()).toBe('250 Accepted');
      await drip('RCPT TO:<b@example.net>\r\n', 2);
      expect(await t.reply()).toBe('250 Accepted');
      t.write('DATA\r\n');
      expect(await t.reply()).toMatch(/^354 /);
      const token = ledger.token();
      const body = ledger.body(token, Array.from({ length: 40 }, (_, i) => `line ${i} ${'w'.repeat(i * 3)}\r\n`).join(''));
      const pieces = 64;
      const size = Math.ceil(body.length / pieces);
      for (let i = 0; i < body.length; i += size) {
        t.write(body.slice(i, i + size));
        await sleep(20);
      }
      t.write('.\r\n');
      const end = await t.reply();
      ledger.tell(token, end);
      expect(end).toBe('250 Ok: queued as sink');
      await t.quit();
      const [m] = await sink.waitForMessages(1);
      expect(m!.body.toString('latin1').endsWith(body)).toBe(true);
      expect(ledger.audit()).toEqual(CLEAN);
    } finally {
      await proxy.close(50);
      await sink.close();
    }
  });

  for (const role of ['outbound', 'inbound'] as const) {
    it.concurrent(`${role}: a client silent mid-body for longer than clientIdleMs gets 421 and is closed; nothing is delivered`, async () => {
      const ledger = new Ledger(role);
      const rig = await startRig(role, { END: ledger.ackEnd() });
      try {
        const { from, to } = who(role);
        const t = await rig.session();
        const token = ledger.token();
        ledger.tell(token, null);
        expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
        expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
        t.write('DATA\r\n');
        expect(await t.reply()).toMatch(/^354 /);
        t.write(`Subject: fault-token ${token}\r\n\r\nhalf a message\r\n`);
        const started = Date.now();
        const reply = await t.reply();
        ledger.tell(token, reply);
        expect(reply).toBe('421 Timeout - closing connection');
        expect(Date.now() - started).toBeGreaterThanOrEqual(FAULT_TIMEOUTS.clientIdleMs - 100);
        await t.closed;
        const conn = rig.peer.connections.find((c) => c.commands.includes('DATA'))!;
        await until(() => conn.isClosed);
        expect(conn.isClosed).toBe(true);
        expect(conn.messages).toHaveLength(0);
        expect(ledger.audit()).toEqual(CLEAN);
      } finally {
        await rig.close();
      }
    });
  }
});

describe.each(['outbound', 'inbound'] as const)('%s: a client that dribbles DATA', (role) => {
  const cases = [
    {
      name: 'past timeouts.clientDataMs',
      over: { timeouts: { ...FAULT_TIMEOUTS, clientDataMs: 2000, dataGraceMs: 500 }, limits: { minDataRate: 0 } },
      reply: '421 4.4.2 Message transfer too slow (not complete after 2 s); closing connection',
      within: [1900, 3500],
    },
    {
      name: 'below limits.minDataRate after timeouts.dataGraceMs',
      over: { timeouts: { ...FAULT_TIMEOUTS, dataGraceMs: 600 }, limits: { minDataRate: 1000 } },
      reply: '421 4.4.2 Message transfer too slow (below 1000 bytes/s); closing connection',
      within: [550, 2000],
    },
  ];
  for (const c of cases) {
    it.concurrent(`${c.name}: gets one 421 line and is closed; the next hop never sees the end; the proxy goes on`, async () => {
      const ledger = new Ledger(`slow-${role}`);
      const rig = await startRig(role, { END: ledger.ackEnd() }, c.over);
      try {
        const { from, to } = who(role);
        const t = await rig.session();
        expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
        expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
        t.write('DATA\r\n');
        expect(await t.reply()).toBe('354 End data with <CR><LF>.<CR><LF>');
        const started = Date.now();
        let stop = false;
        void (async () => {
          t.write('Subject: slow\r\n\r\n');
          // 20 bytes/s, well below any rate, for at most 5 s (bounded)
          for (let i = 0; i < 100 && !stop; i++) {
            t.write('x');
            await sleep(50);
          }
        })().catch(() => undefined);
        const line = await t.reply();
        stop = true;
        const took = Date.now() - started;
        expect(line).toBe(c.reply);
        expect(took).toBeGreaterThanOrEqual(c.within[0]!);
        expect(took).toBeLessThan(c.within[1]!);
        await t.closed;
        const conn = rig.peer.connections.find((x) => x.commands.some((cmd) => cmd.startsWith('DATA')));
        expect(conn).toBeDefined();
        await until(() => conn!.isClosed);
        expect(conn!.messages).toHaveLength(0);
        expect(conn!.received.includes(TERMINATOR)).toBe(false);
        const u = await rig.session();
        expect((await sendMessage(u, ledger, { from, to: [to] })).end).toBe('250 2.0.0 Ok: queued as FAKE');
        await u.quit();
        expect(ledger.audit()).toEqual(CLEAN);
      } finally {
        await rig.close();
      }
    });
  }
});

/** The first line another loopback address (127.0.0.2) gets, and its socket. */
function greetFrom(port: number, localAddress: string): Promise<{ line: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress });
    let buf = '';
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      const i = buf.indexOf('\r\n');
      if (i >= 0) resolve({ line: buf.slice(0, i), socket });
    });
    socket.on('error', reject);
  });
}

describe.each(['outbound', 'inbound'] as const)('%s: one client address past limits.maxClientsPerIp', (role) => {
  it.concurrent('its next connection gets 421 4.7.0 and is closed; other addresses still get in; a slot freed is reused', async () => {
    const { proxy } = await startTestProxy({ timeouts: FAULT_TIMEOUTS, limits: { maxClients: 10, maxClientsPerIp: 3 } });
    const port = role === 'outbound' ? proxy.outbound.port : proxy.inbound.port;
    try {
      const open: Talk[] = [];
      for (let i = 0; i < 3; i++) {
        const t = talk(port);
        expect(await t.greeting).toBe('220 proxy.test ESMTP batv-proxy');
        open.push(t);
      }
      const over = talk(port);
      expect(await over.greeting).toBe('421 4.7.0 Too many connections from 127.0.0.1; try again later');
      await over.closed;
      const other = await greetFrom(port, '127.0.0.2');
      expect(other.line).toBe('220 proxy.test ESMTP batv-proxy');
      other.socket.destroy();
      await open.pop()!.quit();
      await sleep(50);
      const again = talk(port);
      expect(await again.greeting).toBe('220 proxy.test ESMTP batv-proxy');
      await again.quit();
      await Promise.all(open.map((t) => t.quit()));
    } finally {
      await proxy.close(50);
    }
  });
});

describe.each(['outbound', 'inbound'] as const)('%s: a connection flood past limits.maxClients', (role) => {
  it.concurrent('extra connections get one 421 line and are closed; the sessions already open keep working', async () => {
    const sink = await startSink();
    const ledger = new Ledger(`flood-${role}`);
    ledger.watch(sink);
    const hop = `smtp://127.0.0.1:${sink.port}`;
    const { proxy } = await startTestProxy({
      timeouts: FAULT_TIMEOUTS,
      limits: { maxClients: 3 },
      ...(role === 'outbound' ? { outbound: { relay: hop } } : { inbound: { mailbox: hop } }),
    });
    const port = role === 'outbound' ? proxy.outbound.port : proxy.inbound.port;
    const { from, to } = who(role);
    try {
      const open: Talk[] = [];
      for (let i = 0; i < 3; i++) {
        const t = talk(port);
        expect(await t.greeting).toBe('220 proxy.test ESMTP batv-proxy');
        expect(await t.cmd('EHLO client.test')).toMatch(/^250-/);
        open.push(t);
      }
      const flood = Array.from({ length: 40 }, () => talk(port));
      const greetings = await Promise.all(flood.map((f) => f.greeting.catch((e: Error) => e.message)));
      expect(new Set(greetings)).toEqual(new Set(['421 proxy.test Too many connected clients, try again in a moment']));
      await Promise.all(flood.map((f) => f.closed));
      // every session that was admitted still relays
      const results = await Promise.all(open.map((t) => sendMessage(t, ledger, { from, to: [to] })));
      expect(results.map((r) => r.end)).toEqual(Array(3).fill('250 Ok: queued as sink'));
      await Promise.all(open.map((t) => t.quit()));
      await sink.waitForMessages(3);
      // and once they are gone, new clients are admitted again
      await sleep(50);
      const late = talk(port);
      expect(await late.greeting).toBe('220 proxy.test ESMTP batv-proxy');
      await late.cmd('EHLO client.test');
      expect((await sendMessage(late, ledger, { from, to: [to] })).end).toBe('250 Ok: queued as sink');
      await late.quit();
      await sink.waitForMessages(4);
      expect(ledger.audit()).toEqual(CLEAN);
    } finally {
      await proxy.close(50);
      await sink.close();
    }
  });
});

describe('pipelining', () => {
  async function withSink(fn: (proxy: Proxy, ledger: Ledger) => Promise<void>) {
    const sink = await startSink();
    const ledger = new Ledger('pipe');
    ledger.watch(sink);
    const { proxy } = await startTestProxy({ timeouts: FAULT_TIMEOUTS, outbound: { relay: `smtp://127.0.0.1:${sink.port}` }, inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` } });
    try {
      await fn(proxy, ledger);
    } finally {
      await proxy.close(50);
      await sink.close();
    }
    expect(ledger.audit()).toEqual(CLEAN);
  }

  it.concurrent('outbound: three whole transactions in one write, one refused recipient each, get their replies in order', async () => {
    await withSink(async (proxy, ledger) => {
      const t = talk(proxy.outbound.port);
      await t.greeting;
      const tokens = [ledger.token(), ledger.token(), ledger.token()];
      let bytes = 'EHLO pipe.test\r\n';
      for (const tok of tokens) bytes += `MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<bad@@x>\r\nDATA\r\n${ledger.body(tok)}.\r\n`;
      t.write(`${bytes}QUIT\r\n`);
      const replies: string[] = [];
      for (let i = 0; i < 1 + tokens.length * 5 + 1; i++) replies.push(await t.reply());
      expect(replies[0]).toMatch(/^250-/);
      for (const [i, tok] of tokens.entries()) {
        const r = replies.slice(1 + i * 5, 6 + i * 5);
        expect(r).toEqual(['250 Accepted', '250 Accepted', '501 Error: Bad recipient address syntax', '354 End data with <CR><LF>.<CR><LF>', '250 Ok: queued as sink']);
        ledger.tell(tok, r[4]!);
      }
      expect(replies.at(-1)).toMatch(/^221 /);
    });
  });

  it.concurrent('inbound: a transaction pipelined with a vanish at the end still delivers the completed message once', async () => {
    await withSink(async (proxy, ledger) => {
      const t = talk(proxy.inbound.port);
      await t.greeting;
      const tok = ledger.token();
      t.write(`EHLO pipe.test\r\nMAIL FROM:<friend@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n${ledger.body(tok)}.\r\n`);
      const replies: string[] = [];
      for (let i = 0; i < 5; i++) replies.push(await t.reply());
      expect(replies.slice(1)).toEqual(['250 Accepted', '250 Accepted', '354 End data with <CR><LF>.<CR><LF>', '250 Ok: queued as sink']);
      ledger.tell(tok, replies[4]!);
      t.destroy();
      await sleep(50);
      expect(ledger.acknowledged().filter((x) => x === tok)).toHaveLength(1);
    });
  });
});

describe('the token helper', () => {
  it('finds the token in raw and unstuffed messages', () => {
    expect(tokenOf(Buffer.from('Subject: fault-token m-12\r\n\r\n'))).toBe('m-12');
    expect(tokenOf(Buffer.from('Subject: hello\r\n\r\n'))).toBeNull();
  });
});
