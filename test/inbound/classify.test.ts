import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  classifyBounce,
  createBounceClassifier,
  type BounceClassifierOptions,
  type Classification,
} from '../../src/inbound/classify.js';
import { decodeEncodedWords } from '../../src/inbound/mime.js';

const DIR = fileURLToPath(new URL('../fixtures/bounces/', import.meta.url));
const fixture = (name: string): Buffer => readFileSync(DIR + name);

/** Builds a message from header lines and a body with the given line ending. */
function msg(headers: string[], body = '', eol = '\r\n'): Buffer {
  return Buffer.from(headers.join(eol) + eol + eol + body.split('\n').join(eol), 'utf8');
}

/** Feeds `data` split at the given offsets. */
function feed(data: Uint8Array, cuts: number[], opts?: BounceClassifierOptions): Classification {
  const c = createBounceClassifier(opts);
  const points = [...new Set(cuts.map((n) => Math.min(n, data.length)))].sort((a, b) => a - b);
  let prev = 0;
  for (const p of [...points, data.length]) {
    c.write(data.subarray(prev, p));
    prev = p;
  }
  return c.finish();
}

const EXPECTED: Record<string, Classification> = {
  'postfix-ndr.eml': { kind: 'dsn', reason: 'multipart/report; report-type=delivery-status' },
  'exchange-ndr.eml': { kind: 'dsn', reason: 'multipart/report; report-type=delivery-status' },
  'gmail-dsn.eml': { kind: 'dsn', reason: 'multipart/report; report-type=delivery-status' },
  'qmail-bounce.eml': { kind: 'dsn', reason: 'qmail-send bounce text' },
  'exim-bounce.eml': { kind: 'dsn', reason: 'X-Failed-Recipients header' },
  'mdn.eml': { kind: 'mdn', reason: 'multipart/report; report-type=disposition-notification' },
  'outlook-ooo.eml': { kind: 'auto-reply', reason: 'Auto-Submitted: auto-replied' },
  'vacation.eml': { kind: 'auto-reply', reason: 'subject looks like an auto-reply (I am on vacation)' },
  'cpanel-autoresponder.eml': { kind: 'auto-reply', reason: 'X-Autorespond header' },
  'dmarc-aggregate.eml': { kind: 'report', reason: 'subject looks like a DMARC aggregate report (Report domain:)' },
  'arf-feedback.eml': { kind: 'report', reason: 'multipart/report; report-type=feedback-report' },
  'tlsrpt.eml': { kind: 'report', reason: 'multipart/report; report-type=tlsrpt' },
  'ordinary.eml': { kind: 'other', reason: 'no bounce, receipt, auto-reply or report markers' },
};

describe('fixtures', () => {
  it('has an expectation for every fixture file, all CRLF and example.* only', () => {
    const files = readdirSync(DIR).filter((f) => f.endsWith('.eml')).sort();
    expect(files).toEqual(Object.keys(EXPECTED).sort());
    for (const f of files) {
      const text = fixture(f).toString('latin1');
      expect(text.replace(/\r\n/g, '')).not.toMatch(/[\r\n]/); // CRLF only
      for (const [, domain] of text.replace(/=\r\n/g, '').matchAll(/@([A-Za-z0-9.-]+[A-Za-z])/g)) {
        expect(domain, `${f}: ${domain}`).toMatch(/(^|\.)example\.(com|org|net)$/i);
      }
    }
  });

  for (const [name, expected] of Object.entries(EXPECTED)) {
    it(`classifies ${name} as ${expected.kind}`, () => {
      expect(classifyBounce(fixture(name))).toEqual(expected);
    });
  }

  it('gives the same verdict whatever the chunk boundaries', () => {
    for (const [name, expected] of Object.entries(EXPECTED)) {
      const data = fixture(name);
      fc.assert(
        fc.property(fc.array(fc.integer({ min: 0, max: data.length }), { maxLength: 40 }), (cuts) => {
          expect(feed(data, cuts)).toEqual(expected);
        }),
        { numRuns: 60 },
      );
    }
  });

  it('gives the same verdicts with bare LF line endings', () => {
    for (const [name, expected] of Object.entries(EXPECTED)) {
      const lf = Buffer.from(fixture(name).toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
      expect(classifyBounce(lf), name).toEqual(expected);
    }
  });

  it('classifies every byte-chunking of a fixture the same, one byte at a time too', () => {
    const data = fixture('gmail-dsn.eml');
    expect(feed(data, Array.from({ length: data.length }, (_, i) => i))).toEqual(EXPECTED['gmail-dsn.eml']);
  });
});

describe('delivery-status recognition', () => {
  const dsnPart = ['--b1', 'Content-Type: text/plain', '', 'failed', '--b1', 'Content-Type: message/delivery-status', '',
    'Reporting-MTA: dns; mx.example.org', '', 'Final-Recipient: rfc822; x@example.org', 'Action: failed', '--b1--'].join('\n');

  it('handles folding, parameter case, quoting and comments in Content-Type', () => {
    const m = msg(['From: x@example.org', 'Content-Type: Multipart/Report (dsn) ;', '\tREPORT-TYPE = "Delivery-Status" (rfc 3464);',
      ' boundary="b1"', 'Subject: hello'], dsnPart);
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'multipart/report; report-type=delivery-status' });
  });

  it('understands RFC 2231 parameter values and header names in any case', () => {
    const m = msg(["CONTENT-TYPE: multipart/report; report-type*=us-ascii''delivery%2Dstatus; boundary=b1"], dsnPart);
    expect(classifyBounce(m).reason).toBe('multipart/report; report-type=delivery-status');
  });

  it('finds a message/delivery-status part nested anywhere in the MIME tree', () => {
    const body = ['--outer', 'Content-Type: multipart/mixed; boundary=b1', '', dsnPart, '--outer--'].join('\n');
    const m = msg(['Content-Type: multipart/mixed; boundary="outer"'], body);
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'message/delivery-status part' });
    const g = msg(['Content-Type: multipart/mixed; boundary=b'], '--b\nContent-Type: message/global-delivery-status\n\nx\n--b--');
    expect(classifyBounce(g)).toEqual({ kind: 'dsn', reason: 'message/global-delivery-status part' });
  });

  it('finds a delivery-status part in a message without usable MIME structure', () => {
    const m = msg(['Content-Type: multipart/report; report-type=unknown'], 'junk\nContent-Type: message/delivery-status\n\nAction: failed');
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'message/delivery-status part' });
  });

  it('does not look inside an attached message (a forwarded bounce is not a bounce)', () => {
    const inner = ['Subject: Undelivered Mail Returned to Sender', 'Content-Type: multipart/report; report-type=delivery-status; boundary=b1', '', dsnPart].join('\n');
    const body = ['--f', 'Content-Type: text/plain', '', 'see the bounce below', '--f', 'Content-Type: message/rfc822', '', inner, '--f--'].join('\n');
    const m = msg(['From: a@example.org', 'Subject: Fwd: bounce', 'Content-Type: multipart/mixed; boundary=f'], body);
    expect(classifyBounce(m).kind).toBe('other');
  });

  it('recognises the Exchange NDR header without a DSN content type', () => {
    const m = msg(['Subject: Hello', 'X-MS-Exchange-Message-Is-Ndr:', 'Content-Type: text/plain'], 'not delivered');
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'X-MS-Exchange-Message-Is-Ndr header' });
  });

  it('recognises the qmail text alone', () => {
    const m = msg(['Subject: hi'], "I'm afraid I wasn't able to deliver your message to the following addresses.");
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'qmail-send bounce text' });
  });

  it.each([
    ['Undelivered Mail Returned to Sender', 'Undelivered Mail Returned to Sender'],
    ['Delivery Status Notification (Failure)', 'Delivery Status Notification (Failure)'],
    ['Undeliverable: Invoice', 'Undeliverable:'],
    ['failure notice', 'failure notice'],
    ['Returned mail: see transcript for details', 'Returned mail: see transcript for details'],
    ['Mail delivery failed: returning message to sender', 'Mail delivery failed: returning message to sender'],
    ['Delivery Failure', 'Delivery Failure'],
    ['=?UTF-8?B?VW56dXN0ZWxsYmFyOg==?= Angebot', 'Unzustellbar:'],
    ['=?iso-8859-1?Q?Non_remis_:_Rapport?=', 'Non remis :'],
  ])('subject %s looks like a non-delivery report', (subject, label) => {
    expect(classifyBounce(msg([`Subject: ${subject}`], 'x'))).toEqual({
      kind: 'dsn',
      reason: `subject looks like a non-delivery report (${label})`,
    });
  });

  it('decodes a folded, encoded Subject split over several words', () => {
    const m = msg(['Subject: =?UTF-8?B?VW56dXN0ZWxs?=', ' =?UTF-8?B?YmFyOiBSZTogw5xi?= =?UTF-8?Q?ersicht?='], '');
    expect(classifyBounce(m).reason).toBe('subject looks like a non-delivery report (Unzustellbar:)');
    expect(decodeEncodedWords('=?UTF-8?B?VW56dXN0ZWxs?= =?UTF-8?B?YmFyOiBSZTogw5xi?= =?UTF-8?Q?ersicht?=')).toBe(
      'Unzustellbar: Re: Übersicht',
    );
    expect(decodeEncodedWords('a =?x-unknown?Q?caf=E9?= b')).toBe('a café b');
  });

  it('treats a mail-system sender as an NDR', () => {
    const m = msg(['From: Mail Delivery Subsystem <MAILER-DAEMON@example.net>', 'Subject: Message status'], 'x');
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'From looks like a mail system (Mail Delivery Subsystem)' });
  });

  it('works on a header block without a blank line or body', () => {
    expect(classifyBounce('From: x@example.org\r\nSubject: failure notice')).toEqual({
      kind: 'dsn',
      reason: 'subject looks like a non-delivery report (failure notice)',
    });
    expect(classifyBounce('Subject: failure notice\n\n')).toMatchObject({ kind: 'dsn' });
  });
});

describe('precedence', () => {
  it('a DSN content type beats an MDN one and auto-reply signals', () => {
    const m = msg(['Auto-Submitted: auto-replied', 'Subject: Automatic reply: x',
      'Content-Type: multipart/report; report-type=disposition-notification; boundary=b'],
      '--b\nContent-Type: message/delivery-status\n\nAction: failed\n--b--');
    expect(classifyBounce(m)).toEqual({ kind: 'dsn', reason: 'message/delivery-status part' });
  });

  it('MDN and auto-reply beat subject heuristics', () => {
    const mdn = msg(['Subject: Undeliverable: x', 'Content-Type: multipart/mixed; boundary=b'],
      '--b\nContent-Type: message/disposition-notification\n\nDisposition: manual-action/MDN-sent-manually; displayed\n--b--');
    expect(classifyBounce(mdn)).toEqual({ kind: 'mdn', reason: 'message/disposition-notification part' });
    expect(classifyBounce(msg(['Subject: Automatic reply: Undeliverable: x'], ''))).toEqual({
      kind: 'auto-reply', reason: 'subject looks like an auto-reply (Automatic reply:)',
    });
    expect(classifyBounce(msg(['X-Autoreply: yes', 'Subject: Delivery Failure'], ''))).toEqual({
      kind: 'auto-reply', reason: 'X-Autoreply header',
    });
    expect(classifyBounce(msg(['Precedence: auto_reply', 'Subject: failure notice'], ''))).toEqual({
      kind: 'auto-reply', reason: 'Precedence: auto_reply',
    });
    expect(classifyBounce(msg(['auto-submitted: Auto-Generated (sieve); owner-email="a@example.org"', 'Subject: Returned mail: x'], ''))).toEqual({
      kind: 'auto-reply', reason: 'Auto-Submitted: auto-generated',
    });
    expect(classifyBounce(msg(['Subject: Out of Office: meeting'], ''))).toMatchObject({ kind: 'auto-reply' });
    expect(classifyBounce(msg(['Subject: =?utf-8?q?Abwesenheitsnotiz=3A_Termin?='], ''))).toEqual({
      kind: 'auto-reply', reason: 'subject looks like an auto-reply (Abwesenheitsnotiz:)',
    });
  });

  it('Auto-Submitted: no is not an auto-reply', () => {
    expect(classifyBounce(msg(['Auto-Submitted: no', 'Subject: failure notice'], ''))).toMatchObject({ kind: 'dsn' });
  });

  it('a mail-system sender with an NDR subject is an NDR even when marked Auto-Submitted', () => {
    const m = msg(['From: MAILER-DAEMON@example.org (Mail Delivery System)', 'Auto-Submitted: auto-replied',
      'Subject: Undelivered Mail Returned to Sender'], 'plain text bounce');
    expect(classifyBounce(m)).toEqual({
      kind: 'dsn', reason: 'subject looks like a non-delivery report (Undelivered Mail Returned to Sender)',
    });
  });

  it('recognises DMARC aggregate attachments without the usual subject', () => {
    const m = msg(['Subject: DMARC', 'Content-Type: application/gzip',
      'Content-Disposition: attachment; filename="example.net!example.com!1737331200!1737417599.xml.gz"'], 'H4sI');
    expect(classifyBounce(m)).toEqual({ kind: 'report', reason: 'DMARC aggregate report attachment' });
  });
});

describe('bounded memory and robustness', () => {
  it('retains at most the header block plus prefixBytes of a 10 MiB body', () => {
    const head = fixture('gmail-dsn.eml');
    const headerLen = head.indexOf('\r\n\r\n') + 4;
    const c = createBounceClassifier();
    c.write(head.subarray(0, headerLen));
    const line = Buffer.from(`${'x'.repeat(998)}\r\n`);
    const chunk = Buffer.concat(Array.from({ length: 64 }, () => line)); // 64 000 bytes
    let total = headerLen;
    while (total < headerLen + 10 * 1024 * 1024) {
      c.write(chunk);
      total += chunk.length;
      expect(c.retainedBytes).toBeLessThanOrEqual(headerLen + 64 * 1024);
    }
    expect(c.bytesSeen).toBe(total);
    expect(c.finish()).toEqual({ kind: 'dsn', reason: 'multipart/report; report-type=delivery-status' });
    expect(c.retainedBytes).toBe(0);
  });

  it('does not see past the prefix, and the prefix is configurable', () => {
    const body = `--b\nContent-Type: text/plain\n\n${'filler line\n'.repeat(8000)}--b\nContent-Type: message/delivery-status\n\nAction: failed\n--b--`;
    const m = msg(['Content-Type: multipart/mixed; boundary=b'], body);
    expect(classifyBounce(m).kind).toBe('other');
    expect(classifyBounce(m, { prefixBytes: 200 * 1024 }).kind).toBe('dsn');
  });

  it('bounds a header block that never ends', () => {
    const c = createBounceClassifier({ maxHeaderBytes: 4096, prefixBytes: 1024 });
    const junk = Buffer.from('X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'.repeat(1000));
    c.write(junk);
    c.write(junk);
    expect(c.retainedBytes).toBeLessThanOrEqual(4096 + 1024);
    expect(c.finish().kind).toBe('other');
  });

  it('finish is idempotent and later writes are ignored', () => {
    const c = createBounceClassifier();
    c.write(Buffer.from('Subject: failure notice\r\n\r\n'));
    const first = c.finish();
    c.write(Buffer.from('X-Autoreply: yes\r\n'));
    expect(c.finish()).toBe(first);
  });

  it('returns other for empty input and garbage', () => {
    expect(classifyBounce('')).toEqual({ kind: 'other', reason: 'no bounce, receipt, auto-reply or report markers' });
    expect(classifyBounce(Buffer.from([0xff, 0xfe, 0x00, 0x0a, 0x0d, 0x3a]))).toMatchObject({ kind: 'other' });
    expect(classifyBounce('Content-Type: multipart/report; boundary="\r\n\r\n--"\r\n--')).toMatchObject({ kind: 'other' });
  });

  it('never throws on arbitrary bytes, however they are chunked', () => {
    const kinds = ['dsn', 'mdn', 'auto-reply', 'report', 'other'];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), fc.array(fc.nat(2048), { maxLength: 8 }), (bytes, cuts) => {
        const r = feed(bytes, cuts, { prefixBytes: 512, maxHeaderBytes: 512 });
        expect(kinds).toContain(r.kind);
        expect(typeof r.reason).toBe('string');
      }),
      { numRuns: 500 },
    );
  });

  it('never throws on mail-shaped garbage', () => {
    const piece = fc.constantFrom(
      'Content-Type: multipart/report; report-type=delivery-status; boundary=', 'Content-Type: multipart/mixed; boundary="b"',
      'Content-Type: message/delivery-status', 'Content-Type: text/plain', 'Content-Transfer-Encoding: base64',
      'Content-Transfer-Encoding: quoted-printable', 'Subject: =?utf-8?B?', '=?x?Q?=ZZ?=', '?=', '--b', '--b--', '--',
      '"', '(', ')', '\\', ';', '=', '*', "''", '\r\n', '\n', '\r', ' ', '\t', ':', 'Auto-Submitted:', 'X-Autoreply',
      'Content-Disposition: attachment; filename*=', '%', '%E9', '!1!2.zip', 'From: MAILER-DAEMON',
    );
    fc.assert(
      fc.property(fc.array(fc.oneof(piece, fc.string({ maxLength: 6 })), { maxLength: 60 }), fc.array(fc.nat(600), { maxLength: 6 }), (parts, cuts) => {
        const data = Buffer.from(parts.join(''), 'utf8');
        expect(() => feed(data, cuts)).not.toThrow();
        expect(feed(data, cuts)).toEqual(classifyBounce(data));
      }),
      { numRuns: 500 },
    );
  });
});
