/**
 * Real exim 4.96 as an SMTP *server* (the next hop or the mailbox host), the unpacked Debian build that
 * test/helpers/peers.ts finds: `exim -C CONF -bdf -oX PORT -oP PIDFILE`, a foreground daemon on
 * 127.0.0.1 with its own config, spool, log and mail store in one temp dir (exim-mta.ts is the client
 * side). Run as root: the daemon keeps root only to listen; its reception and delivery processes run as
 * Debian-exim (exim drops privilege for a -C config outside its trusted list), which owns spool, log and
 * store.
 *
 * What exim received is exactly what its transport wrote: an appendfile transport stores each message in
 * one file named by its exim id (all recipients batched into one delivery; CRLF line ends; no "From "
 * line, no ">From" escaping). exim puts exactly three header fields in front of what it received:
 * Return-path: <$return_path>, Envelope-to: (the recipients) and its own Received:, which
 * {@link parseStored} takes off again, so `body` is the received message byte for byte.
 *
 * The ACLs log what the test needs to see ("TEST ..." lines in the mainlog, with print_topbitchars so
 * UTF-8 stays readable):
 *   - MAIL: the command line as exim got it ($smtp_command), then ${prvscheck} of the sender with the
 *     configured secrets (key number -> secret, as the proxy's keyring numbers them); a prvs= sender that
 *     fails the check is refused "550 5.7.1 prvscheck failed for <sender>";
 *   - RCPT: the command line; a recipient in `refuseRecipients` is refused with its text;
 *   - DATA: while {@link EximServer.deferData} is on, "451 <deferText>"; otherwise one line per message
 *     with its id, its MAIL and accepted RCPT lines and the prvscheck verdict ({@link EximServer.transactions}).
 *
 * @example
 *   const exim = await startEximServer({ prvsSecrets: { 0: 'test-secret-0' }, refuseRecipients: { 'x@example.net': '5.1.1 <x@example.net>: gone' } });
 *   // ... relay to smtp://127.0.0.1:${exim.port}, get "250 OK id=1xaIKR-0001FE-1V" ...
 *   const m = await exim.waitForDelivery('1xaIKR-0001FE-1V');
 *   m.returnPath; m.envelopeTo; m.body;
 *   await exim.stop();
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkExim, eximBinary, eximLiteral, type PeerCheck } from './peers.js';
import { freePort } from './proc.js';

export interface EximServerOptions {
  /** ${prvscheck} secrets by BATV key number (a tag with another key number fails the check). */
  prvsSecrets?: Readonly<Record<number, string>>;
  /**
   * Recipients (compared case-insensitively, as exim's address lists do) refused at RCPT with
   * "550 <text>"; a "\n" in the text makes exim answer with several lines.
   */
  refuseRecipients?: Readonly<Record<string, string>>;
  /** What follows "451 " while deferData(true) (default "4.3.0 Deferred by the test"). */
  deferText?: string;
  /** primary_hostname (default exim.test). */
  hostname?: string;
}

/** One message exim delivered into its store. */
export interface EximStored {
  /** exim's message id (the file's name; also in its "250 OK id=..." reply). */
  readonly id: string;
  /** What exim put in Return-path: (its $return_path: the envelope sender it received), without <>. */
  readonly returnPath: string;
  /** The recipients in Envelope-to:, in order. */
  readonly envelopeTo: string[];
  /** exim's own Received: field, unfolded lines joined by "\n" (CRLF removed). */
  readonly received: string;
  /** The message as exim received it: the file without the three fields exim put in front. */
  readonly body: Buffer;
}

/** One accepted transaction as the DATA ACL logged it. */
export interface EximTransaction {
  readonly id: string;
  /** The MAIL command line exactly as exim received it. */
  readonly mail: string;
  /** The accepted RCPT command lines, in order. */
  readonly rcpts: string[];
  /** $prvscheck_result: "1" when ${prvscheck} accepted a prvs= sender, "" otherwise. */
  readonly prvscheckResult: string;
  /** The decoded address ${prvscheck} gave ("" for a sender without a tag). */
  readonly prvscheckAddress: string;
}

export interface EximServer {
  readonly host: string;
  readonly port: number;
  /** The daemon's PID (the spawned process itself: -bdf stays in the foreground). */
  readonly pid: number;
  readonly dir: string;
  /** Every stored message, oldest first (by id, which exim makes in time order). */
  readonly messages: EximStored[];
  /** While on, the DATA ACL answers every message "451 <deferText>" (no message is stored). */
  deferData(on: boolean): void;
  /** Resolves once exim logged "<id> Completed" and the message is in the store. */
  waitForDelivery(id: string, timeoutMs?: number): Promise<EximStored>;
  /** exim's mainlog, line by line. */
  log(): string[];
  /** The MAIL and RCPT command lines exim's ACLs saw, in order (refused ones included). */
  commands(): string[];
  /** The accepted transactions as the DATA ACL logged them, in order. */
  transactions(): EximTransaction[];
  /** SIGTERM to the daemon and every process it started (SIGKILL after a grace), by PID; removes the dir. */
  stop(): Promise<void>;
}

/** exim as a server: exim runs (checkExim) and we are root with the Debian-exim user to hand processes to. */
export function checkEximServer(): PeerCheck {
  const base = checkExim();
  if (!base.available) return base;
  if (process.getuid?.() !== 0) return { available: false, reason: 'the exim daemon helper runs as root (exim is unpacked, not setuid)' };
  try {
    execFileSync('id', ['-u', 'Debian-exim'], { stdio: 'ignore' });
  } catch {
    return { available: false, reason: 'no Debian-exim user (scripts/install-peers.sh makes it)' };
  }
  return base;
}

const ID = /^[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}$/;

/** Takes exim's Return-path:, Envelope-to: and Received: off the front of a stored file. */
export function parseStored(id: string, raw: Buffer): EximStored {
  const fields: string[] = [];
  let pos = 0;
  for (let i = 0; i < 3; i++) {
    const lines: string[] = [];
    for (;;) {
      const end = raw.indexOf('\r\n', pos);
      if (end < 0) throw new Error(`exim store ${id}: header ${i + 1} is not CRLF-terminated`);
      lines.push(raw.subarray(pos, end).toString('utf8'));
      pos = end + 2;
      if (raw[pos] !== 0x20 && raw[pos] !== 0x09) break; // no continuation line follows
    }
    fields.push(lines.join('\n'));
  }
  const [rp, et, rcv] = fields as [string, string, string];
  const m = /^Return-path: <(.*)>$/.exec(rp);
  if (!m || !et.startsWith('Envelope-to: ') || !rcv.startsWith('Received: ')) {
    throw new Error(`exim store ${id}: expected Return-path, Envelope-to, Received; got ${JSON.stringify(fields)}`);
  }
  return {
    id,
    returnPath: m[1]!,
    envelopeTo: et.slice('Envelope-to: '.length).split(/,\n?\s*/).filter((s) => s !== ''),
    received: rcv,
    body: raw.subarray(pos),
  };
}

function config(dir: string, bin: string, o: EximServerOptions): string {
  const secrets = Object.entries(o.prvsSecrets ?? {});
  // ${if eq{$prvscheck_keynum}{N}{secret}{...}} nested; an unknown key number gets an empty secret,
  // with which no tag verifies.
  const secretExpr = secrets.reduceRight((rest, [num, s]) => `\${if eq{$prvscheck_keynum}{${num}}{${eximLiteral(s)}}{${rest}}}`, '');
  const refusals = Object.entries(o.refuseRecipients ?? {}).flatMap(([addr, text]) => {
    if (/[:\n\r]/.test(addr)) throw new RangeError(`refuseRecipients: ${JSON.stringify(addr)} cannot go into an exim address list`);
    if (/[\r]/.test(text)) throw new RangeError('refuseRecipients: no CR in a refusal text');
    return [
      `  deny    recipients = ${addr}`,
      `          message = ${eximLiteral(text).replace(/\n/g, '\\n')}`,
    ];
  });
  const defer = eximLiteral(o.deferText ?? '4.3.0 Deferred by the test');
  const SEP = ' ;; ';
  return [
    `exim_path = ${bin}`,
    'keep_environment =',
    `primary_hostname = ${o.hostname ?? 'exim.test'}`,
    `spool_directory = ${dir}/spool`,
    `log_file_path = ${dir}/log/%slog`,
    'never_users =',
    'local_interfaces = 127.0.0.1',
    'tls_advertise_hosts =',
    'host_lookup =',
    'rfc1413_hosts =',
    'rfc1413_query_timeout = 0s',
    // The extensions the proxy relays parameters for; PIPELINING, CHUNKING and SMTPUTF8 are on by default.
    'dsn_advertise_hosts = *',
    'accept_8bitmime = true',
    'print_topbitchars = true',
    'acl_smtp_mail = acl_mail',
    'acl_smtp_rcpt = acl_rcpt',
    'acl_smtp_data = acl_data',
    '',
    'begin acl',
    'acl_mail:',
    '  warn    set acl_m_mail = $smtp_command',
    '          set acl_m_rcpts =',
    `          set acl_m_prvs = \${prvscheck{$sender_address}{${secretExpr}}}`,
    '          set acl_m_prvsok = ${if eq{$acl_m_prvs}{}{}{$prvscheck_result}}',
    '          logwrite = TEST MAIL $smtp_command',
    '  deny    condition = ${if and{{!eq{$acl_m_prvs}{}}{!eq{$acl_m_prvsok}{1}}}}',
    '          message = 5.7.1 prvscheck failed for <$sender_address>',
    '  accept',
    'acl_rcpt:',
    '  warn    logwrite = TEST RCPT $smtp_command',
    ...refusals,
    `  accept  set acl_m_rcpts = \${if eq{$acl_m_rcpts}{}{}{$acl_m_rcpts${SEP}}}$smtp_command`,
    'acl_data:',
    `  defer   condition = \${if exists{${dir}/ctl/defer-data}}`,
    `          message = ${defer}`,
    `  accept  logwrite = TEST DATA id=<$message_exim_id> prvscheck=<$acl_m_prvsok> original=<$acl_m_prvs> mail=<$acl_m_mail> rcpts=<$acl_m_rcpts>`,
    '',
    'begin routers',
    'store:',
    '  driver = accept',
    '  transport = store',
    '',
    'begin transports',
    'store:',
    '  driver = appendfile',
    `  file = ${dir}/mail/$message_exim_id`,
    '  user = Debian-exim',
    '  batch_max = 1000',
    '  use_crlf',
    '  message_prefix =',
    '  message_suffix =',
    '  check_string =',
    '  escape_string =',
    '  return_path_add',
    '  envelope_to_add',
    '',
    'begin retry',
    '* * F,1h,1h',
    '',
  ].join('\n');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** PIDs of every live descendant of `root` (from /proc's parent links). */
function descendants(root: number): number[] {
  const parent = new Map<number, number>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
      const stat = readFileSync(`/proc/${e}/stat`, 'latin1');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(e), ppid);
    } catch { /* gone meanwhile */ }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [c, pp] of parent) if (pp === p) { out.push(c); walk(c); }
  };
  walk(root);
  return out;
}

/** Whether `pid` is still one of our exim processes (its command line names our config). */
function isOurs(pid: number, conf: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').includes(conf);
  } catch {
    return false;
  }
}

/** Starts the daemon on a free port (retrying a few if another process takes the port first). */
export async function startEximServer(o: EximServerOptions = {}): Promise<EximServer> {
  const bin = eximBinary();
  if (!bin) throw new Error('exim not found: run scripts/install-peers.sh (it unpacks exim into .peers/exim)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'exim-server-'));
  chmodSync(dir, 0o755);
  const uid = Number(execFileSync('id', ['-u', 'Debian-exim'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'Debian-exim'], { encoding: 'utf8' }).trim());
  for (const d of ['spool', 'log', 'mail', 'ctl']) {
    mkdirSync(path.join(dir, d));
    if (d !== 'ctl') chownSync(path.join(dir, d), uid, gid);
  }
  const conf = path.join(dir, 'exim.conf');
  writeFileSync(conf, config(dir, bin, o));
  const mainlog = path.join(dir, 'log', 'mainlog');
  const pidFile = path.join(dir, 'exim.pid');
  const readLog = (): string[] => {
    try {
      return readFileSync(mainlog, 'utf8').split('\n').filter((l) => l !== '');
    } catch {
      return [];
    }
  };

  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child: ChildProcess = spawn(bin, ['-C', conf, '-bdf', '-oX', String(port), '-oP', pidFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
    let exited = false;
    const gone = new Promise<void>((r) => child.once('exit', () => { exited = true; r(); }));
    const deadline = Date.now() + 10_000;
    const started = () => readLog().some((l) => l.includes(`daemon started: pid=${child.pid},`) && l.includes(`:${port}`));
    while (!exited && !started() && Date.now() < deadline) await sleep(25);
    if (exited) {
      if (/bind|in use/i.test(stderr + readLog().join('\n'))) continue;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`exim daemon exited: ${stderr} ${readLog().join('\n')}`);
    }
    const pid = child.pid!;
    if (!started() || Number(readFileSync(pidFile, 'utf8').trim()) !== pid) {
      process.kill(pid, 'SIGKILL');
      await gone;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`exim daemon did not start on ${port} within 10 s: ${stderr} ${readLog().join('\n')}`);
    }

    const stored = (id: string): EximStored | undefined => {
      const f = path.join(dir, 'mail', id);
      return existsSync(f) ? parseStored(id, readFileSync(f)) : undefined;
    };
    const tagged = (word: string): string[] => readLog().map((l) => /^\S+ \S+ (?:\S+ )?TEST (\S+) (.*)$/.exec(l)).filter((m): m is RegExpExecArray => m !== null && m[1] === word).map((m) => m[2]!);
    let stopped = false;
    return {
      host: '127.0.0.1',
      port,
      pid,
      dir,
      get messages() {
        return readdirSync(path.join(dir, 'mail')).filter((f) => ID.test(f)).sort().map((f) => stored(f)!);
      },
      deferData(on) {
        const f = path.join(dir, 'ctl', 'defer-data');
        if (on) writeFileSync(f, '');
        else rmSync(f, { force: true });
      },
      async waitForDelivery(id, timeoutMs = 10_000) {
        if (!ID.test(id)) throw new Error(`not an exim message id: ${JSON.stringify(id)}`);
        const end = Date.now() + timeoutMs;
        for (;;) {
          if (readLog().some((l) => l.endsWith(` ${id} Completed`))) {
            const m = stored(id);
            if (m) return m;
            throw new Error(`exim completed ${id} but stored nothing: ${readLog().filter((l) => l.includes(id)).join('\n')}`);
          }
          if (Date.now() > end) throw new Error(`exim did not complete ${id} within ${timeoutMs} ms: ${readLog().filter((l) => l.includes(id)).join('\n')}`);
          await sleep(20);
        }
      },
      log: readLog,
      commands: () => readLog().map((l) => /^\S+ \S+ TEST (?:MAIL|RCPT) (.*)$/.exec(l)?.[1]).filter((c): c is string => c !== undefined),
      transactions: () => tagged('DATA').map((rest) => {
        const m = /^id=<([^>]*)> prvscheck=<([^>]*)> original=<(.*)> mail=<(.*)> rcpts=<(.*)>$/.exec(rest);
        if (!m) throw new Error(`unexpected exim DATA log line: ${rest}`);
        return { id: m[1]!, prvscheckResult: m[2]!, prvscheckAddress: m[3]!, mail: m[4]!, rcpts: m[5]!.split(' ;; ') };
      }),
      async stop() {
        if (stopped) return;
        stopped = true;
        // The daemon's reception and delivery processes, found before the daemon goes (then they are
        // re-parented and no longer reachable through it).
        const kids = descendants(pid);
        if (!exited) {
          process.kill(pid, 'SIGTERM');
          const t = sleep(3000).then(() => 'timeout' as const);
          if ((await Promise.race([gone, t])) === 'timeout') {
            process.kill(pid, 'SIGKILL');
            await gone;
          }
        }
        for (let round = 0; round < 2; round++) {
          const left = [...kids, ...descendants(pid)].filter((k) => isOurs(k, conf));
          if (left.length === 0) break;
          for (const k of left) try { process.kill(k, round === 0 ? 'SIGTERM' : 'SIGKILL'); } catch { /* gone */ }
          for (let i = 0; i < 50 && left.some((k) => isOurs(k, conf)); i++) await sleep(20);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error('exim daemon: no free port after 5 attempts');
}
