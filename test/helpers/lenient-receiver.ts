/**
 * SMTP receivers that read line ends the way real servers have, for the SMTP-smuggling tests
 * (CVE-2023-51764/51765/51766; docs/smuggling.md). Each is a tiny SMTP server on 127.0.0.1 that records
 * every transaction it completes, so a test can count how many messages a byte stream became:
 *
 *   - "crlf": only CR LF ends a line (RFC 5321; smtp-server, Postfix 3.9 with smtpd_forbid_bare_newline);
 *   - "lf":   a bare LF ends a line too, a CR before it is dropped (older Postfix, sendmail, many others);
 *   - "cr":   a bare CR ends a line as well (the receivers of CVE-2023-51766 and some appliances);
 *   - "nul":  drops every NUL byte first, then reads like "crlf".
 *
 * In DATA a line that is just "." ends the message; a leading "." of any other line is removed. The
 * server answers everything with 250 (354 for DATA, 221 for QUIT) and pipelines, so whatever a receiver
 * takes for a second transaction is recorded as one. Independent of src/ on purpose.
 */
import net from 'node:net';

export type LineRule = 'crlf' | 'lf' | 'cr' | 'nul';
export const LINE_RULES: readonly LineRule[] = ['crlf', 'lf', 'cr', 'nul'];

export interface ReceivedMessage {
  readonly from: string;
  readonly to: readonly string[];
  /** The body as this receiver reads it: lines joined with CR LF, dots unstuffed. */
  readonly body: string;
}

export interface LenientReceiver {
  readonly rule: LineRule;
  readonly port: number;
  /** Every completed transaction, in order. */
  readonly messages: ReceivedMessage[];
  /** Every MAIL FROM this receiver read (a smuggled transaction shows here even without its DATA). */
  readonly mailCommands: string[];
  reset(): void;
  close(): Promise<void>;
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * The next line of `buf` from `from` under `rule`: [line without its end, offset after the end], or null
 * when the line is not complete yet (a CR at the very end may still get its LF).
 */
export function nextLine(buf: Buffer, from: number, rule: LineRule): [string, number] | null {
  if (rule === 'cr') {
    for (let i = from; i < buf.length; i++) {
      if (buf[i] === LF) return [buf.toString('latin1', from, i), i + 1];
      if (buf[i] === CR) {
        if (i + 1 >= buf.length) return null;
        return [buf.toString('latin1', from, i), buf[i + 1] === LF ? i + 2 : i + 1];
      }
    }
    return null;
  }
  if (rule === 'lf') {
    const i = buf.indexOf(LF, from);
    if (i < 0) return null;
    const end = i > from && buf[i - 1] === CR ? i - 1 : i;
    return [buf.toString('latin1', from, end), i + 1];
  }
  // crlf (and nul, whose NULs are gone before this)
  for (let i = buf.indexOf(LF, from); i >= 0; i = buf.indexOf(LF, i + 1)) {
    if (i > from && buf[i - 1] === CR) return [buf.toString('latin1', from, i - 1), i + 1];
  }
  return null;
}

/**
 * How a receiver under `rule` reads the bytes after a 354: every message it sees (bodies) and whatever
 * follows the first end-of-data as commands. For property tests without sockets.
 */
export function readData(wire: Buffer, rule: LineRule): { body: string | null; after: string } {
  const bytes = rule === 'nul' ? Buffer.from(wire.filter((b) => b !== 0)) : wire;
  const lines: string[] = [];
  let pos = 0;
  for (;;) {
    const l = nextLine(bytes, pos, rule);
    if (!l) return { body: null, after: '' };
    pos = l[1];
    if (l[0] === '.') return { body: lines.map((x) => `${x}\r\n`).join(''), after: bytes.toString('latin1', pos) };
    lines.push(l[0].startsWith('.') ? l[0].slice(1) : l[0]);
  }
}

export async function startLenientReceiver(rule: LineRule): Promise<LenientReceiver> {
  const messages: ReceivedMessage[] = [];
  const mailCommands: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let pos = 0;
    let inData = false;
    let from = '';
    let to: string[] = [];
    let body: string[] = [];
    const say = (line: string) => { if (!socket.destroyed) socket.write(`${line}\r\n`); };
    say('220 lenient.test ESMTP');
    socket.on('data', (d: Buffer) => {
      const chunk = rule === 'nul' ? Buffer.from(d.filter((b) => b !== 0)) : d;
      buf = Buffer.concat([buf.subarray(pos), chunk]);
      pos = 0;
      for (let l = nextLine(buf, pos, rule); l; l = nextLine(buf, pos, rule)) {
        pos = l[1];
        const line = l[0];
        if (inData) {
          if (line === '.') {
            messages.push({ from, to, body: body.map((x) => `${x}\r\n`).join('') });
            inData = false;
            say('250 2.0.0 Ok: queued');
          } else body.push(line.startsWith('.') ? line.slice(1) : line);
          continue;
        }
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') say('250-lenient.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600');
        else if (verb === 'HELO' || verb === 'NOOP' || verb === 'RSET') {
          if (verb === 'RSET') { from = ''; to = []; }
          say('250 2.0.0 Ok');
        } else if (verb === 'MAIL') {
          mailCommands.push(line);
          from = /<([^>]*)>/.exec(line)?.[1] ?? '';
          to = [];
          say('250 2.1.0 Ok');
        } else if (verb === 'RCPT') {
          to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
          say('250 2.1.5 Ok');
        } else if (verb === 'DATA') {
          inData = true;
          body = [];
          say('354 End data with <CR><LF>.<CR><LF>');
        } else if (verb === 'QUIT') {
          say('221 2.0.0 Bye');
          socket.end();
        } else say('502 5.5.2 Error: command not recognized');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    rule,
    port,
    messages,
    mailCommands,
    reset() {
      messages.length = 0;
      mailCommands.length = 0;
    },
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
