import { describe, expect, it } from 'vitest';
import { signSender, matchesEntry, type SignPolicy } from '../../src/policy/sign.js';
import { SRS_DEFAULTS } from '../../src/tags/srs.js';
import { testKeyring, T0 } from '../helpers/proxy.js';

const ring = testKeyring('k0');
const policy: SignPolicy = {
  domains: ['example.com', 'Example.ORG'],
  srs: { ...SRS_DEFAULTS, domain: 'srs.example.net' },
  exemptSenders: ['noreply@example.com', 'partner.example'],
  exemptRecipients: ['lists.example.net'],
  overlong: 'sign',
};

describe('signSender()', () => {
  it('signs a sender of our domains with BATV, any case of the domain', () => {
    expect(signSender('alice@EXAMPLE.org', undefined, policy, ring, T0)).toEqual({
      kind: 'rewritten', address: expect.stringMatching(/^prvs=0461[0-9a-f]{6}=alice@EXAMPLE\.org$/), scheme: 'batv', keyNum: 0, overlong: false,
    });
  });

  it('rewrites a foreign sender as SRS0 and an SRS0 sender as SRS1', () => {
    expect(signSender('bob@foreign.example', undefined, policy, ring, T0)).toMatchObject({ kind: 'rewritten', scheme: 'srs0', address: expect.stringMatching(/^SRS0=....=7G=foreign\.example=bob@srs\.example\.net$/) });
    expect(signSender('SRS0=abcd=7G=a.example=x@b.example', undefined, policy, ring, T0)).toMatchObject({ kind: 'rewritten', scheme: 'srs1', address: expect.stringMatching(/^SRS1=....=b\.example==abcd=7G=a\.example=x@srs\.example\.net$/) });
  });

  it('leaves the null sender, exempt senders and domains, exempt recipients and tagged senders unchanged', () => {
    expect(signSender('', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: '', reason: 'null-sender' });
    expect(signSender('NoReply@Example.com', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: 'NoReply@Example.com', reason: 'exempt-sender' });
    expect(signSender('x@partner.example', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: 'x@partner.example', reason: 'exempt-sender' });
    expect(signSender('alice@example.com', 'list@lists.example.net', policy, ring, T0)).toEqual({ kind: 'unchanged', address: 'alice@example.com', reason: 'exempt-recipient' });
    expect(signSender('prvs=0461abcdef=alice@example.com', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: 'prvs=0461abcdef=alice@example.com', reason: 'already-tagged' });
    expect(signSender('x@srs.example.net', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: 'x@srs.example.net', reason: 'srs-domain' });
    expect(signSender('"john doe"@example.com', undefined, policy, ring, T0)).toEqual({ kind: 'unchanged', address: '"john doe"@example.com', reason: 'quoted-local-part' });
  });

  it('SRS switched off leaves foreign senders unchanged', () => {
    expect(signSender('bob@foreign.example', undefined, { ...policy, srs: null }, ring, T0)).toEqual({ kind: 'unchanged', address: 'bob@foreign.example', reason: 'srs-off' });
  });

  it('fails closed with 451 4.3.0 when no key is loaded', () => {
    const d = signSender('alice@example.com', undefined, policy, null, T0);
    expect(d.kind).toBe('refused');
    expect(d.kind === 'refused' && d.reply.line).toBe('451 4.3.0 Cannot sign the sender now (no signing key loaded); try again later');
    const s = signSender('bob@foreign.example', undefined, policy, null, T0);
    expect(s.kind === 'refused' && s.reply.line).toBe('451 4.3.0 Cannot sign the sender now (no signing key loaded); try again later');
  });

  it('overlong: a 49-octet local part is signed and flagged by default, and sent unsigned with overlong: skip', () => {
    const sender = `${'a'.repeat(49)}@example.com`;
    expect(signSender(sender, undefined, policy, ring, T0)).toMatchObject({ kind: 'rewritten', overlong: true });
    expect(signSender(`${'a'.repeat(48)}@example.com`, undefined, policy, ring, T0)).toMatchObject({ kind: 'rewritten', overlong: false });
    expect(signSender(sender, undefined, { ...policy, overlong: 'skip' }, ring, T0)).toEqual({ kind: 'unchanged', address: sender, reason: 'overlong' });
    const foreign = `${'b'.repeat(39)}@foreign.example`; // 56 octets: SRS0 local part 56 + 13 = 69
    expect(signSender(foreign, undefined, { ...policy, overlong: 'skip' }, ring, T0)).toEqual({ kind: 'unchanged', address: foreign, reason: 'overlong' });
  });
});

describe('matchesEntry()', () => {
  it('matches whole addresses and domains case-insensitively, never a suffix of another domain', () => {
    expect(matchesEntry('A@B.example', ['a@b.example'])).toBe(true);
    expect(matchesEntry('a@sub.b.example', ['b.example'])).toBe(false);
    expect(matchesEntry('a@b.example', ['B.EXAMPLE'])).toBe(true);
    expect(matchesEntry('a@evilb.example', ['b.example'])).toBe(false);
    expect(matchesEntry('a@b.example', [])).toBe(false);
    expect(matchesEntry('A@B.example', ['@b.example'])).toBe(true);
    expect(matchesEntry('a@sub.b.example', ['@b.example'])).toBe(false);
  });
});
