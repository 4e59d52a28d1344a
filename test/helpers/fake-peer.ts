/**
 * A scripted raw-TCP SMTP peer on 127.0.0.1, port 0: byte-exact control over every reply (text, delay,
 * dropping the connection, stalling, refusing at the greeting) and a record of every byte it received.
 * smtp-server cannot send arbitrary or broken replies, hence raw `net` (nodemailer's test pattern).
 *
 * @example
 *   const peer = await startFakePeer({ RCPT: ['250 2.1.5 Ok', '550 5.1.1 <b@x.example>: no such user'] });
 *   // ... connect a client to peer.port ...
 *   expect(peer.connections[0]?.commands).toEqual(['EHLO proxy.example', 'MAIL FROM:<a@b.example>', ...]);
 *   await peer.close();
 */
import { spawn } from 'node:child_process';
import net from 'node:net';

/** What the peer does when a command (or the end of a message) arrives. A string is `{ reply: string }`. */
export type PeerAction =
  | string
  | {
      /** Reply text, lines separated by "\r\n" (CRLF is added at the end); sent as one write. */
      reply?: string;
      /** Raw bytes to send instead of `reply`, nothing added (broken replies, injected extras). */
      raw?: string | Buffer;
      /** Wait this long before acting. */
      delayMs?: number;
      /**
       * After the reply (or instead of it, when there is none): 'drop' closes the connection; 'stall' keeps
       * it open but answers nothing more (input is still recorded); 'stop-reading' stops reading the socket,
       * so the client's writes back up once the TCP buffers are full.
       */
      then?: 'drop' | 'stall' | 'stop-reading';
    };

/** Events a script can answer: the greeting, each command verb (upper case) and END (after "\r\n.\r\n"). */
export type PeerEvent =
  | 'GREETING' | 'EHLO' | 'HELO' | 'STARTTLS' | 'AUTH' | 'MAIL' | 'RCPT' | 'DATA' | 'END' | 'RSET' | 'NOOP' | 'QUIT'
  | 'OTHER';

/**
 * A script: per event a single action (used every time), a list (the n-th occurrence on a connection takes
 * the n-th entry, the last one repeats) or a function of the line received. `BODY` acts once per connection
 * when at least `afterBytes` body bytes (raw, as received after the 354) have arrived, instead of parsing
 * that chunk: drop, stall, stop reading (the TCP window fills) or reply mid-body, after which the rest of the
 * input is recorded but not parsed.
 */
export type PeerScript = Partial<Record<PeerEvent, PeerAction | PeerAction[] | ((line: string, conn: PeerConnection) => PeerAction)>> & {
  BODY?: { afterBytes: number; action: 'drop' | 'stall' | 'stop-reading' | PeerAction };
};

/** Replies used for events the script does not mention. */
export const DEFAULT_PEER_REPLIES: Record<PeerEvent, string> = {
  GREETING: '220 fake.peer ESMTP',
  EHLO: '250-fake.peer\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000',
  HELO: '250 fake.peer',
  STARTTLS: '454 4.7.0 TLS not available',
  AUTH: '504 5.5.4 Unrecognized authentication type',
  MAIL: '250 2.1.0 Ok',
  RCPT: '250 2.1.5 Ok',
  DATA: '354 End data with <CR><LF>.<CR><LF>',
  END: '250 2.0.0 Ok: queued',
  RSET: '250 2.0.0 Ok',
  NOOP: '250 2.0.0 Ok',
  QUIT: '221 2.0.0 Bye',
  OTHER: '502 5.5.2 Error: command not recognized',
};

/** One accepted connection and what it received. */
export interface PeerConnection {
  /** Every byte received, in order, commands and message data alike. */
  readonly received: Buffer;
  /** Command lines received (without CRLF), in order. */
  readonly commands: string[];
  /** Raw message data of each completed DATA (as on the wire, dot-stuffed, including the final ".\r\n"). */
  readonly messages: Buffer[];
  /** Raw data of a DATA still in progress (or cut off), null outside DATA. */
  readonly pendingData: Buffer | null;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
  readonly isClosed: boolean;
}

export interface FakePeer {
  readonly host: string;
  readonly port: number;
  /** The script; may be replaced or changed between tests. */
  script: PeerScript;
  /** Connections in the order they were accepted. */
  readonly connections: PeerConnection[];
  /** Forgets recorded connections (open ones keep running). */
  reset(): void;
  /** Resolves with the n-th connection (0-based) once it exists. */
  connection(n: number, timeoutMs?: number): Promise<PeerConnection>;
  /** Destroys every connection and stops listening. */
  close(): Promise<void>;
}

const TERMINATOR = Buffer.from('\r\n.\r\n');

class Conn implements PeerConnection {
  readonly commands: string[] = [];
  readonly messages: Buffer[] = [];
  isClosed = false;
  readonly closed: Promise<void>;
  private inData = false;
  private dataChunks: Buffer[] = [];
  /** Last bytes seen in DATA, to find a terminator split across chunks. */
  private tail = Buffer.alloc(0);
  private chunks: Buffer[] = [];
  private line = Buffer.alloc(0);
  private counts = new Map<PeerEvent, number>();
  private bodyBytes = 0;
  private bodyActed = false;
  private stalled = false;
  private busy: Promise<void> = Promise.resolve();

  constructor(private readonly socket: net.Socket, private readonly peer: { script: PeerScript }) {
    this.closed = new Promise((resolve) => socket.on('close', () => { this.isClosed = true; resolve(); }));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.act('GREETING', '');
  }

  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  get pendingData(): Buffer | null {
    return this.inData ? Buffer.concat(this.dataChunks) : null;
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    if (this.stalled) return;
    let rest = chunk;
    while (rest.length > 0) {
      if (this.inData) {
        rest = this.feedData(rest);
        continue;
      }
      const nl = rest.indexOf(0x0a);
      if (nl === -1) {
        this.line = Buffer.concat([this.line, rest]);
        return;
      }
      const raw = Buffer.concat([this.line, rest.subarray(0, nl)]);
      this.line = Buffer.alloc(0);
      rest = rest.subarray(nl + 1);
      const text = raw.toString('utf8').replace(/\r$/, '');
      this.commands.push(text);
      const verb = (/^\S*/.exec(text)?.[0] ?? '').toUpperCase();
      const event = (verb in DEFAULT_PEER_REPLIES && verb !== 'GREETING' && verb !== 'END' ? verb : 'OTHER') as PeerEvent;
      const reply = this.act(event, text);
      if (event === 'DATA' && reply?.startsWith('354')) this.startData();
    }
  }

  /** Takes message data; returns what follows the terminator (commands again). */
  private feedData(chunk: Buffer): Buffer {
    const body = this.peer.script.BODY;
    this.bodyBytes += chunk.length;
    if (body && !this.bodyActed && this.bodyBytes >= body.afterBytes) {
      this.bodyActed = true;
      this.dataChunks.push(chunk);
      if (body.action === 'drop' || body.action === 'stall' || body.action === 'stop-reading') this.finish(body.action);
      else {
        this.stalled = true;
        this.perform(body.action, null);
      }
      return Buffer.alloc(0);
    }
    // the tail starts as a virtual CRLF, so that ".\r\n" right after the 354 ends an empty message
    const probe = Buffer.concat([this.tail, chunk]);
    const at = probe.indexOf(TERMINATOR);
    if (at === -1) {
      this.dataChunks.push(chunk);
      this.tail = Buffer.from(probe.subarray(Math.max(0, probe.length - 4)));
      return Buffer.alloc(0);
    }
    const endInChunk = at + TERMINATOR.length - this.tail.length;
    this.messages.push(Buffer.concat([...this.dataChunks, chunk.subarray(0, endInChunk)]));
    this.inData = false;
    this.bodyBytes = 0;
    this.act('END', '');
    return chunk.subarray(endInChunk);
  }

  private startData(): void {
    this.inData = true;
    this.dataChunks = [];
    this.tail = Buffer.from('\r\n');
  }

  /** Runs the scripted action for an event; returns the reply text it will send (for DATA's 354). */
  private act(event: PeerEvent, line: string): string | null {
    const n = this.counts.get(event) ?? 0;
    this.counts.set(event, n + 1);
    const entry = this.peer.script[event];
    let action: PeerAction = DEFAULT_PEER_REPLIES[event];
    if (typeof entry === 'function') action = entry(line, this);
    else if (Array.isArray(entry)) action = entry[Math.min(n, entry.length - 1)] ?? action;
    else if (entry !== undefined) action = entry;
    return this.perform(action, event);
  }

  private perform(action: PeerAction, event: PeerEvent | null): string | null {
    const a = typeof action === 'string' ? { reply: action } : action;
    const out = a.raw ?? (a.reply !== undefined ? `${a.reply}\r\n` : null);
    const then = a.then ?? (event === 'QUIT' ? 'drop' : undefined);
    const run = async (): Promise<void> => {
      if (a.delayMs) await new Promise((r) => setTimeout(r, a.delayMs));
      if (out !== null && !this.socket.destroyed) this.socket.write(out);
      if (then) this.finish(then);
    };
    this.busy = this.busy.then(run);
    return a.reply ?? (typeof a.raw === 'string' ? a.raw : null);
  }

  private finish(then: 'drop' | 'stall' | 'stop-reading'): void {
    if (then === 'drop') this.socket.end(() => this.socket.destroy());
    else if (then === 'stall') this.stalled = true;
    else this.socket.pause();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * Starts a fake peer on 127.0.0.1, port 0, with the given script (defaults for everything else).
 *
 * @example
 *   const peer = await startFakePeer({ GREETING: { then: 'stall' } }); // never greets
 */
export async function startFakePeer(script: PeerScript = {}): Promise<FakePeer> {
  const conns: Conn[] = [];
  const waiting: Array<() => void> = [];
  const state = { script };
  const server = net.createServer((socket) => {
    conns.push(new Conn(socket, state));
    for (const w of waiting.splice(0)) w();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  let offset = 0;
  const peer: FakePeer = {
    host: '127.0.0.1',
    port,
    get script() { return state.script; },
    set script(s: PeerScript) { state.script = s; },
    get connections() { return conns.slice(offset); },
    reset() { offset = conns.length; },
    async connection(n, timeoutMs = 2000) {
      const deadline = Date.now() + timeoutMs;
      while (conns.length <= offset + n) {
        if (Date.now() > deadline) throw new Error(`Fake peer: no connection #${n} within ${timeoutMs} ms`);
        await new Promise<void>((r) => { waiting.push(r); setTimeout(r, 20); });
      }
      return conns[offset + n] as PeerConnection;
    },
    async close() {
      for (const c of conns) c.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return peer;
}

/** A port on 127.0.0.1 that was free a moment ago and has nothing listening: connecting is refused. */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A listening port whose accept queue is full, so a new connection hangs in SYN-SENT: a connect timeout. */
export interface Blackhole {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Starts a blackhole: a python3 process listens with backlog 0 and never accepts, and a few filler
 * connections fill its queue, so the kernel drops further SYNs. Node itself always accepts, hence python.
 *
 * @example
 *   const hole = await startBlackhole();
 *   await connectNextHop({ host: hole.host, port: hole.port, connectTimeoutMs: 200 }); // times out at connect
 */
export async function startBlackhole(): Promise<Blackhole> {
  const code = 'import socket,sys\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()';
  const py = spawn('python3', ['-c', code], { stdio: ['pipe', 'pipe', 'ignore'] });
  const port = await new Promise<number>((resolve, reject) => {
    py.once('error', reject);
    py.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  const fillers = Array.from({ length: 4 }, () => net.connect(port, '127.0.0.1').on('error', () => undefined));
  await new Promise((r) => setTimeout(r, 50));
  return {
    host: '127.0.0.1',
    port,
    async close() {
      for (const f of fillers) f.destroy();
      const gone = new Promise((r) => py.once('exit', r));
      py.stdin.end(); // python exits when its stdin closes
      await gone;
    },
  };
}
