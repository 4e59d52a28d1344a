/**
 * A real Postfix 3.7 instance as an SMTP client of the proxy (issue 9): the copy scripts/install-peers.sh
 * unpacked under .peers/postfix/root (never the machine's installed Postfix, never /etc/postfix or
 * /var/spool/postfix). Everything lives in a temp dir: its own config_directory (main.cf and master.cf
 * written here), queue_directory, data_directory and maillog_file; daemon, command, shlib and meta
 * directories point into the unpacked tree, and LD_LIBRARY_PATH is kept through import_environment
 * because master re-executes its children (the binaries' RUNPATH is /usr/lib/postfix).
 *
 * smtpd listens on 127.0.0.1:<free port>; mail is routed by transport_maps (domain -> port) and/or a
 * relayhost; there is no local delivery (mydestination is empty, anything unrouted fails with an error
 * transport, so stray notices never reach a test's next hop). Queue timers are a few seconds.
 * Postfix's master must run as root (it drops to the `postfix` user for its daemons).
 *
 * @example
 *   const pf = await startPostfixMta({ routes: { 'example.net': proxy.outbound.port } });
 *   const s = await pf.submit('alice@example.com', ['bob@example.net'], 'Subject: x\r\n\r\nbody\r\n');
 *   const [d] = await pf.waitForDeliveries(s.queueId, 1); // d.status === 'sent', d.text === '250 ...'
 *   await pf.waitForEmptyQueue();
 *   await pf.stop();
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { PeerCheck } from './peers.js';
import { freePort, REPO, run } from './proc.js';
import { talk } from './talk.js';

/** The unpacked Postfix tree (POSTFIX_ROOT overrides, e.g. for a copy elsewhere). */
export const POSTFIX_ROOT = process.env.POSTFIX_ROOT ?? path.join(REPO, '.peers/postfix/root');
const LIB = path.join(POSTFIX_ROOT, 'usr/lib/postfix');
const SBIN = path.join(POSTFIX_ROOT, 'usr/sbin');
const DAEMONS = path.join(LIB, 'sbin');
/** The name Postfix gives itself (greeting, Received lines); the proxy's test hostname is proxy.test. */
export const POSTFIX_HOSTNAME = 'postfix.test';

function env(): Record<string, string> {
  return { PATH: '/usr/bin:/bin:/usr/sbin:/sbin', LD_LIBRARY_PATH: LIB, LANG: 'C', TZ: 'UTC' };
}

let checked: PeerCheck | undefined;

/** Whether the unpacked Postfix is there and runs (`postconf -c EMPTY -d mail_version` says 3.x), and we are root. */
export function checkPostfixMta(): PeerCheck {
  if (checked) return checked;
  const postconf = path.join(SBIN, 'postconf');
  if (!existsSync(postconf) || !existsSync(path.join(DAEMONS, 'master'))) {
    return (checked = { available: false, reason: `unpacked Postfix not found under ${POSTFIX_ROOT}` });
  }
  if (process.getuid?.() !== 0) return (checked = { available: false, reason: 'a Postfix instance must be started as root' });
  // an empty config dir of its own: without -c, postconf would read the machine's /etc/postfix
  const probe = mkdtempSync(path.join(os.tmpdir(), 'postfix-probe-'));
  writeFileSync(path.join(probe, 'main.cf'), '');
  writeFileSync(path.join(probe, 'master.cf'), '');
  const r = spawnSync(postconf, ['-c', probe, '-d', 'mail_version'], { env: env(), timeout: 10_000, encoding: 'utf8' });
  rmSync(probe, { recursive: true, force: true });
  const out = (r.stdout ?? '').trim();
  checked = /^mail_version = 3\./.test(out)
    ? { available: true, reason: out }
    : { available: false, reason: `${postconf} -d mail_version gave ${JSON.stringify(out)} ${(r.stderr ?? '').trim()} ${r.error?.message ?? ''}` };
  return checked;
}

/** One `to=<...>` line of Postfix's delivery agents (smtp, error, ...). */
export interface PostfixDelivery {
  readonly queueId: string;
  /** The agent that logged it, e.g. "smtp". */
  readonly agent: string;
  readonly to: string;
  /** "127.0.0.1[127.0.0.1]:2525", or "none". */
  readonly relay: string;
  readonly dsn: string;
  /** sent, deferred, bounced, expired, ... */
  readonly status: string;
  /** The text in parentheses after the status: the remote reply ("250 2.0.0 Ok") or Postfix's words. */
  readonly text: string;
  readonly line: string;
}

/** An entry of `postqueue -j`. */
export interface PostfixQueueEntry {
  queue_name: string;
  queue_id: string;
  sender: string;
  recipients: Array<{ address: string; delay_reason?: string }>;
}

/** What the Postfix smtpd answered to one submission. */
export interface PostfixSubmission {
  readonly mail: string;
  readonly rcpt: string[];
  readonly data: string;
  /** The reply to the final dot, e.g. "250 2.0.0 Ok: queued as 99D8820C5DF". */
  readonly end: string;
  /** The queue id from `end` ('' if the message was not taken). */
  readonly queueId: string;
}

export interface PostfixMtaOptions {
  /** Recipient domain -> where to relay it: a port on 127.0.0.1, or a Postfix transport ("discard:", "smtp:[h]:p"). */
  routes?: Record<string, number | string>;
  /** Everything else goes here (relayhost = [127.0.0.1]:port); without it unrouted mail fails (error transport). */
  relayhostPort?: number;
  /** Seconds: queue_run_delay and minimal_backoff_time (default 5), maximal_backoff_time is twice it. */
  retrySeconds?: number;
  /** More main.cf lines ("name = value"), appended last (so they win). */
  extraMain?: string[];
}

export interface PostfixMta {
  readonly dir: string;
  readonly configDir: string;
  /** smtpd on 127.0.0.1. */
  readonly port: number;
  readonly masterPid: number;
  /**
   * Submits one message over SMTP (one connection: EHLO, MAIL, RCPT..., DATA, QUIT). `message` is the
   * raw message, CRLF line ends, ending in CRLF; it is dot-stuffed here. `rcptParams[i]` is appended to
   * the i-th RCPT (e.g. "NOTIFY=NEVER").
   */
  submit(from: string, to: readonly string[], message: string, opts?: { rcptParams?: readonly string[] }): Promise<PostfixSubmission>;
  /** `postqueue -f`: retry everything deferred now. */
  flush(): Promise<void>;
  /** `postqueue -j`. */
  queue(): Promise<PostfixQueueEntry[]>;
  /** Resolves with `postqueue -j`'s list once `match` accepts it; rejects with the queue after `timeoutMs`. */
  waitForQueue(match: (q: PostfixQueueEntry[]) => boolean, timeoutMs?: number): Promise<PostfixQueueEntry[]>;
  /** Resolves once `postqueue -j` lists nothing. */
  waitForEmptyQueue(timeoutMs?: number): Promise<void>;
  /** Every maillog line so far. */
  maillog(): string[];
  /** Resolves with the first maillog line that matches (polling the file); rejects with the log tail after `timeoutMs`. */
  waitForLog(match: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** The delivery lines (to=<...>, status=...) so far, of one queue id or of all. */
  deliveries(queueId?: string): PostfixDelivery[];
  /** Resolves with a queue id's first `n` delivery lines whose status passes `status` (default: any). */
  waitForDeliveries(queueId: string, n: number, opts?: { status?: (s: string) => boolean; timeoutMs?: number }): Promise<PostfixDelivery[]>;
  /** `postfix stop`, then SIGKILL to the master's PID if it is still there; removes the temp dir. */
  stop(): Promise<void>;
}

function pfRun(cmd: string, args: readonly string[], timeoutMs = 30_000): ReturnType<typeof run> {
  return run(cmd, args, { env: env(), timeoutMs });
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Parses `<id>: to=<a>, [orig_to=<b>, ]relay=R, delay=.., delays=.., dsn=D, status=S (text)`. */
const DELIVERY = /postfix\/([\w-]+)\[\d+\]: ([0-9A-F]+): to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=([^,]+), .*?dsn=([\d.]+), status=(\w+) \((.*)\)$/;

export function parseDelivery(line: string): PostfixDelivery | null {
  const m = DELIVERY.exec(line);
  if (!m) return null;
  return { agent: m[1]!, queueId: m[2]!, to: m[3]!, relay: m[4]!, dsn: m[5]!, status: m[6]!, text: m[7]!, line };
}

function mainCf(dir: string, o: PostfixMtaOptions): string {
  const retry = o.retrySeconds ?? 5;
  const routes = Object.entries(o.routes ?? {}).map(([d, to]) => `${d}=${typeof to === 'number' ? `smtp:[127.0.0.1]:${to}` : to}`);
  return [
    'compatibility_level = 3.6',
    `queue_directory = ${dir}/queue`,
    `data_directory = ${dir}/data`,
    `daemon_directory = ${DAEMONS}`,
    `command_directory = ${SBIN}`,
    `shlib_directory = ${LIB}`,
    `meta_directory = ${path.join(POSTFIX_ROOT, 'etc/postfix')}`,
    `sendmail_path = ${SBIN}/sendmail`,
    `newaliases_path = ${POSTFIX_ROOT}/usr/bin/newaliases`,
    `mailq_path = ${POSTFIX_ROOT}/usr/bin/mailq`,
    'mail_owner = postfix',
    'setgid_group = postdrop',
    // master re-executes its daemons with a clean environment: keep the library path
    `import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=${LIB}`,
    `maillog_file = ${dir}/maillog`,
    `maillog_file_prefixes = ${dir}`,
    `myhostname = ${POSTFIX_HOSTNAME}`,
    `mydomain = ${POSTFIX_HOSTNAME}`,
    'myorigin = $myhostname',
    'mydestination =',
    'local_recipient_maps =',
    'alias_maps =',
    'alias_database =',
    'local_transport = error:5.1.1 no local delivery in this test instance',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'mynetworks = 127.0.0.0/8',
    'smtpd_banner = $myhostname ESMTP',
    'append_dot_mydomain = no',
    'biff = no',
    'smtp_tls_security_level = none',
    'smtpd_tls_security_level = none',
    'smtpd_peername_lookup = no',
    ...(o.relayhostPort !== undefined
      ? ['default_transport = smtp', `relayhost = [127.0.0.1]:${o.relayhostPort}`]
      : ['default_transport = error:5.4.4 no route in this test instance', 'relayhost =']),
    `transport_maps = ${routes.length ? `inline:{ ${routes.join(', ')} }` : ''}`,
    `queue_run_delay = ${retry}s`,
    `minimal_backoff_time = ${retry}s`,
    `maximal_backoff_time = ${retry * 2}s`,
    // no postmaster notices (they would need a route)
    'notify_classes =',
    ...(o.extraMain ?? []),
    '',
  ].join('\n');
}

function masterCf(port: number): string {
  // chroot "n" everywhere: the daemons run from the unpacked tree, not from a jail.
  return [
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'pickup    unix  n - n 60 1 pickup',
    'cleanup   unix  n - n - 0 cleanup',
    'qmgr      unix  n - n 300 1 qmgr',
    'rewrite   unix  - - n - - trivial-rewrite',
    'bounce    unix  - - n - 0 bounce',
    'defer     unix  - - n - 0 bounce',
    'trace     unix  - - n - 0 bounce',
    'verify    unix  - - n - 1 verify',
    'flush     unix  n - n 1000? 0 flush',
    'proxymap  unix  - - n - - proxymap',
    'smtp      unix  - - n - - smtp',
    'relay     unix  - - n - - smtp',
    'showq     unix  n - n - - showq',
    'error     unix  - - n - - error',
    'retry     unix  - - n - - error',
    'discard   unix  - - n - - discard',
    'anvil     unix  - - n - 1 anvil',
    'scache    unix  - - n - 1 scache',
    'postlog   unix-dgram n - n - 1 postlogd',
    '',
  ].join('\n');
}

/** Whether 127.0.0.1:port greets as this Postfix. */
function greetsAsPostfix(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok: boolean): void => { clearTimeout(t); s.destroy(); resolve(ok); };
    const t = setTimeout(() => done(false), timeoutMs);
    s.on('data', (d) => { buf += d.toString('latin1'); if (buf.includes('\n')) done(buf.startsWith(`220 ${POSTFIX_HOSTNAME} `)); });
    s.on('error', () => done(false));
  });
}

/**
 * Starts a Postfix instance in a new temp dir (see the file comment). Retries with another smtpd port if
 * the chosen one was taken meanwhile.
 */
export async function startPostfixMta(o: PostfixMtaOptions = {}): Promise<PostfixMta> {
  const check = checkPostfixMta();
  if (!check.available) throw new Error(`Postfix cannot run: ${check.reason}. Run: bash scripts/install-peers.sh`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postfix-mta-'));
  chmodSync(dir, 0o755); // the postfix user must reach its queue
  const configDir = path.join(dir, 'conf');
  for (const d of ['conf', 'queue', 'data']) mkdirSync(path.join(dir, d));
  const uid = Number(spawnSync('id', ['-u', 'postfix'], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', 'postfix'], { encoding: 'utf8' }).stdout.trim());
  chownSync(path.join(dir, 'data'), uid, gid);
  writeFileSync(path.join(configDir, 'main.cf'), mainCf(dir, o));
  const postfix = path.join(SBIN, 'postfix');
  const logFile = path.join(dir, 'maillog');
  const readLog = (): string[] => {
    try {
      return readFileSync(logFile, 'latin1').split('\n').filter((l) => l !== '');
    } catch {
      return [];
    }
  };

  let port = 0;
  let masterPid = 0;
  let lastError = '';
  for (let attempt = 0; attempt < 5 && masterPid === 0; attempt++) {
    port = await freePort();
    writeFileSync(path.join(configDir, 'master.cf'), masterCf(port));
    const r = await pfRun(postfix, ['-c', configDir, 'start']);
    let pid = 0;
    try {
      pid = Number(readFileSync(path.join(dir, 'queue/pid/master.pid'), 'latin1').trim());
    } catch { /* not started */ }
    if (r.code !== 0 || !pid || !alive(pid)) {
      lastError = `postfix start exited ${r.code}: ${r.stderr.trim()}\n${readLog().slice(-15).join('\n')}`;
      if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
      continue;
    }
    // smtpd is spawned on the first connection; the master holds the listening socket already
    const deadline = Date.now() + 10_000;
    let ok = false;
    while (!ok && Date.now() < deadline && alive(pid)) ok = await greetsAsPostfix(port, 3000);
    if (ok) {
      masterPid = pid;
      break;
    }
    lastError = `Postfix did not greet on 127.0.0.1:${port}\n${readLog().slice(-15).join('\n')}`;
    await pfRun(postfix, ['-c', configDir, 'stop'], 15_000);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  if (masterPid === 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start Postfix: ${lastError}`);
  }

  const postqueue = path.join(SBIN, 'postqueue');
  const queue = async (): Promise<PostfixQueueEntry[]> => {
    const r = await pfRun(postqueue, ['-c', configDir, '-j']);
    if (r.code !== 0) throw new Error(`postqueue -j exited ${r.code}: ${r.stderr}`);
    return r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as PostfixQueueEntry);
  };
  const waitForQueue = async (match: (q: PostfixQueueEntry[]) => boolean, timeoutMs = 30_000): Promise<PostfixQueueEntry[]> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const q = await queue();
      if (match(q)) return q;
      if (Date.now() > deadline) throw new Error(`Postfix queue not as awaited after ${timeoutMs} ms: ${JSON.stringify(q)}`);
      await sleep(200);
    }
  };
  const waitForLog = async (match: (line: string) => boolean, timeoutMs = 30_000): Promise<string> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = readLog().find(match);
      if (hit !== undefined) return hit;
      if (Date.now() > deadline) throw new Error(`no matching maillog line within ${timeoutMs} ms; tail:\n${readLog().slice(-30).join('\n')}`);
      await sleep(100);
    }
  };
  const deliveries = (queueId?: string): PostfixDelivery[] =>
    readLog().map(parseDelivery).filter((d): d is PostfixDelivery => d !== null && (queueId === undefined || d.queueId === queueId));

  let stopped = false;
  return {
    dir,
    configDir,
    port,
    masterPid,
    async submit(from, to, message, opts = {}) {
      const t = talk(port);
      try {
        const g = await t.greeting;
        if (!g.startsWith('220 ')) throw new Error(`Postfix greeting: ${g}`);
        const e = await t.cmd('EHLO client.test');
        if (!e.startsWith('250')) throw new Error(`Postfix EHLO: ${e}`);
        const mail = await t.cmd(`MAIL FROM:<${from}>`);
        const rcpt: string[] = [];
        for (const [i, r] of to.entries()) {
          const p = opts.rcptParams?.[i];
          rcpt.push(await t.cmd(`RCPT TO:<${r}>${p ? ` ${p}` : ''}`));
        }
        const { start, end } = await t.data(message.replace(/(^|\r\n)\./g, '$1..'));
        await t.quit();
        return { mail, rcpt, data: start, end, queueId: /queued as ([0-9A-F]+)/.exec(end)?.[1] ?? '' };
      } finally {
        t.destroy();
      }
    },
    async flush() {
      const r = await pfRun(postqueue, ['-c', configDir, '-f']);
      if (r.code !== 0) throw new Error(`postqueue -f exited ${r.code}: ${r.stderr}`);
    },
    queue,
    waitForQueue,
    async waitForEmptyQueue(timeoutMs = 30_000) {
      await waitForQueue((q) => q.length === 0, timeoutMs);
    },
    maillog: readLog,
    waitForLog,
    deliveries,
    async waitForDeliveries(queueId, n, opts = {}) {
      const ok = opts.status ?? (() => true);
      const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
      for (;;) {
        const got = deliveries(queueId).filter((d) => ok(d.status));
        if (got.length >= n) return got.slice(0, n);
        if (Date.now() > deadline) throw new Error(`${queueId}: ${got.length} of ${n} delivery lines; maillog tail:\n${readLog().slice(-30).join('\n')}`);
        await sleep(100);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await pfRun(postfix, ['-c', configDir, 'stop'], 20_000);
      const deadline = Date.now() + 5000;
      while (alive(masterPid) && Date.now() < deadline) await sleep(50);
      if (alive(masterPid)) process.kill(masterPid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One direction's chunk on a {@link WireTap} connection, in arrival order. */
export interface TapChunk {
  /** 'c': client -> server, 's': server -> client. */
  readonly from: 'c' | 's';
  readonly data: Buffer;
}

/** A TCP pass-through on 127.0.0.1 that records both directions of every connection, in order. */
export interface WireTap {
  readonly port: number;
  readonly connections: TapChunk[][];
  /** Every transaction on every connection so far (see {@link tapTransactions}). */
  transactions(): TapTransaction[];
  close(): Promise<void>;
}

/** One SMTP transaction as a tap saw it: the client's commands and data, the server's replies. */
export interface TapTransaction {
  /** "MAIL FROM:<...> ..." as sent. */
  readonly mail: string;
  readonly rcpts: string[];
  /** The replies, exactly (CRLF stripped, lines of a multi-line reply joined by "\n"). */
  readonly mailReply: string;
  readonly rcptReplies: string[];
  readonly dataReply: string;
  /** The reply to the final dot ('' when DATA was not accepted or no reply came). */
  readonly endReply: string;
  /** The message as the client sent it, dot-unstuffed, without the final ".\r\n" (null without DATA). */
  readonly message: Buffer | null;
  /** Whether the client sent DATA before the tap had the reply to MAIL (commands pipelined). */
  readonly pipelined: boolean;
}

/**
 * Parses a tap's record of one connection: replies are matched to commands in order (the greeting
 * first, a message's final dot after a 354); BDAT is not understood (the proxy offers no CHUNKING).
 */
export function tapTransactions(chunks: readonly TapChunk[]): TapTransaction[] {
  // server replies, and how many were complete when each client byte arrived
  const replies: string[] = [];
  let sbuf = '';
  let cur: string[] = [];
  const client: Buffer[] = [];
  const repliesAt: number[] = []; // per client chunk: replies complete before it
  for (const c of chunks) {
    if (c.from === 's') {
      sbuf += c.data.toString('latin1');
      let nl: number;
      while ((nl = sbuf.indexOf('\n')) >= 0) {
        const line = sbuf.slice(0, nl).replace(/\r$/, '');
        sbuf = sbuf.slice(nl + 1);
        cur.push(line);
        if (/^\d{3}(?: |$)/.test(line)) { replies.push(cur.join('\n')); cur = []; }
      }
    } else {
      client.push(c.data);
      repliesAt.push(replies.length);
    }
  }
  const bytes = Buffer.concat(client);
  const chunkEnds: number[] = [];
  let sum = 0;
  for (const b of client) chunkEnds.push((sum += b.length));
  /** Replies complete when the byte at `offset` arrived. */
  const seenAt = (offset: number): number => repliesAt[chunkEnds.findIndex((e) => e > offset)] ?? replies.length;

  const out: TapTransaction[] = [];
  let pos = 0;
  let r = 1; // reply 0 is the greeting
  let txn: { mail: string; rcpts: string[]; mailReply: string; rcptReplies: string[]; mailReplyIndex: number } | null = null;
  while (pos < bytes.length) {
    const nl = bytes.indexOf('\n', pos);
    if (nl === -1) break;
    const line = bytes.subarray(pos, nl).toString('latin1').replace(/\r$/, '');
    const at = pos;
    pos = nl + 1;
    const verb = line.slice(0, 4).toUpperCase();
    const reply = replies[r] ?? '';
    const index = r++;
    if (verb === 'MAIL') txn = { mail: line, rcpts: [], mailReply: reply, rcptReplies: [], mailReplyIndex: index };
    else if (verb === 'RCPT' && txn) { txn.rcpts.push(line); txn.rcptReplies.push(reply); }
    else if (verb === 'DATA' && txn) {
      let message: Buffer | null = null;
      let endReply = '';
      if (reply.startsWith('354')) {
        // the data starts right after "DATA\r\n"; look for CRLF "." CRLF with a virtual CRLF in front
        const probe = Buffer.concat([Buffer.from('\r\n'), bytes.subarray(pos)]);
        const end = probe.indexOf('\r\n.\r\n');
        const raw = end === -1 ? bytes.subarray(pos) : probe.subarray(2, end + 2);
        message = Buffer.from(raw.toString('latin1').replace(/(^|\r\n)\./g, '$1'), 'latin1');
        pos = end === -1 ? bytes.length : pos + end + 3;
        endReply = end === -1 ? '' : replies[r++] ?? '';
      }
      out.push({
        mail: txn.mail, rcpts: txn.rcpts, mailReply: txn.mailReply, rcptReplies: txn.rcptReplies, dataReply: reply, endReply, message,
        pipelined: seenAt(at) <= txn.mailReplyIndex,
      });
      txn = null;
    } else if (verb === 'RSET' || verb === 'QUIT') txn = null;
  }
  return out;
}

/**
 * Starts a recording pass-through to 127.0.0.1:target, to see what a real client put on the wire and
 * when: e.g. whether Postfix sent MAIL, RCPT... and DATA before the first reply came back (PIPELINING).
 */
export async function startWireTap(target: number): Promise<WireTap> {
  const connections: TapChunk[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const log: TapChunk[] = [];
    connections.push(log);
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => { client.destroy(); upstream.destroy(); });
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (d: Buffer) => { log.push({ from: 'c', data: d }); upstream.write(d); });
    upstream.on('data', (d: Buffer) => { log.push({ from: 's', data: d }); client.write(d); });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections,
    transactions: () => connections.flatMap((c) => tapTransactions(c)),
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
