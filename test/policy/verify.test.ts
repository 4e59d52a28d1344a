import { describe, expect, it } from 'vitest';
import { decideRecipient, type VerifyPolicy } from '../../src/policy/verify.js';
import { batvSign } from '../../src/tags/batv.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { testKeyring, T0 } from '../helpers/proxy.js';
import { MS_PER_DAY } from '../../src/clock.js';

const ring = testKeyring('k0');
const policy: VerifyPolicy = { domains: ['example.com'], srs: { ...SRS_DEFAULTS, domain: 'srs.example.net' }, batvMaxAgeDays: 7, untaggedBounces: 'reject', postmaster: 'hostmaster@example.com', graceUntilMs: null };
const tag = (a: string) => (batvSign(a, ring.signing, T0) as { address: string }).address;
const srs = (a: string) => (srsForward(a, ring, policy.srs!, T0) as { address: string }).address;
const line = (d: ReturnType<typeof decideRecipient>) => (d.kind === 'refuse' ? d.reply.line : d);

describe('decideRecipient()', () => {
  it('valid BATV tag: deliver untagged to the mailbox, for bounces and ordinary mail', () => {
    for (const from of ['', 'x@y.example']) {
      expect(decideRecipient(tag('alice@example.com'), from, policy, ring, T0)).toEqual({ kind: 'deliver', to: 'alice@example.com', route: 'mailbox', verdict: 'batv-valid', keyNum: 0, ageDays: 0 });
    }
  });

  it('expired and forged BATV tags are refused naming the reason', () => {
    const t = tag('alice@example.com');
    expect(line(decideRecipient(t, '', policy, ring, T0 + 8 * MS_PER_DAY))).toBe(`550 5.7.1 <${t}>: BATV signature expired`);
    const f = t.replace(/[0-9a-f]{6}=/, 'ffffff=');
    expect(line(decideRecipient(f, '', policy, ring, T0))).toBe(`550 5.7.1 <${f}>: BATV signature invalid`);
  });

  it('valid SRS: bounces are reversed and routed outbound; ordinary mail is refused', () => {
    const a = srs('orig@foreign.example');
    expect(decideRecipient(a, '', policy, ring, T0)).toEqual({ kind: 'deliver', to: 'orig@foreign.example', route: 'outbound', verdict: 'srs-valid', keyNum: 0, ageDays: 0 });
    expect(line(decideRecipient(a, 'x@y.example', policy, ring, T0))).toBe(`550 5.7.1 <${a}>: SRS addresses accept only bounces (null sender)`);
    expect(line(decideRecipient(a, '', policy, ring, T0 + 22 * MS_PER_DAY))).toBe(`550 5.7.1 <${a}>: SRS address expired`);
  });

  it('untagged recipient: ordinary mail passes; bounces follow untaggedBounces and the grace date', () => {
    expect(decideRecipient('alice@example.com', 'x@y.example', policy, ring, T0)).toEqual({ kind: 'deliver', to: 'alice@example.com', route: 'mailbox', verdict: 'untagged' });
    expect(line(decideRecipient('alice@example.com', '', policy, ring, T0))).toBe('550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused');
    expect(decideRecipient('alice@example.com', '', { ...policy, graceUntilMs: T0 + 1 }, ring, T0)).toMatchObject({ kind: 'deliver', verdict: 'untagged-bounce-grace' });
    expect(decideRecipient('alice@example.com', '', { ...policy, graceUntilMs: T0 }, ring, T0)).toMatchObject({ kind: 'refuse' });
    for (const mode of ['classify', 'tag', 'accept'] as const) {
      expect(decideRecipient('alice@example.com', '', { ...policy, untaggedBounces: mode }, ring, T0)).toMatchObject({ kind: 'deliver', verdict: `untagged-bounce-${mode}` });
    }
    expect(decideRecipient('PostMaster@example.com', '', policy, ring, T0)).toMatchObject({ kind: 'deliver', verdict: 'postmaster' });
    // no domain: RFC 5321 4.1.1.3's <postmaster>, delivered to the configured postmaster address
    for (const from of ['', 'someone@example.net']) {
      expect(decideRecipient('postMaster', from, policy, ring, T0)).toStrictEqual({ kind: 'deliver', to: 'hostmaster@example.com', route: 'mailbox', verdict: 'postmaster' });
    }
  });

  it('anything not ours is refused: never an open relay', () => {
    for (const r of ['a@other.example', 'a@example.com.other.example', 'a@sub.example.com', tag('a@other.example')]) {
      expect(line(decideRecipient(r, '', policy, ring, T0))).toBe(`550 5.7.1 <${r}>: relaying denied`);
    }
  });

  it('fails closed when no key is loaded: tagged recipients get 451, never an accept', () => {
    expect(line(decideRecipient(tag('a@example.com'), '', policy, null, T0))).toBe('451 4.3.0 Cannot sign the sender now (no key loaded to verify); try again later');
  });
});
