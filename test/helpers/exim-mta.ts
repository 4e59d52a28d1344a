/**
 * Real exim 4.96 as an SMTP client (the Debian build unpacked by scripts/install-peers.sh, never
 * installed): `exim -C CONF -odi` with a manualroute to one port, its own spool and log directories in a
 * temp dir. exim pipelines ".<CRLF>QUIT<CRLF>" and half-closes, the field-trial case of issue 9.
 *
 * @example
 *   const exim = makeEximClient(port);
 *   const r = await exim.send('alice@example.com', ['bob@example.net'], 'Subject: x\n\nbody\n');
 *   r.log; // exim's mainlog lines for the message ("=> bob@example.net ... C=\"250 ...\"", "Completed")
 *   exim.remove();
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eximBinary } from './peers.js';

export interface EximSend {
  /** exim's exit status (0 when it accepted the message, whatever the delivery did). */
  readonly code: number;
  /** The message id exim gave it. */
  readonly id: string;
  /** exim's mainlog lines for this message. */
  readonly log: string[];
}

export interface EximClient {
  readonly dir: string;
  send(from: string, to: readonly string[], message: string): Promise<EximSend>;
  remove(): void;
}

export function makeEximClient(port: number): EximClient {
  const bin = eximBinary();
  if (!bin) throw new Error('exim not found: run scripts/install-peers.sh (it unpacks exim into .peers/exim)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'exim-client-'));
  mkdirSync(path.join(dir, 'spool'));
  mkdirSync(path.join(dir, 'log'));
  // Run as root, exim does its work as its own user (Debian-exim, made by install-peers.sh): it must be
  // able to write its spool and log.
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync('id', ['-u', 'Debian-exim'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'Debian-exim'], { encoding: 'utf8' }).trim());
    chmodSync(dir, 0o755);
    for (const d of ['spool', 'log']) chownSync(path.join(dir, d), uid, gid);
  }
  const conf = path.join(dir, 'exim.conf');
  writeFileSync(conf, [
    `exim_path = ${bin}`,
    'keep_environment =',
    'primary_hostname = exim.test',
    `spool_directory = ${dir}/spool`,
    `log_file_path = ${dir}/log/%slog`,
    'never_users =',
    'begin routers',
    'to_listener:',
    '  driver = manualroute',
    '  domains = *',
    '  transport = smtp_out',
    '  route_list = * 127.0.0.1',
    '  self = send',
    'begin transports',
    'smtp_out:',
    '  driver = smtp',
    `  port = ${port}`,
    '  allow_localhost',
    '  hosts_avoid_tls = *',
    'begin retry',
    '* * F,1h,1h',
    '',
  ].join('\n'));
  return {
    dir,
    send(from, to, message) {
      return new Promise((resolve, reject) => {
        const child = execFile(bin, ['-C', conf, '-odi', '-f', from, '--', ...to], { timeout: 30_000 }, (err, _out, stderr) => {
          const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
          let log: string[] = [];
          try {
            log = readFileSync(path.join(dir, 'log', 'mainlog'), 'latin1').split('\n');
          } catch { /* no log yet */ }
          const received = log.find((l) => / <= /.test(l) && l.includes(from === '' ? '<= <>' : `<= ${from}`) && !seen.has(l));
          const id = received ? received.split(' ')[2]! : '';
          if (received) seen.add(received);
          if (!id) return reject(new Error(`exim did not take the message (exit ${code}): ${stderr}`));
          resolve({ code, id, log: log.filter((l) => l.includes(` ${id} `)) });
        });
        child.stdin!.end(message);
      });
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

const seen = new Set<string>();
