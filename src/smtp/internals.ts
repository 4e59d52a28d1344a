/**
 * Every contact with smtp-server's private internals, in one place (docs/architecture.md, "The listener
 * adapter"). Each hook is the smallest one that does the job where smtp-server has no public API for it,
 * and test/smtp/internals.test.ts pins each on the installed version, so an upgrade that renames or
 * reshapes what a hook relies on fails loudly instead of silently signing wrong bytes or dropping replies.
 *
 * 1. The MAIL/RCPT address and parameters exactly as the client sent them. smtp-server hands hooks a
 *    normalised address: it converts A-label domains to Unicode (user@xn--bcher-kva.example arrives as
 *    user@bücher.example), normalises IPv6 literals, and xtext-decodes parameter values. A tag must be
 *    computed over the bytes the next hop and the eventual bounce will carry, and parameters must pass
 *    through as typed, so the relay needs the raw text. The connection's address parser is wrapped once
 *    so that every parsed address also carries `raw` (address as sent, source route removed) and
 *    `rawParams` (each parameter token as sent).
 *
 * 2. Clients that half-close. exim writes ".<CRLF>QUIT<CRLF>" in one packet and then shuts down its
 *    sending side (FIN) while it still waits for the replies. The listener runs with allowHalfOpen, so the
 *    FIN no longer closes our side before the replies are written, and the socket's readyState reads
 *    'open' while only the client's side is shut ('writeOnly'), because send() writes nothing otherwise;
 *    when the command parser has processed
 *    everything the client sent (its 'finish' event: smtp-server calls back a chunk only after every
 *    command in it was answered, the end of DATA included), the connection is closed. A FIN in the
 *    middle of DATA therefore closes the connection with the message incomplete, which smtp-server turns
 *    into a destroyed DATA stream: the next hop never sees the end of that message.
 *
 * 3. Closing a connection with a reply at a moment of our choosing (closeConnection): the DATA deadline
 *    must answer a client that is still sending, and smtp-server answers DATA only after its end.
 *
 * 4. Draining at shutdown (drainConnections): smtp-server's close() answers every later command 421,
 *    those of transactions under way included; the drain lets them finish and a last QUIT get its 221.
 *
 * The run-time options (EHLO name, size, what EHLO offers) are written by the Listener in listener.ts:
 * smtp-server reads `options` at each connection and command, and has no setter for them.
 */
import net from 'node:net';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

export interface RawAddress {
  /** The address between the angle brackets, as sent, without a source route ('' for <>). */
  readonly raw: string;
  /** The parameter tokens after the path, as sent (e.g. ["SIZE=1234", "BODY=8BITMIME"]). */
  readonly rawParams: readonly string[];
}

const RAW = Symbol.for('batv-proxy.raw-command');

/** Splits "MAIL FROM:<addr> P1 P2" the same way smtp-server does, keeping the original text. */
export function splitAddressCommand(command: string): RawAddress | null {
  const colon = command.indexOf(':');
  if (colon < 0) return null;
  const rest = command.slice(colon + 1).trim();
  const tokens = rest.split(/\s+/);
  const path = tokens.shift() ?? '';
  if (!/^<[^<>]*>$/.test(path)) return null;
  const raw = path.slice(1, -1).replace(/^@[^\s,:@]+(?:,@[^\s,:@]+)*:/, '');
  return { raw, rawParams: tokens.filter((t) => t !== '') };
}

type Parser = (this: unknown, name: string, command: unknown) => unknown;

interface ConnectionInternals {
  id: string;
  _socket: NodeJS.EventEmitter & { readyState: string };
  _parser: unknown;
  _closing: boolean;
  _closed: boolean;
  close(): void;
  send(code: number, text: string): void;
}

/** Open connections by session id, for closeConnection() (hook 3). */
const live = new Map<string, ConnectionInternals>();

/**
 * Hook 3: writes one reply line and closes the connection now, whatever smtp-server is waiting for (a
 * client dribbling DATA never lets smtp-server answer; the DATA deadline must). False when it is gone.
 */
export function closeConnection(sessionId: string, code: number, text: string): boolean {
  const c = live.get(sessionId);
  if (!c || c._closing || c._closed) return false;
  c.send(code, text);
  c.close();
  return true;
}

const HALF_CLOSE = Symbol.for('batv-proxy.half-close');

function method<T>(proto: Record<string | symbol, unknown>, name: string, why: string): T {
  const m = proto[name];
  if (typeof m !== 'function') throw new Error(`smtp-server has no ${name}; this version is not supported (${why})`);
  return m as T;
}

/**
 * Installs both hooks on smtp-server's connection class (idempotent). Listeners must also be created
 * with `allowHalfOpen: true` (createListener does).
 * @throws Error when smtp-server no longer has a method a hook needs.
 */
export function installConnectionHooks(): void {
  const proto = (SMTPConnection as unknown as { prototype: Record<string | symbol, unknown> }).prototype;
  if (!proto[HALF_CLOSE]) {
    const why = 'half-closing clients would lose their replies';
    const create = method<(this: ConnectionInternals) => NodeJS.EventEmitter>(proto, '_createParser', why);
    const listen = method<(this: ConnectionInternals, cb: () => void) => void>(proto, '_setListeners', why);
    const stateOf = Object.getOwnPropertyDescriptor(net.Socket.prototype, 'readyState')?.get;
    if (!stateOf) throw new Error(`node's net.Socket has no readyState getter (${why})`);
    // send() writes only while readyState is 'open'; a socket whose peer sent FIN is 'writeOnly', and
    // the replies the client is still owed must be written to it.
    proto._setListeners = function (this: ConnectionInternals, cb: () => void): void {
      Object.defineProperty(this._socket, 'readyState', {
        configurable: true,
        get(this: net.Socket) {
          const state = stateOf.call(this) as string;
          return state === 'writeOnly' ? 'open' : state;
        },
      });
      live.set(this.id, this);
      this._socket.once('close', () => live.delete(this.id));
      listen.call(this, cb);
    };
    proto._createParser = function (this: ConnectionInternals): NodeJS.EventEmitter {
      const parser = create.call(this);
      parser.once('finish', () => {
        // Everything the client sent before its FIN has been answered (a parser replaced by STARTTLS
        // never finishes: it is unpiped, not ended).
        if (this._parser === parser && !this._closing && !this._closed) this.close();
      });
      return parser;
    };
    proto[HALF_CLOSE] = true;
  }
  if (proto[RAW]) return;
  const original = method<Parser>(proto, '_parseAddressCommand', 'raw addresses cannot be captured');
  proto._parseAddressCommand = function (this: unknown, name: string, command: unknown): unknown {
    const parsed = original.call(this, name, command);
    if (parsed && typeof parsed === 'object') {
      const split = splitAddressCommand(String(command ?? ''));
      if (split) Object.defineProperty(parsed, RAW, { value: split, enumerable: false });
    }
    return parsed;
  };
  proto[RAW] = true;
}

/** The raw form of an address object handed to onMailFrom/onRcptTo (falls back to the parsed one). */
export function rawOf(parsed: { address: string }): RawAddress {
  const r = (parsed as unknown as Record<symbol, RawAddress | undefined>)[RAW];
  return r ?? { raw: parsed.address, rawParams: [] };
}

interface DrainProbe {
  session?: { envelope?: { mailFrom?: unknown } };
  _dataStream?: unknown;
  _closing?: boolean;
  _closed?: boolean;
  send(code: number, text: string): void;
  close(): void;
}

/** How long a connection that finished its transaction during a drain may stay before it is told to go. */
export const DRAIN_IDLE_MS = 1000;

/**
 * Hook 4 (shutdown): stops accepting and lets the transactions under way finish. smtp-server's own
 * close() cannot be used for this: from the moment it is called, every command is answered "421 Server
 * shutting down" (its _onCommand checks _closeTimeout), the RCPT, DATA and QUIT of a transaction under
 * way included, so a transaction between MAIL and DATA fails and a client that QUITs after its last
 * message never hears 221. Instead: the listening socket (`netServer`, the Listener's, which also holds
 * and destroys the sockets still sending a PROXY header) is closed, and every 50 ms the connections are looked at: one with no transaction open when the drain starts is told
 * `code text` at once; one that finishes its transaction later may still QUIT (221) or is told after
 * DRAIN_IDLE_MS; a MAIL during the drain is refused by the Listener (src/smtp/listener.ts). After
 * `graceMs` whatever is left is told `code text` and closed. Resolves once every connection is gone.
 */
export function drainConnections(server: object, netServer: net.Server, graceMs: number, code: number, text: string): Promise<void> {
  const s = server as { connections?: Set<DrainProbe> };
  if (!(s.connections instanceof Set)) {
    throw new Error('smtp-server has no connections set; this version is not supported (shutdown cannot drain)');
  }
  const conns = s.connections;
  return new Promise<void>((resolve) => {
    // Elapsed time on the monotonic clock (not the wall clock src/clock.ts owns).
    const idleSince = new WeakMap<DrainProbe, number>();
    const started = performance.now();
    let first = true;
    const tell = (c: DrainProbe) => {
      c.send(code, text); // a 421 closes the connection (smtp-server's send)
      if (!c._closing && !c._closed) c.close();
    };
    const sweep = () => {
      const now = performance.now();
      for (const c of conns) {
        if (c._closing || c._closed) continue;
        if (now - started >= graceMs) { tell(c); continue; }
        if (c.session?.envelope?.mailFrom || c._dataStream) { idleSince.delete(c); continue; }
        const since = idleSince.get(c);
        if (first || (since !== undefined && now - since >= DRAIN_IDLE_MS)) tell(c);
        else if (since === undefined) idleSince.set(c, now);
      }
      first = false;
    };
    const timer = setInterval(sweep, 50);
    const finish = () => { clearInterval(timer); resolve(); };
    if (netServer.listening) netServer.close(finish);
    else if (conns.size === 0) { finish(); return; }
    else { const wait = setInterval(() => { if (conns.size === 0) { clearInterval(wait); finish(); } }, 50); }
    sweep();
  });
}
