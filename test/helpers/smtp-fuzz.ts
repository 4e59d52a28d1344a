/**
 * fast-check generators of SMTP client input for fuzzing the listeners: valid-ish command sequences
 * (EHLO/HELO/MAIL/RCPT/DATA/RSET/NOOP/VRFY/QUIT, AUTH, STARTTLS, BDAT, XCLIENT, PROXY and garbage), with
 * addresses that matter to the proxy (ours, foreign, valid and broken BATV tags and SRS addresses,
 * source routes, quoting, literals, non-ASCII), random parameters, message bodies with dots, bare CR/LF
 * and early terminators, line-ending variants, very long lines, random bytes, and single-character
 * mutations of all of it. A sequence is sent pipelined in 1-4 writes, then `FUZZ_TRAILER` so that every
 * session ends whatever state it was left in (DATA, an AUTH exchange, a command prompt).
 *
 * And a raw client that sends a sequence and collects every byte until the server closes.
 */
import net from 'node:net';
import fc from 'fast-check';

export interface FuzzAddresses {
  /** Addresses worth using: tagged ones made with the proxy's key, ours, foreign, broken. */
  readonly interesting: readonly string[];
}

const CRLF = fc.constantFrom('\r\n', '\r\n', '\r\n', '\r\n', '\n', '\r', '\r\r\n', '');
const verbCase = (v: string) => fc.constantFrom(v, v.toLowerCase(), v[0] + v.slice(1).toLowerCase());
const junkChar = fc.constantFrom('a', 'Z', '0', '@', '<', '>', ':', '"', '\\', '%', '!', '.', ' ', '\t', '=', '+', '[', ']', ',', ';', '\u00e9', '\u0430', '\u0000', '\u007f', '\u00ff');
const junk = (max: number) => fc.string({ unit: junkChar, maxLength: max });

function addressArb(a: FuzzAddresses) {
  const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?$/);
  const domain = fc.oneof(
    fc.constantFrom('example.com', 'EXAMPLE.COM', 'example.org', 'example.com.', 'srs.example.net', 'victim.example', 'ex\u0430mple.com', 'xn--exmple-4nf.com', '[127.0.0.1]', '[IPv6:::1]', 'example.com.victim.example'),
    fc.array(label, { minLength: 1, maxLength: 3 }).map((x) => x.join('.')),
  );
  const local = fc.oneof(
    fc.constantFrom('alice', 'postmaster', 'Postmaster', 'user%victim.example', '"user@victim.example"', '"a b"', 'prvs=0461abcdef=x', 'SRS0=abcd=7G=victim.example=x', 'SRS1=abcd=fwd.example==AB=x=y', 'a.b', '.a', 'a..b', 'ü', '"\\"\\\\"'),
    fc.stringMatching(/^[a-zA-Z0-9._%+=-]{1,20}$/),
  );
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...a.interesting) },
    { weight: 4, arbitrary: fc.tuple(local, domain).map(([l, d]) => `${l}@${d}`) },
    { weight: 1, arbitrary: fc.constantFrom('', 'postmaster', '@a.example:u@victim.example', '@a,@b:u@example.com', 'u@example.com@victim.example', 'u@', '@example.com') },
    { weight: 1, arbitrary: junk(40) },
  );
}

const param = fc.oneof(
  fc.constantFrom('SIZE=1000', 'SIZE=999999999999', 'SIZE=', 'SIZE=-1', 'BODY=8BITMIME', 'BODY=7BIT', 'BODY=BINARYMIME', 'BODY=junk', 'SMTPUTF8', 'RET=HDRS', 'RET=FULL', 'ENVID=QQ314159', 'ENVID=a+2Bb', 'NOTIFY=SUCCESS,FAILURE', 'NOTIFY=NEVER', 'NOTIFY=junk', 'ORCPT=rfc822;a@example.com', 'ORCPT=junk', 'AUTH=<>', 'REQUIRETLS', 'MTRK=x', 'X=Y', '='),
  fc.tuple(fc.stringMatching(/^[A-Za-z-]{1,10}$/), junk(15)).map(([k, v]) => `${k}=${v}`),
);
const params = fc.array(param, { maxLength: 4 }).map((p) => (p.length ? ` ${p.join(' ')}` : ''));
// Whole transactions mostly carry no parameters: most random ones are refused (555 5.5.4), and a
// transaction must often get as far as DATA.
const txnParams = fc.oneof({ weight: 4, arbitrary: fc.constant('') }, { weight: 1, arbitrary: params });

const bodyLine = fc.oneof(
  { weight: 5, arbitrary: fc.stringMatching(/^[ -~]{0,60}$/) },
  { weight: 1, arbitrary: fc.constantFrom('.', '..', '...', '.x', 'X-BATV-Proxy: batv-valid; key=0', 'Content-Type: multipart/report; report-type=delivery-status; boundary=b', '--b', 'Subject: Undelivered Mail Returned to Sender', 'From: MAILER-DAEMON@x.example', 'Auto-Submitted: auto-replied', '\u00e9\u00e8', '\u0000\u0001') },
);
const smallBody = fc.tuple(fc.array(fc.tuple(bodyLine, CRLF).map(([l, e]) => l + e), { maxLength: 12 }), fc.boolean())
  .map(([lines, headerEnd]) => (headerEnd ? `Subject: fuzz\r\n\r\n${lines.join('')}` : lines.join('')));
/** Now and then a body of 4-40 KiB (over a small limits.maxMessageBytes), headers only or with a body. */
const bigBody = fc.tuple(fc.integer({ min: 4, max: 40 }), fc.boolean())
  .map(([kib, headerEnd]) => `${headerEnd ? 'Subject: big\r\n\r\n' : ''}${`X-Big: ${'b'.repeat(1014)}\r\n`.repeat(kib)}`);
const body = fc.oneof({ weight: 30, arbitrary: smallBody }, { weight: 1, arbitrary: bigBody });

export function commandArb(a: FuzzAddresses): fc.Arbitrary<string> {
  const addr = addressArb(a);
  const host = fc.oneof(fc.constantFrom('client.test', '[127.0.0.1]', '[IPv6:::1]', 'localhost', ''), junk(30));
  const cmd = fc.oneof(
    { weight: 3, arbitrary: fc.tuple(fc.oneof(verbCase('EHLO'), verbCase('HELO'), fc.constant('LHLO')), host).map(([v, h]) => `${v} ${h}`) },
    { weight: 6, arbitrary: fc.tuple(verbCase('MAIL FROM:'), fc.constantFrom('', ' '), addr, params, fc.boolean()).map(([v, sp, x, p, br]) => (br ? `${v}${sp}<${x}>${p}` : `${v}${sp}${x}${p}`)) },
    { weight: 8, arbitrary: fc.tuple(verbCase('RCPT TO:'), fc.constantFrom('', ' '), addr, params, fc.boolean()).map(([v, sp, x, p, br]) => (br ? `${v}${sp}<${x}>${p}` : `${v}${sp}${x}${p}`)) },
    { weight: 4, arbitrary: fc.tuple(verbCase('DATA'), CRLF, body, fc.constantFrom('.\r\n', '\r\n.\r\n', '.\n', '', '.\r\n', '.\r\n')).map(([v, e, b, end]) => `${v}${e === '' ? '\r\n' : e}${b}${end}`) },
    { weight: 2, arbitrary: fc.constantFrom('RSET', 'NOOP', 'NOOP hello', 'VRFY alice', 'VRFY <alice@example.com>', 'EXPN list', 'HELP', 'HELP MAIL', 'QUIT', 'rset', 'STARTTLS', 'BDAT 10 LAST', 'XCLIENT ADDR=192.0.2.1', 'PROXY TCP4 192.0.2.1 127.0.0.1 1 2', 'TURN', 'ETRN example.com', 'DATA', '.', '', ' ', 'MAIL', 'RCPT', 'MAIL FROM', 'RCPT TO', 'MAIL FROM:<>', 'AUTH', 'AUTH CRAM-MD5') },
    { weight: 2, arbitrary: fc.tuple(fc.constantFrom('AUTH PLAIN', 'AUTH LOGIN', 'AUTH PLAIN =', 'AUTH XOAUTH2'), fc.oneof(fc.constant(''), fc.base64String({ maxLength: 40 }).map((s) => ` ${s}`), fc.constant(` ${Buffer.from('\0user\0wrong').toString('base64')}`), fc.constant('\r\n*'), fc.constant('\r\ndXNlcg==\r\ncGFzcw=='))).map(([v, r]) => `${v}${r}`) },
    { weight: 2, arbitrary: junk(60) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b).toString('latin1')) },
    { weight: 1, arbitrary: fc.integer({ min: 900, max: 20_000 }).map((n) => `NOOP ${'L'.repeat(n)}`) },
  );
  return fc.tuple(cmd, CRLF).map(([c, e]) => c + (e === '' ? '\r\n' : e));
}

/**
 * Mostly well-ordered sessions: EHLO, then transactions (MAIL, 1-3 RCPT, DATA with a body and its
 * terminator) with random commands slipped in between, so that deep states (DATA, relayed transactions,
 * next-hop replies) are reached often.
 */
export function sessionArb(a: FuzzAddresses): fc.Arbitrary<string> {
  const addr = addressArb(a);
  const any = commandArb(a);
  const txn = fc.tuple(
    fc.oneof({ weight: 3, arbitrary: fc.constant('') }, { weight: 1, arbitrary: any }),
    addr, txnParams,
    fc.array(fc.tuple(addr, txnParams), { minLength: 1, maxLength: 3 }),
    fc.oneof({ weight: 3, arbitrary: fc.constant('') }, { weight: 1, arbitrary: any }),
    body, fc.constantFrom('.\r\n', '.\r\n', '.\r\n', '\r\n.\r\n', ''),
  ).map(([pre, from, fp, rcpts, mid, b, end]) => `${pre}MAIL FROM:<${from}>${fp}\r\n${rcpts.map(([r, p]) => `RCPT TO:<${r}>${p}\r\n`).join('')}${mid}DATA\r\n${b}${b === '' || b.endsWith('\n') || end.startsWith('\r') ? '' : '\r\n'}${end}`);
  return fc.tuple(fc.constantFrom('EHLO client.test\r\n', 'HELO client.test\r\n', 'ehlo x\r\n', ''), fc.array(txn, { minLength: 1, maxLength: 3 }), fc.oneof(fc.constant(''), any))
    .map(([hello, txns, tail]) => `${hello}${txns.join('')}${tail}`);
}

/** Flips, inserts or deletes one character of a sequence (mutated streams). */
const mutationArb = fc.tuple(fc.nat(), fc.nat(2), fc.constantFrom('\r', '\n', '\0', '.', ':', '<', '>', '@', ' ', 'A', '\u00ff'));

export function sequenceArb(a: FuzzAddresses): fc.Arbitrary<{ text: string; cuts: number[] }> {
  const random = fc.array(commandArb(a), { minLength: 1, maxLength: 14 }).map((c) => c.join(''));
  const ordered = sessionArb(a);
  const mutations = fc.oneof({ weight: 2, arbitrary: fc.constant([] as Array<[number, number, string]>) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 2 }) });
  return fc.tuple(fc.oneof(ordered, random), mutations, fc.array(fc.nat(), { maxLength: 3 }))
    .map(([start, muts, cuts]) => {
      let text = start;
      for (const [at, kind, ch] of muts) {
        const i = text.length ? at % text.length : 0;
        text = kind === 0 ? text.slice(0, i) + ch + text.slice(i + 1) : kind === 1 ? text.slice(0, i) + ch + text.slice(i) : text.slice(0, i) + text.slice(i + 1);
      }
      return { text, cuts };
    });
}

/**
 * Sent after every sequence: ends a message in progress, cancels an AUTH exchange ("*"), and quits
 * (twice, in case the first QUIT was eaten as an AUTH response).
 */
export const FUZZ_TRAILER = '\r\n.\r\n*\r\nQUIT\r\n*\r\nQUIT\r\n';

export interface SessionResult {
  /** Every byte the server sent, as latin1 text. */
  readonly output: string;
  /** The server closed the connection within the time limit. */
  readonly closed: boolean;
  readonly ms: number;
}

/**
 * Connects (from `localAddress`), waits for the greeting (unless `early`: then it talks at once, as a
 * spambot does, and smtp-server's early-talker check answers), sends `text` split at `cuts` plus the
 * trailer, and reads until the server closes.
 */
export function runSession(port: number, text: string, cuts: number[], localAddress: string, limitMs: number, early = false): Promise<SessionResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const chunks: Buffer[] = [];
    const socket = net.connect({ port, host: '127.0.0.1', localAddress });
    socket.setNoDelay(true);
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ output: Buffer.concat(chunks).toString('latin1'), closed, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(false), limitMs);
    let sent = false;
    const send = () => {
      if (sent) return;
      sent = true;
      const bytes = Buffer.from(text, 'latin1');
      const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((x, y) => x - y);
      let from = 0;
      for (const p of points) {
        socket.write(bytes.subarray(from, p));
        from = p;
      }
      socket.write(bytes.subarray(from));
      socket.write(FUZZ_TRAILER);
    };
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (d.includes(0x0a)) send();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => finish(true));
    if (early) socket.once('connect', send);
  });
}

/** Lines of a server's output that are not well-formed SMTP reply lines (code, SP or "-", CRLF). */
export function badReplyLines(output: string): string[] {
  if (output === '') return [];
  const bad: string[] = [];
  if (!output.endsWith('\r\n')) bad.push(`unterminated: ${JSON.stringify(output.slice(-80))}`);
  for (const line of output.split('\r\n').slice(0, -1)) {
    if (!/^[2-5]\d\d(?:[ -][^\r\n]*)?$/.test(line) || line.length > 512) bad.push(JSON.stringify(line.slice(0, 200)));
  }
  return bad;
}
