import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { clientParams, forNextHop } from '../../src/policy/params.js';
import { SmtpReply } from '../../src/reply.js';

const lineOf = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (e instanceof SmtpReply) return `${e.responseCode} ${e.enhanced} ${e.text}`;
    throw e;
  }
  return 'no refusal';
};

describe('clientParams()', () => {
  it('passes the parameters the proxy relays, as typed', () => {
    const mail = ['SIZE=1234', 'BODY=8BITMIME', 'SMTPUTF8', 'RET=HDRS', 'ENVID=QQ314159'];
    expect(clientParams('MAIL', mail, false)).toEqual(mail);
    expect(clientParams('MAIL', ['body=7bit'], false)).toEqual(['body=7bit']);
    const rcpt = ['NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;Bob@Example.COM'];
    expect(clientParams('RCPT', rcpt, false)).toEqual(rcpt);
  });

  it('refuses an unknown parameter with 555 5.5.4 naming it', () => {
    expect(lineOf(() => clientParams('MAIL', ['SIZE=1', 'X-ANYTHING=1'], false))).toBe('555 5.5.4 Unsupported parameter X-ANYTHING');
    expect(lineOf(() => clientParams('RCPT', ['SIZE=1'], false))).toBe('555 5.5.4 Unsupported parameter SIZE');
    expect(lineOf(() => clientParams('MAIL', ['NOTIFY=NEVER'], false))).toBe('555 5.5.4 Unsupported parameter NOTIFY');
    expect(lineOf(() => clientParams('MAIL', ['BODY=BINARYMIME'], false))).toBe('555 5.5.4 Unsupported parameter BODY=BINARYMIME');
  });

  it('makes AUTH= from a client that did not authenticate AUTH=<> (RFC 4954 §5), and keeps it from one that did', () => {
    expect(clientParams('MAIL', ['SIZE=9', 'AUTH=<boss@example.com>', 'BODY=8BITMIME'], false)).toEqual(['SIZE=9', 'AUTH=<>', 'BODY=8BITMIME']);
    expect(clientParams('MAIL', ['auth=boss@example.com'], false)).toEqual(['AUTH=<>']);
    expect(clientParams('MAIL', ['AUTH=boss@example.com'], true)).toEqual(['AUTH=boss@example.com']);
  });

  it('never lets an unauthenticated AUTH= identity or an unknown key through (property)', () => {
    const key = fc.constantFrom('SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID', 'AUTH', 'X-A', 'XYZ', 'NOTIFY', 'auth', 'Size');
    const val = fc.constantFrom('', '=1', '=<a@b>', '=8BITMIME', '=7BIT', '=HDRS');
    fc.assert(fc.property(fc.array(fc.tuple(key, val).map(([k, v]) => k + v), { maxLength: 6 }), (params) => {
      let out: readonly string[];
      try {
        out = clientParams('MAIL', params, false);
      } catch (e) {
        expect(e).toBeInstanceOf(SmtpReply);
        return;
      }
      expect(out).toHaveLength(params.length);
      for (const p of out) {
        expect(p.split('=')[0]!.toUpperCase()).toMatch(/^(SIZE|BODY|SMTPUTF8|RET|ENVID|AUTH)$/);
        if (/^AUTH/i.test(p)) expect(p).toBe('AUTH=<>');
      }
    }));
  });
});

describe('forNextHop()', () => {
  it('keeps only parameters whose extension the next hop advertised', () => {
    const all = ['SIZE=1', 'BODY=8BITMIME', 'SMTPUTF8', 'RET=FULL', 'ENVID=x', 'AUTH=<>', 'NOTIFY=NEVER', 'ORCPT=rfc822;a@b'];
    expect(forNextHop(all, new Map([['SIZE', '10240000'], ['8BITMIME', '']]))).toEqual(['SIZE=1', 'BODY=8BITMIME']);
    expect(forNextHop(all, new Map([['DSN', ''], ['AUTH', 'PLAIN'], ['SMTPUTF8', '']]))).toEqual(['SMTPUTF8', 'RET=FULL', 'ENVID=x', 'AUTH=<>', 'NOTIFY=NEVER', 'ORCPT=rfc822;a@b']);
    expect(forNextHop(all, new Map())).toEqual([]);
  });
});
