/**
 * MAIL/RCPT parameters on both listeners against a scripted next hop that records every command:
 * only parameters the proxy understands are relayed, each only when the next hop advertised its
 * extension; AUTH= from a client that did not authenticate becomes AUTH=<>; anything else is 555 5.5.4.
 */
import { describe, expect, it } from 'vitest';
import { startRig, type Rig } from '../helpers/fault-rig.js';

const FULL_EHLO = '250-fake.peer\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 SIZE 10240000';
const PLAIN_EHLO = '250-fake.peer\r\n250-PIPELINING\r\n250 8BITMIME';
const who = (role: 'outbound' | 'inbound') => (role === 'outbound' ? { from: 'alice@example.com', to: 'b@example.net' } : { from: 'friend@example.net', to: 'alice@example.com' });

async function relayed(rig: Rig): Promise<string[]> {
  const end = Date.now() + 3000;
  while (Date.now() < end && !rig.peer.connections.some((c) => c.commands.some((x) => x.startsWith('RCPT')))) await new Promise((r) => setTimeout(r, 5));
  return rig.peer.connections.flatMap((c) => c.commands.filter((x) => /^(MAIL|RCPT)/.test(x)));
}

describe.each(['outbound', 'inbound'] as const)('%s: MAIL/RCPT parameters', (role) => {
  it('relays the known ones as typed to a next hop that advertised them; AUTH= of a stranger becomes AUTH=<>', async () => {
    const rig = await startRig(role, { EHLO: FULL_EHLO });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      expect(await t.cmd(`MAIL FROM:<${from}> SIZE=120 BODY=8BITMIME RET=HDRS ENVID=QQ314159 AUTH=<boss@example.com>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;${to}`)).toBe('250 Accepted');
      const cmds = await relayed(rig);
      expect(cmds[0]).toMatch(/ SIZE=120 BODY=8BITMIME RET=HDRS ENVID=QQ314159 AUTH=<>$/);
      expect(cmds[1]).toBe(`RCPT TO:<${to}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;${to}`);
      await t.quit();
    } finally {
      await rig.close();
    }
  });

  it('drops the parameters a next hop did not advertise (SIZE, DSN, AUTH)', async () => {
    const rig = await startRig(role, { EHLO: PLAIN_EHLO });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      expect(await t.cmd(`MAIL FROM:<${from}> SIZE=120 BODY=8BITMIME ENVID=x AUTH=<>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}> NOTIFY=NEVER`)).toBe('250 Accepted');
      const cmds = await relayed(rig);
      expect(cmds[0]).toMatch(/^MAIL FROM:<[^>]*> BODY=8BITMIME$/);
      expect(cmds[1]).toBe(`RCPT TO:<${to}>`);
      await t.quit();
    } finally {
      await rig.close();
    }
  });

  it('refuses an unknown parameter with 555 5.5.4 and relays nothing for it', async () => {
    const rig = await startRig(role, { EHLO: FULL_EHLO });
    try {
      const { from, to } = who(role);
      const t = await rig.session();
      expect(await t.cmd(`MAIL FROM:<${from}> X-ANYTHING=1`)).toBe('555 5.5.4 Unsupported parameter X-ANYTHING');
      expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}> XRCPTFORWARD=abc`)).toBe('555 5.5.4 Unsupported parameter XRCPTFORWARD');
      expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
      const cmds = await relayed(rig);
      expect(cmds.join('\n')).not.toMatch(/X-ANYTHING|XRCPTFORWARD/);
      await t.quit();
    } finally {
      await rig.close();
    }
  });
});
