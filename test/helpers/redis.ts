/**
 * A real redis-server (Debian's package) for the scale-out tests: on 127.0.0.1 at a free port, with its
 * own config file and data directory in a temp dir, no persistence, stopped by its PID (never by name).
 * The binary is /usr/bin/redis-server when Debian's redis-server package is installed, else redis-tools'
 * /usr/bin/redis-check-rdb (the same program; it runs as a server when started under the name
 * redis-server), which scripts/install-peers.sh installs because that package carries no service.
 *
 * @example
 *   const r = await startRedis();
 *   // ... r.url is redis://127.0.0.1:PORT/0; r.pause() / r.resume() make it unresponsive; await r.restart();
 *   await r.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './proc.js';

/** The redis-server program: Debian's, or redis-tools' binary linked under that name in .peers/redis. */
export async function redisServerBinary(): Promise<string> {
  if (fs.existsSync('/usr/bin/redis-server')) return '/usr/bin/redis-server';
  const link = path.join(import.meta.dirname, '..', '..', '.peers', 'redis', 'redis-server');
  if (!fs.existsSync(link)) {
    fs.mkdirSync(path.dirname(link), { recursive: true });
    fs.symlinkSync('/usr/bin/redis-check-rdb', link);
  }
  return link;
}

export interface RedisProcess {
  readonly port: number;
  readonly url: string;
  readonly pid: number;
  /** SIGSTOP: connected but answering nothing (slower than any timeout). */
  pause(): void;
  resume(): void;
  /** Stops the process (SIGTERM by PID) and waits for the exit; `start()` brings it back on the same port. */
  halt(): Promise<void>;
  start(): Promise<void>;
  /** Stops it and removes its temp dir. */
  stop(): Promise<void>;
  /** Starts it again on the same port (an empty data set, as after a restart without persistence). */
  restart(): Promise<void>;
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(500);
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
    s.once('error', () => resolve(false));
    s.once('timeout', () => { s.destroy(); resolve(false); });
  });
}

export async function startRedis(opts: { password?: string } = {}): Promise<RedisProcess> {
  const bin = await redisServerBinary();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-redis-'));
  const port = await freePort();
  const conf = path.join(dir, 'redis.conf');
  fs.writeFileSync(conf, [
    'bind 127.0.0.1', `port ${port}`, `dir ${dir}`, 'save ""', 'appendonly no', 'daemonize no', 'protected-mode yes',
    `logfile ${path.join(dir, 'redis.log')}`, ...(opts.password ? [`requirepass ${opts.password}`] : []),
  ].join('\n') + '\n');
  let child: ChildProcess;
  const launch = async (): Promise<void> => {
    child = spawn(bin, [conf], { stdio: 'ignore' });
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}; see ${path.join(dir, 'redis.log')}`);
      if (opts.password ? await new Promise<boolean>((r) => { const s = net.connect({ host: '127.0.0.1', port }, () => { s.destroy(); r(true); }); s.once('error', () => r(false)); }) : await answers(port)) return;
      if (Date.now() > deadline) throw new Error('redis-server did not answer within 10 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(child.pid!, 'SIGCONT');
    process.kill(child.pid!, 'SIGTERM');
    await exited;
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    get pid() { return child.pid!; },
    pause: () => process.kill(child.pid!, 'SIGSTOP'),
    resume: () => process.kill(child.pid!, 'SIGCONT'),
    halt: stop,
    start: launch,
    stop: async () => { await stop(); fs.rmSync(dir, { recursive: true, force: true }); },
    restart: async () => { await stop(); await launch(); },
  };
}
