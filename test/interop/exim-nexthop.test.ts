/**
 * Real exim 4.96 as the proxy's next hop and mailbox host (issue 9), through test/helpers/exim-server.ts:
 * an exim daemon on loopback whose appendfile transport stores every message it accepted, so each test
 * reads exactly what exim received, and whose ACLs log the MAIL/RCPT lines, run ${prvscheck} on the
 * sender, refuse chosen recipients and defer at DATA on demand.
 *
 * exim's clock is the real one, so the proxy's fixed clock is set to the moment the suite starts (a prvs
 * tag made then is valid for exim for the next 7 days). The proxy's key is number 3 with the same secret
 * exim's ${prvscheck} gets for key number 3: a keyring key number is the tag's digit, its secret exim's
 * secret, byte for byte (README, "Keys").
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkEximServer, startEximServer, type EximServer, type EximStored } from '../helpers/exim-server.js';
import { Ledger, sendMessage } from '../helpers/ledger.js';
import { shouldRun } from '../helpers/peers.js';
import { startTestProxy } from '../helpers/proxy.js';
import { talk, type Talk } from '../helpers/talk.js';
import { batvSign } from '../../src/tags/batv.js';
import { utf8 } from '../../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../../src/tags/keyring.js';
import type { Proxy } from '../../src/proxy.js';

const RUN = shouldRun('exim as the next hop', checkEximServer());

const KEY_NUM = 3;
const SECRET = 'exim-hop secret {3} $x\\';
const ring = makeKeyring([tagKey(KEY_NUM, utf8(SECRET))]);
const NOW = Date.now();
const tag = (address: string, key = ring.signing): string => {
  const r = batvSign(address, key, NOW);
  if (r.kind !== 'signed') throw new Error(`not signed: ${JSON.stringify(r)}`);
  return r.address;
};

const REFUSED = 'nobody@example.net';
const REFUSED_TEXT = '5.1.1 <nobody@example.net>: mailbox moved away (custom exim refusal)';
const REFUSED_MULTI = 'multi@example.net';
const DEFER_TEXT = '4.3.0 exim says: try again later';
const BOUNCE = 'From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nSorry.\r\n';

/** A string matched literally in a RegExp; `bytes`: as the latin1 view of its UTF-8 bytes. */
const esc = (s: string, bytes = false): string => (bytes ? Buffer.from(s, 'utf8').toString('latin1') : s).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The proxy's one Received: field (folded), as the first field of what exim received, and the rest. */
function splitProxyReceived(m: EximStored, rcpt: string, helo: string, protocol = 'ESMTP'): { received: string; rest: Buffer } {
  const re = new RegExp(
    `^Received: from ${esc(helo)} \\(\\[127\\.0\\.0\\.1\\]\\)\r\n\tby proxy\\.test \\(batv-proxy\\) with ${protocol} id [0-9A-F]{12}\r\n` +
    `\tfor <${esc(rcpt, true)}>;\r\n\t[A-Z][a-z]{2}, \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000\r\n`,
  );
  const head = re.exec(m.body.toString('latin1'));
  if (!head) throw new Error(`no proxy Received: at the top of ${m.id}: ${JSON.stringify(m.body.toString('latin1').slice(0, 300))}`);
  return { received: head[0], rest: m.body.subarray(Buffer.byteLength(head[0], 'latin1')) };
}

async function ehlo(port: number, name: string): Promise<Talk> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd(`EHLO ${name}`)).toMatch(/^250[ -]/);
  return t;
}

/** "250 OK id=..." from exim, passed through by the proxy: the id. */
function eximId(reply: string): string {
  const m = /^250 OK id=([0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2})$/.exec(reply);
  if (!m) throw new Error(`not exim's 250 OK id=...: ${JSON.stringify(reply)}`);
  return m[1]!;
}

describe.skipIf(!RUN)('exim 4.96 as the next hop', () => {
  let exim: EximServer;
  let proxy: Proxy;
  /** One ledger for the suite: it audits every tokened message exim ever stored. */
  const ledger = new Ledger('exim');
  beforeAll(async () => {
    exim = await startEximServer({
      prvsSecrets: { [KEY_NUM]: SECRET },
      refuseRecipients: { [REFUSED]: REFUSED_TEXT, [REFUSED_MULTI]: '5.7.1 first line of two\nsecond line of two' },
      deferText: DEFER_TEXT,
    });
    const hop = `smtp://127.0.0.1:${exim.port}`;
    ledger.watch(exim);
    ({ proxy } = await startTestProxy({ outbound: { relay: hop }, inbound: { mailbox: hop, untaggedBounces: 'reject' } }, { keyring: ring, now: NOW }));
  });
  afterAll(async () => {
    await proxy?.close(100);
    await exim?.stop();
  });

  it('exim\'s own ${prvscheck} tells a valid tag from a forged one (the control for the checks below)', async () => {
    const good = tag('alice@example.com');
    const other = tag('alice@example.com', tagKey(KEY_NUM, utf8('another secret')));
    const flipped = good.replace(/^(prvs=\d{4})(.)/, (_m, p: string, c: string) => `${p}${c === '0' ? '1' : '0'}`);
    const t = await ehlo(exim.port, 'control.test');
    expect(await t.cmd(`MAIL FROM:<${flipped}>`)).toBe(`550 5.7.1 prvscheck failed for <${flipped}>`);
    expect(await t.cmd(`MAIL FROM:<${other}>`)).toBe(`550 5.7.1 prvscheck failed for <${other}>`);
    expect(await t.cmd(`MAIL FROM:<${good}>`)).toBe('250 OK');
    expect(await t.cmd('RSET')).toBe('250 Reset OK');
    await t.quit();
  });

  it('outbound: 20 messages over 4 connections reach exim once each, from exactly our prvs tag, which exim\'s ${prvscheck} accepts, byte for byte', async () => {
    const before = new Set(exim.messages.map((m) => m.id));
    const expected = tag('alice@example.com');
    const sent: Array<{ token: string; id: string }> = [];
    await Promise.all(Array.from({ length: 4 }, async () => {
      const t = await ehlo(proxy.outbound.port, 'client.example');
      for (let i = 0; i < 5; i++) {
        const r = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['bob@example.net'] });
        expect([r.mail, ...r.rcpt, r.data]).toEqual(['250 Accepted', '250 Accepted', '354 End data with <CR><LF>.<CR><LF>']);
        sent.push({ token: r.token, id: eximId(r.end) });
      }
      await t.quit();
    }));
    expect(sent).toHaveLength(20);
    const stored = await Promise.all(sent.map((s) => exim.waitForDelivery(s.id)));
    expect(exim.messages.filter((m) => !before.has(m.id))).toHaveLength(20);
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    expect(sent.map((s) => ledger.told.get(s.token))).toEqual(sent.map((s) => `250 OK id=${s.id}`));

    const txns = new Map(exim.transactions().map((x) => [x.id, x]));
    for (const [i, m] of stored.entries()) {
      const { token } = sent[i]!;
      expect(m.returnPath).toBe(expected);
      expect(m.envelopeTo).toEqual(['bob@example.net']);
      expect(m.received).toMatch(new RegExp(`^Received: from \\[127\\.0\\.0\\.1\\] \\(helo=proxy\\.test\\)\n\tby exim\\.test with esmtp \\(Exim 4\\.96\\)\n\t\\(envelope-from <${esc(expected)}>\\)\n\tid ${m.id}\n\tfor bob@example\\.net;\n\t[A-Z][a-z]{2}, \\d\\d [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000$`));
      expect(splitProxyReceived(m, 'bob@example.net', 'client.example').rest.toString('latin1')).toBe(ledger.body(token));
      expect(txns.get(m.id)).toEqual({
        id: m.id, mail: `MAIL FROM:<${expected}>`, rcpts: ['RCPT TO:<bob@example.net>'], prvscheckResult: '1', prvscheckAddress: 'alice@example.com',
      });
    }
  }, 60_000);

  it('exim refuses a RCPT: the client gets exim\'s reply passed through; the accepted recipient still gets the message', async () => {
    const before = exim.messages.length;
    const t = await ehlo(proxy.outbound.port, 'client.example');
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${REFUSED}>`)).toBe(`550 ${REFUSED_TEXT}`);
    // exim sent "550-5.7.1 first line of two" / "550 second line of two"; the proxy answers in one line
    // (src/smtp/hop-reply.ts passThrough: same code and enhanced code, the lines joined by a space).
    expect(await t.cmd(`RCPT TO:<${REFUSED_MULTI}>`)).toBe('550 5.7.1 first line of two second line of two');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    const body = 'From: a@example.com\r\nSubject: one of three recipients\r\n\r\nhello\r\n';
    const { end } = await t.data(body);
    await t.quit();
    const m = await exim.waitForDelivery(eximId(end));
    expect(m.envelopeTo).toEqual(['bob@example.net']);
    expect(splitProxyReceived(m, 'bob@example.net', 'client.example').rest.toString('latin1')).toBe(body);
    expect(exim.messages).toHaveLength(before + 1);
    const log = exim.log();
    expect(log.filter((l) => l.includes(`rejected RCPT <${REFUSED}>: ${REFUSED_TEXT}`))).toHaveLength(1);
    expect(exim.transactions().find((x) => x.id === m.id)?.rcpts).toEqual(['RCPT TO:<bob@example.net>']);
  });

  it('exim defers at DATA: the client gets the 451, nothing is stored; sent again once exim accepts, it is stored exactly once', async () => {
    const before = exim.messages.length;
    const t = await ehlo(proxy.outbound.port, 'client.example');
    const token = ledger.token();
    exim.deferData(true);
    try {
      const r1 = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['bob@example.net'], token });
      expect(r1.end).toBe(`451 ${DEFER_TEXT}`);
    } finally {
      exim.deferData(false);
    }
    expect(exim.log().filter((l) => l.includes(`F=<${tag('alice@example.com')}> temporarily rejected after DATA: ${DEFER_TEXT}`))).toHaveLength(1);
    expect(exim.messages).toHaveLength(before);
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
    // the same message again, on the same connection (the proxy's session to exim is reused after the 451)
    const r2 = await sendMessage(t, ledger, { from: 'alice@example.com', to: ['bob@example.net'], token });
    await t.quit();
    const m = await exim.waitForDelivery(eximId(r2.end));
    expect(splitProxyReceived(m, 'bob@example.net', 'client.example').rest.toString('latin1')).toBe(ledger.body(token));
    expect(exim.messages).toHaveLength(before + 1);
    expect(exim.messages.filter((x) => x.body.toString('latin1').includes(`fault-token ${token}\r\n`))).toHaveLength(1);
    expect(ledger.audit()).toEqual({ lost: [], duplicated: [], phantom: [] });
  });

  it('inbound: a tagged bounce reaches exim untagged with sender <>; a forged one is refused with 550 5.7.1 and nothing reaches exim', async () => {
    const before = exim.messages.length;
    const valid = tag('alice@example.com');
    const t = await ehlo(proxy.inbound.port, 'mx.example.net');
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${valid}>`)).toBe('250 Accepted');
    const { end } = await t.data(BOUNCE);
    await t.quit();
    const m = await exim.waitForDelivery(eximId(end));
    expect(m.returnPath).toBe('');
    expect(m.envelopeTo).toEqual(['alice@example.com']);
    expect(exim.transactions().find((x) => x.id === m.id)).toEqual({
      id: m.id, mail: 'MAIL FROM:<>', rcpts: ['RCPT TO:<alice@example.com>'], prvscheckResult: '', prvscheckAddress: '',
    });
    expect(splitProxyReceived(m, 'alice@example.com', 'mx.example.net').rest.toString('latin1'))
      .toBe(`X-BATV-Proxy: batv-valid; key=${KEY_NUM}; age=0d; by=proxy.test\r\n${BOUNCE}`);

    const forged = valid.replace(/^(prvs=\d{4})(.)/, (_m, p: string, c: string) => `${p}${c === '0' ? '1' : '0'}`);
    const commandsBefore = exim.commands().length;
    const logBefore = exim.log().length;
    const t2 = await ehlo(proxy.inbound.port, 'mx.example.net');
    expect(await t2.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t2.cmd(`RCPT TO:<${forged}>`)).toBe(`550 5.7.1 <${forged}>: BATV signature invalid`);
    expect((await t2.data(BOUNCE)).start).toMatch(/^503 /);
    await t2.quit();
    // nothing of the forged bounce reached exim: no RCPT, no message
    expect(exim.commands().slice(commandsBefore).filter((c) => c.startsWith('RCPT'))).toEqual([]);
    expect(exim.log().slice(logBefore).filter((l) => l.toLowerCase().includes(forged.toLowerCase()))).toEqual([]);
    expect(exim.messages).toHaveLength(before + 1);
  });

  it('exim advertises PIPELINING, CHUNKING, 8BITMIME, SMTPUTF8 and DSN; an 8-bit body with DSN parameters and an SMTPUTF8 message go through intact', async () => {
    const direct = talk(exim.port);
    expect(await direct.greeting).toMatch(/^220 exim\.test ESMTP Exim 4\.96 /);
    expect(await direct.cmd('EHLO probe.test')).toBe([
      '250-exim.test Hello probe.test [127.0.0.1]', '250-SIZE 52428800', '250-8BITMIME', '250-DSN', '250-PIPELINING',
      '250-PIPECONNECT', '250-CHUNKING', '250-SMTPUTF8', '250 HELP',
    ].join('\n'));
    await direct.quit();

    const t = talk(proxy.outbound.port);
    await t.greeting;
    const ext = (await t.cmd('EHLO client.example')).split('\n').map((l) => l.slice(4));
    // the proxy offers what exim offers of the extensions it relays (8BITMIME, SMTPUTF8, DSN; SIZE is the
    // smaller of exim's and its own limit); it has no BDAT of its own, so no CHUNKING, and no PIPECONNECT
    expect(ext).toEqual(['proxy.test Nice to meet you, [127.0.0.1]', 'PIPELINING', '8BITMIME', 'SMTPUTF8', 'DSN', 'SIZE 52428800']);

    // 8-bit body (UTF-8 and bytes that are not UTF-8), DSN parameters on MAIL and RCPT
    const tagged = tag('alice@example.com');
    expect(await t.cmd('MAIL FROM:<alice@example.com> BODY=8BITMIME RET=HDRS ENVID=exim-hop-1')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net')).toBe('250 Accepted');
    const body8 = Buffer.concat([
      Buffer.from('From: a@example.com\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, naïve café ✓\r\n', 'utf8'),
      Buffer.from([0xe9, 0xff, 0x80, 0x0d, 0x0a]),
    ]);
    const r8 = await t.data(body8);
    const m8 = await exim.waitForDelivery(eximId(r8.end));
    expect(splitProxyReceived(m8, 'bob@example.net', 'client.example').rest.equals(body8)).toBe(true);
    expect(exim.transactions().find((x) => x.id === m8.id)).toEqual({
      id: m8.id, mail: `MAIL FROM:<${tagged}> BODY=8BITMIME RET=HDRS ENVID=exim-hop-1`,
      rcpts: ['RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net'], prvscheckResult: '1', prvscheckAddress: 'alice@example.com',
    });
    expect(exim.log().filter((l) => new RegExp(`^\\S+ \\S+ ${m8.id} <= ${esc(tagged)} H=\\(proxy\\.test\\) \\[127\\.0\\.0\\.1\\] P=esmtp S=\\d+`).test(l))).toHaveLength(1);

    // SMTPUTF8: a UTF-8 sender is signed over its UTF-8 bytes and exim's ${prvscheck} agrees
    const utf = tag('jörg@example.com');
    expect(await t.cmd('MAIL FROM:<jörg@example.com> SMTPUTF8 BODY=8BITMIME')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bøb@example.net>')).toBe('250 Accepted');
    const bodyU = Buffer.from('From: jörg@example.com\r\nSubject: ünïcödé\r\n\r\nHallo bøb\r\n', 'utf8');
    const rU = await t.data(bodyU);
    await t.quit();
    const mU = await exim.waitForDelivery(eximId(rU.end));
    expect(mU.returnPath).toBe(utf);
    expect(mU.envelopeTo).toEqual(['bøb@example.net']);
    expect(mU.received).toContain('\tby exim.test with utf8esmtp (Exim 4.96)\n');
    expect(splitProxyReceived(mU, 'bøb@example.net', 'client.example', 'UTF8SMTP').rest.equals(bodyU)).toBe(true);
    expect(exim.transactions().find((x) => x.id === mU.id)).toEqual({
      id: mU.id, mail: `MAIL FROM:<${utf}> SMTPUTF8 BODY=8BITMIME`, rcpts: ['RCPT TO:<bøb@example.net>'], prvscheckResult: '1', prvscheckAddress: 'jörg@example.com',
    });
  });
});
