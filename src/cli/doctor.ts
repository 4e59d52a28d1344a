/**
 * `batv-proxy doctor`: checks what can be checked on this machine (config, keyring and its permissions,
 * clock, listen ports, TLS and users files, next hops answering SMTP) and prints what to fix.
 * One line per check: "ok", "warn" or "FAIL", then the detail. Exit 1 when anything failed.
 */
import { constants as fsc, promises as fs } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { parseListen, type Config, type NextHop } from '../config.js';
import { loadConfig } from '../config/load.js';
import { readKeys, retire, keyringPath, keyScheduleWarnings, KEY_SCHEDULE_DEFAULTS, whoami } from '../keys.js';
import { loadUsers } from '../auth.js';
import { connectNextHop } from '../smtp/client.js';
import { MS_PER_DAY } from '../clock.js';
import { EXIT_OK, EXIT_REFUSED, configFile, type Io, type Verb } from './args.js';

type Level = 'ok' | 'warn' | 'FAIL';

/**
 * Listen addresses of a config that cannot be used: taken by another program (or, with `allowOurs`
 * false, by a running batv-proxy too), or not bindable. One string per problem, named by setting.
 */
export async function listenProblems(config: Config, allowOurs: boolean): Promise<{ problems: string[]; running: boolean }> {
  const out: string[] = [];
  let running = false;
  for (const [name, addr] of [['outbound.listen', config.outbound.listen], ['inbound.listen', config.inbound.listen], ['metrics.listen', config.metrics.listen]] as const) {
    if (!addr || addr.endsWith(':0')) continue;
    const st = await portState(addr, name === 'metrics.listen');
    if (st === 'ours') running = true;
    if (st === 'free' || (st === 'ours' && allowOurs)) continue;
    out.push(`${name}: ${addr} ${st === 'ours' ? 'is already served by a running batv-proxy' : st}`);
  }
  return { problems: out, running };
}

/** Whether a listen address is free; if taken, whether a batv-proxy answers there. */
async function portState(addr: string, http = false): Promise<'free' | 'ours' | string> {
  const l = parseListen(addr);
  if (typeof l === 'string') return l;
  const bound = await new Promise<string | null>((resolve) => {
    const s = net.createServer();
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    s.listen(l.port, l.host, () => s.close(() => resolve(null)));
  });
  if (bound === null) return 'free';
  if (bound !== 'EADDRINUSE') return `cannot bind: ${bound}`;
  // An SMTP listener greets first; the metrics listener (`http`) answers a request. A batv-proxy names
  // itself in its banner and in its HTTP Server header.
  const banner = await new Promise<string>((resolve) => {
    const c = net.connect(l.port, l.host);
    const t = setTimeout(() => { c.destroy(); resolve(''); }, 1500);
    if (http) c.write(`HEAD /healthz HTTP/1.0\r\nHost: ${l.host}\r\n\r\n`);
    c.once('data', (d) => { clearTimeout(t); if (d.toString().startsWith('HTTP/')) c.end(); else c.end('QUIT\r\n'); resolve(d.toString()); });
    c.once('error', () => { clearTimeout(t); resolve(''); });
  });
  if (/^HTTP\/[\d.]+ /.test(banner)) return /^server: batv-proxy\r?$/im.test(banner) ? 'ours' : `in use by another program (${banner.split('\r\n')[0]!.slice(0, 60)})`;
  return banner.includes('batv-proxy') ? 'ours' : `in use by another program${banner ? ` (${banner.trim().slice(0, 60)})` : ''}`;
}

async function hopCheck(name: string, hop: NextHop | null, config: Config): Promise<[Level, string]> {
  if (!hop) return ['ok', `${name}: not set; mail is captured as .eml files (fine for trying it out, not for production)`];
  try {
    const s = await connectNextHop({ host: hop.host, port: hop.port, secure: hop.secure, name: config.hostname, connectTimeoutMs: 3000, greetingTimeoutMs: 5000, commandTimeoutMs: 5000, requireTls: config.relayTls.require, tls: { rejectUnauthorized: config.relayTls.rejectUnauthorized } });
    const ext = [...s.extensions.keys()].join(' ');
    await s.quit();
    return ['ok', `${name}: ${hop.url} answers SMTP (${s.secure ? 'TLS, ' : ''}EHLO: ${ext || 'none'})`];
  } catch (e) {
    return ['FAIL', `${name}: ${(e as Error).message}`];
  }
}

/**
 * Can this user write `dir` (keys: rotate and import write there; capture: one file per message)? A
 * directory that does not exist yet is fine when its nearest existing parent is writable (the proxy
 * creates it).
 */
async function writableCheck(name: string, dir: string, why: string): Promise<[Level, string]> {
  const user = whoami();
  const canWrite = (d: string) => fs.access(d, fsc.W_OK | fsc.X_OK).then(() => true, () => false);
  const st = await fs.stat(dir).catch(() => null);
  if (st && !st.isDirectory()) return ['FAIL', `${name}: ${dir} is not a directory`];
  if (st) {
    return await canWrite(dir)
      ? ['ok', `${name}: ${dir} is writable by ${user}`]
      : ['FAIL', `${name}: ${dir} is not writable by user ${user} (${why}); fix it with "chown ${user} ${dir}"`];
  }
  let parent = path.dirname(path.resolve(dir));
  while (!(await fs.stat(parent).catch(() => null)) && parent !== path.dirname(parent)) parent = path.dirname(parent);
  return await canWrite(parent)
    ? ['ok', `${name}: ${dir} does not exist yet; it will be created (${parent} is writable by ${user})`]
    : ['FAIL', `${name}: ${dir} does not exist and user ${user} cannot create it in ${parent} (${why}); fix it with "mkdir -p ${dir} && chown ${user} ${dir}"`];
}

export const doctorVerb: Verb = {
  name: 'doctor',
  synopsis: 'batv-proxy doctor [--config FILE]',
  help: 'Checks config, keyring and permissions, that the keys and capture directories are writable, clock, listen ports, TLS and users files, and that the next hops\nanswer SMTP; prints what to fix. Exit 1 when a check failed.',
  options: { config: { type: 'string' } },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io: Io) {
    const lines: Array<[Level, string]> = [];
    const file = configFile(values, io);
    let config: Config;
    try {
      config = await loadConfig(file, io.env);
      lines.push(['ok', `config: ${file ?? 'embedded defaults'} is valid`]);
    } catch (e) {
      io.out(`FAIL  config: ${(e as Error).message}\n`);
      return EXIT_REFUSED;
    }
    const now = io.now();
    try {
      const keys = await readKeys(config.keys.dir);
      const active = keys.find((k) => k.status === 'active')!;
      const ageDays = active.created ? Math.floor((now - Date.parse(active.created)) / MS_PER_DAY) : NaN;
      lines.push(['ok', `keys: ${keyringPath(config.keys.dir)} (mode 0600), ${keys.length} key(s), key ${active.num} signs${Number.isNaN(ageDays) ? '' : `, ${ageDays} days old`}`]);
      if (ageDays > 365) lines.push(['warn', `keys: the signing key is over a year old; rotate with "batv-proxy keys rotate"`]);
      const retirable = retire(keys, now, Math.max(config.batv.maxAgeDays, config.srs.maxAgeDays) + 1).removed;
      if (retirable.length) lines.push(['warn', `keys: keys ${retirable.map((k) => k.num).join(', ')} no longer verify any live tag; remove them with "batv-proxy keys retire"`]);
      for (const w of keyScheduleWarnings(keys, now, KEY_SCHEDULE_DEFAULTS)) lines.push(['warn', `keys: ${w}`]); // issue 12: key schedule
    } catch (e) {
      lines.push(['FAIL', `keys: ${(e as Error).message}`]);
    }
    lines.push(await writableCheck('keys.dir', config.keys.dir, '"keys rotate" and "keys import" write the keyring there'));
    if (!config.outbound.relay) lines.push(await writableCheck('outbound.captureDir', config.outbound.captureDir, 'each captured message is a file there'));
    if (!config.inbound.mailbox) lines.push(await writableCheck('inbound.captureDir', config.inbound.captureDir, 'each captured message is a file there'));
    const year = new Date(now).getUTCFullYear();
    lines.push(year >= 2024 && year < 2100
      ? ['ok', `clock: ${new Date(now).toISOString()} (tags use UTC days; keep NTP running, a clock off by a day refuses valid bounces)`]
      : ['FAIL', `clock: ${new Date(now).toISOString()} is not a plausible date; fix the system clock`]);
    for (const [name, addr] of [['outbound.listen', config.outbound.listen], ['inbound.listen', config.inbound.listen], ['metrics.listen', config.metrics.listen]] as const) {
      if (!addr) continue;
      const st = await portState(addr, name === 'metrics.listen');
      lines.push(st === 'free' ? ['ok', `${name}: ${addr} is free`] : st === 'ours' ? ['ok', `${name}: ${addr} is served by a running batv-proxy`] : ['FAIL', `${name}: ${addr} ${st}`]);
    }
    for (const [name, f] of [['tls.key', config.tls.key], ['tls.cert', config.tls.cert]] as const) {
      if (f) await fs.access(f).then(() => lines.push(['ok', `${name}: ${f} is readable`]), (e: Error) => lines.push(['FAIL', `${name}: ${e.message}`]));
    }
    if (config.tls.key === null) lines.push(['warn', 'tls: no certificate configured; STARTTLS is not offered to clients']);
    if (config.outbound.usersFile) {
      await loadUsers(config.outbound.usersFile).then((u) => lines.push(['ok', `outbound.usersFile: ${u.size} user(s)`]), (e: Error) => lines.push(['FAIL', `outbound.usersFile: ${e.message}`]));
    }
    lines.push(await hopCheck('outbound.relay', config.outbound.relay, config));
    lines.push(await hopCheck('inbound.mailbox', config.inbound.mailbox, config));
    if (config.inbound.untaggedBounces === 'reject' && config.inbound.graceUntil === null) {
      lines.push(['warn', 'inbound.untaggedBounces is "reject" with no graceUntil: bounces of mail sent before signing started will be refused']);
    }
    io.out(lines.map(([l, t]) => `${l.padEnd(4)}  ${t}`).join('\n') + '\n');
    return lines.some(([l]) => l === 'FAIL') ? EXIT_REFUSED : EXIT_OK;
  },
};
