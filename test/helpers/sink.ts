/**
 * A real smtp-server on 127.0.0.1, port 0, standing in for a next hop or mailbox host: it records every
 * message it accepts (envelope, parameters, body bytes exactly as its onData stream yields them), refuses
 * chosen senders, recipients or messages with chosen replies, and advertises or hides extensions.
 *
 * @example
 *   const sink = await startSink({ refuseRecipients: { 'nobody@example.org': { code: 550, message: '5.1.1 No such user' } } });
 *   // ... deliver to sink.port ...
 *   const [m] = await sink.waitForMessages(1);
 *   expect(m?.rcptTo).toEqual(['user@example.org']);
 *   await sink.close();
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { SMTPServer, type SMTPServerAddress, type SMTPServerOptions } from 'smtp-server';

/** One accepted message. Parameter keys are upper case; a keyword without a value is `true`. */
export interface SinkMessage {
  mailFrom: string;
  mailParams: Record<string, string | true>;
  rcptTo: string[];
  rcptParams: Array<Record<string, string | true>>;
  /** The bytes smtp-server's onData stream yielded: dot-unstuffed, ending in CRLF (or empty). */
  body: Buffer;
  /** Whether the session was encrypted. */
  secure: boolean;
  /** The authenticated user name, or null. */
  user: string | null;
}

/**
 * A reply the sink gives instead of accepting: `${code} ${message}` on the wire, verbatim. (With
 * `show: ['ENHANCEDSTATUSCODES']` smtp-server puts its own enhanced code in front of `message`.)
 */
export interface SinkRefusal {
  code: number;
  /** Words after the code, including any enhanced code: "5.1.1 <x@y.example>: no such user". */
  message: string;
}

/** EHLO keywords the sink can hide (`hide`) or show (`show`; ENHANCEDSTATUSCODES and DSN start hidden). */
export type SinkExtension = 'PIPELINING' | '8BITMIME' | 'SMTPUTF8' | 'ENHANCEDSTATUSCODES' | 'DSN' | 'REQUIRETLS';

export interface SinkOptions {
  /** Senders (compared case-insensitively, "" is the null sender) refused at MAIL FROM. */
  refuseSenders?: Record<string, SinkRefusal>;
  /** Recipients (compared case-insensitively) refused at RCPT TO. */
  refuseRecipients?: Record<string, SinkRefusal>;
  /** Refuse at end of data (after reading the whole message): always, or when the function says so. */
  refuseData?: SinkRefusal | ((message: SinkMessage) => SinkRefusal | undefined);
  hide?: SinkExtension[];
  show?: SinkExtension[];
  /** Advertise SIZE with this limit (smtp-server also flags larger messages). */
  size?: number;
  /** Key and certificate: STARTTLS is offered only with these (or implicit TLS with `implicitTls`). */
  tls?: { key: string | Buffer; cert: string | Buffer };
  implicitTls?: boolean;
  /** Offer AUTH (PLAIN and LOGIN by default, also without TLS) and accept only these credentials. */
  auth?: { user: string; pass: string; methods?: Array<'PLAIN' | 'LOGIN'> };
  /** Server name in the greeting and EHLO reply. */
  name?: string;
}

export interface Sink {
  readonly host: string;
  readonly port: number;
  /** Accepted messages, oldest first. */
  readonly messages: SinkMessage[];
  /** Options in force; fields may be changed between tests (refusals, refuseData). */
  readonly options: SinkOptions;
  /** Resolves with the first `n` messages once that many were accepted. */
  waitForMessages(n: number, timeoutMs?: number): Promise<SinkMessage[]>;
  /** Forgets recorded messages. */
  reset(): void;
  /** Stops listening and drops open connections. */
  close(): Promise<void>;
}

function refusal(r: SinkRefusal): Error {
  return Object.assign(new Error(r.message), { responseCode: r.code });
}

function params(a: SMTPServerAddress): Record<string, string | true> {
  return a.args ? { ...a.args } : {};
}

/**
 * Starts the sink. `disableReverseLookup`, `authOptional` and `logger: false` are always set.
 *
 * @example
 *   const sink = await startSink({ hide: ['8BITMIME'], size: 1000 }); // EHLO: no 8BITMIME, "SIZE 1000"
 */
export async function startSink(options: SinkOptions = {}): Promise<Sink> {
  const messages: SinkMessage[] = [];
  const waiters = new Set<() => void>();
  const o = options;
  const disabled = [...(o.tls ? [] : ['STARTTLS']), ...(o.auth ? [] : ['AUTH'])];
  const serverOptions: SMTPServerOptions = {
    name: o.name ?? 'sink.test',
    disableReverseLookup: true,
    authOptional: true,
    logger: false,
    closeTimeout: 100,
    disabledCommands: disabled,
    allowInsecureAuth: true,
    authMethods: o.auth?.methods ?? ['PLAIN', 'LOGIN'],
    secure: o.implicitTls === true,
    ...(o.tls ? { key: o.tls.key, cert: o.tls.cert } : {}),
    ...(o.size !== undefined ? { size: o.size } : {}),
    onAuth(auth, _session, cb) {
      if (o.auth && auth.username === o.auth.user && auth.password === o.auth.pass) return cb(null, { user: auth.username });
      cb(refusal({ code: 535, message: '5.7.8 Authentication credentials invalid' }));
    },
    onMailFrom(address, _session, cb) {
      const r = o.refuseSenders?.[address.address.toLowerCase()];
      cb(r ? refusal(r) : null);
    },
    onRcptTo(address, _session, cb) {
      const r = o.refuseRecipients?.[address.address.toLowerCase()];
      cb(r ? refusal(r) : null);
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('error', () => undefined);
      stream.on('end', () => {
        const env = session.envelope;
        const message: SinkMessage = {
          mailFrom: env.mailFrom ? env.mailFrom.address : '',
          mailParams: env.mailFrom ? params(env.mailFrom) : {},
          rcptTo: env.rcptTo.map((r) => r.address),
          rcptParams: env.rcptTo.map(params),
          body: Buffer.concat(chunks),
          secure: session.secure,
          user: typeof session.user === 'string' ? session.user : null,
        };
        const refuse = typeof o.refuseData === 'function' ? o.refuseData(message) : o.refuseData;
        if (refuse) return cb(refusal(refuse));
        messages.push(message);
        for (const w of waiters) w();
        cb(null, 'Ok: queued as sink');
      });
    },
  };
  for (const ext of o.hide ?? []) (serverOptions as Record<string, unknown>)[`hide${ext}`] = true;
  for (const ext of o.show ?? []) (serverOptions as Record<string, unknown>)[`hide${ext}`] = false;
  const server = new SMTPServer(serverOptions);
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.server.address() as net.AddressInfo).port;
  let offset = 0;
  return {
    host: '127.0.0.1',
    port,
    options: o,
    get messages() { return messages.slice(offset); },
    async waitForMessages(n, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (messages.length - offset < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`Sink: ${messages.length - offset} of ${n} messages within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const done = (): void => { waiters.delete(done); clearTimeout(t); resolve(); };
          const t = setTimeout(done, left);
          waiters.add(done);
        });
      }
      return messages.slice(offset, offset + n);
    },
    reset() { offset = messages.length; },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

let cached: { key: string; cert: string } | null = null;

/**
 * A self-signed EC certificate for CN=localhost with subjectAltName DNS:localhost and IP:127.0.0.1, made
 * once per process with the `openssl` command. Pass `cert` as `ca` to a client that should trust it.
 *
 * @example
 *   const { key, cert } = selfSignedCert();
 *   const sink = await startSink({ tls: { key, cert } });
 */
export function selfSignedCert(): { key: string; cert: string } {
  if (cached) return cached;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-cert-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '2',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { stdio: 'ignore' });
    cached = { key: readFileSync(path.join(dir, 'key.pem'), 'utf8'), cert: readFileSync(path.join(dir, 'cert.pem'), 'utf8') };
    return cached;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
