/**
 * `serve` (run the proxy) and `check-config` (validate and print the effective config, secrets hidden).
 */
import { watch } from 'node:fs';
import path from 'node:path';
import type { DestinationStream } from 'pino';
import { ConfigError, DEFAULTS, parseListen, type Config } from '../config.js';
import { loadConfig, redacted } from '../config/load.js';
import { listenProblems } from './doctor.js';
import { createLogger } from '../log.js';
import { startProxy } from '../proxy.js';
import { RESTART_ONLY } from '../runtime.js';
import { EXIT_OK, configFile, hostOf, type Host, type Io, type Verb } from './args.js';

/**
 * The config, refused (one list of problems) when a listen address is unusable: a listen address in use
 * is a configuration problem like any other. `allowOurs`: a running batv-proxy may hold it; `running`
 * says one does.
 */
async function checkedConfig(file: string | null, io: Io, allowOurs: boolean): Promise<{ config: Config; running: boolean }> {
  const config = await loadConfig(file, io.env);
  const { problems, running } = await listenProblems(config, allowOurs);
  if (problems.length) throw new ConfigError(problems, file ? `configuration ${file}` : 'configuration');
  return { config, running };
}

interface Address { readonly host: string; readonly port: number }

/** What the start-up summary says: the listeners as they are bound, and where mail goes. */
export interface SummaryInput {
  readonly config: Config;
  readonly outbound: Address;
  readonly inbound: Address;
  readonly metrics: Address | null;
  /** Capture folders in use (no next hop configured), else null. */
  readonly outbox: string | null;
  readonly inbox: string | null;
  /** For showing capture folders as absolute paths. */
  readonly cwd: string;
}

const isWildcard = (host: string) => host === '0.0.0.0' || host === '::';
/** host:port to connect to (a wildcard listener is reached on loopback). */
function reach(a: Address): { host: string; hostPort: string } {
  const host = a.host === '::' ? '::1' : isWildcard(a.host) ? '127.0.0.1' : a.host;
  return { host, hostPort: host.includes(':') ? `[${host}]:${a.port}` : `${host}:${a.port}` };
}
const bound = (a: Address) => (a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`);

/**
 * The few lines `serve` prints on a terminal before its JSON log lines: each listener, where its mail
 * goes (the capture folder when no next hop is set), the status page and the first command to try.
 */
export function startupSummary(s: SummaryInput): string {
  const c = s.config;
  const pad = (label: string) => `  ${label.padEnd(10)}`;
  const goes = (hop: string | null, dir: string | null, setting: string) => (dir !== null
    ? `${path.resolve(s.cwd, dir)}/ (as .eml files; set ${setting} to relay instead)`
    : hop ?? '');
  const out = reach(s.outbound);
  const swaks = out.host.includes(':') ? `swaks --server ${out.host} --port ${s.outbound.port}` : `swaks --server ${out.hostPort}`;
  const srs = c.srs.domain === null ? 'other senders pass unchanged (srs.domain is null)' : `other senders get SRS under ${c.srs.domain}`;
  const lines = [
    'batv-proxy is running.',
    '',
    `${pad('outbound')}${bound(s.outbound)}  senders of ${c.domains.join(', ')} get BATV tags; ${srs}`,
    `${pad('')}mail goes to ${goes(c.outbound.relay?.url ?? null, s.outbox, 'outbound.relay')}`,
    `${pad('inbound')}${bound(s.inbound)}  bounces for ${[...c.domains, ...(c.srs.domain ? [c.srs.domain] : [])].join(', ')}; forged ones are refused`,
    `${pad('')}mail goes to ${goes(c.inbound.mailbox?.url ?? null, s.inbox, 'inbound.mailbox')}`,
    s.metrics ? `${pad('status')}http://${reach(s.metrics).hostPort}/  (also /metrics, /healthz, /readyz)` : `${pad('status')}off (metrics.listen is null)`,
    '',
    `  Try:      ${swaks} --from alice@${c.domains[0] ?? 'example.com'} --to bob@example.net`,
  ];
  if (JSON.stringify(c.domains) === JSON.stringify(DEFAULTS.domains)) {
    lines.push('', `  Note: domains is the example default (${DEFAULTS.domains.join(', ')}). Set domains (and srs.domain) to your own,`, '  or mail from your own domain gets SRS instead of BATV.');
  }
  return `${lines.join('\n')}\n\n`;
}

/** A warning when the status page (mail addresses) is reachable beyond loopback without credentials. */
function exposedMetrics(c: Config): string | null {
  if (c.metrics.listen === null || c.metrics.token !== null || c.metrics.tokenFile !== null || c.metrics.usersFile !== null) return null;
  const l = parseListen(c.metrics.listen);
  if (typeof l === 'string' || l.host === 'localhost' || /^127\.|^::1$/.test(l.host)) return null;
  return `metrics.listen ${c.metrics.listen} is not loopback and has no metrics.token or metrics.usersFile: the status page shows mail addresses to whoever reaches it`;
}

/** Log lines held back until released (so the summary comes first on a terminal). */
function heldStdout(stdout: Host['stdout']): DestinationStream & { release(): void } {
  let held: string[] | null = [];
  return {
    write(msg: string) {
      if (held) held.push(msg);
      else stdout.write(msg);
    },
    release() {
      const lines = held ?? [];
      held = null;
      for (const l of lines) stdout.write(l);
    },
  };
}

/**
 * How long SIGTERM keeps the listeners accepting after /readyz starts failing, when a readiness probe has
 * been seen: a few of a load balancer's check intervals (HAProxy's default inter is 2 s, fall 3 would need
 * 6 s; with inter 500 ms fall 2 this is enough). Fixed; it is in the "draining" log line.
 */
const DRAIN_MS = 2000;

export const serveVerb: Verb = {
  name: 'serve',
  synopsis: 'batv-proxy serve [--config FILE]',
  help: 'Runs both listeners. With no config the embedded defaults apply: loopback listeners on 127.0.0.1:2525\n(outbound) and 127.0.0.1:2526 (inbound), a keyring created in keys/ if none exists, and messages captured as\n.eml files in mail/outbox and mail/inbox, and the status page, /metrics and /healthz on 127.0.0.1:9425.\nOn a terminal a short summary comes before the JSON log lines. BATV_PROXY_* environment variables override\nconfig settings. SIGHUP reloads config and keys; SIGTERM drains and exits (once something has probed\n/readyz, /readyz first answers 503 "draining" for 2 s while the listeners keep accepting).',
  options: { config: { type: 'string' } },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io) {
    const file = configFile(values, io);
    const { config } = await checkedConfig(file, io, false);
    const host = hostOf(io, 'serve');
    // On a terminal a summary in plain words comes first; piped or redirected, stdout stays JSON lines only.
    const tty = host.stdout.isTTY === true ? heldStdout(host.stdout) : null;
    const log = createLogger(config.log.level, tty ?? undefined);
    let proxy;
    try {
      proxy = await startProxy(config, { log });
      if (tty) host.stdout.write(startupSummary({
        config, outbound: proxy.outbound, inbound: proxy.inbound, metrics: proxy.metricsAddress,
        outbox: proxy.captures.outbox ? config.outbound.captureDir : null, inbox: proxy.captures.inbox ? config.inbound.captureDir : null, cwd: host.cwd,
      }));
    } finally {
      tty?.release();
    }
    const exposed = exposedMetrics(config);
    if (exposed) log.warn(exposed);
    return new Promise<number>((resolve) => {
      let stopping = false;
      let draining: NodeJS.Timeout | null = null;
      const close = (signal: string) => {
        draining = null;
        log.info({ signal }, 'stopping: no new connections; running transactions may finish');
        proxy.close(config.timeouts.commandMs).then(() => { log.info('stopped'); log.flush(); resolve(EXIT_OK); });
      };
      const stop = (signal: string) => {
        if (stopping) {
          // SIGINT during the drain (a second SIGTERM ends the process: its handler is a once-handler): close now.
          if (draining) { clearTimeout(draining); close(signal); }
          return;
        }
        stopping = true;
        // SIGTERM with a readiness probe watching (/readyz has been asked): fail /readyz first and keep
        // accepting for DRAIN_MS, so the load balancer marks this replica down before its listeners close
        // and no client is refused. Without a probe (or on SIGINT) nobody would notice: close at once.
        if (signal === 'SIGTERM' && proxy.readinessProbed()) {
          proxy.drain();
          log.info({ signal, drain_ms: DRAIN_MS }, `draining: /readyz answers 503 "draining"; listeners keep accepting for ${DRAIN_MS} ms, then close`);
          draining = setTimeout(() => close(signal), DRAIN_MS);
        } else {
          close(signal);
        }
      };
      host.onSignal('SIGTERM', () => stop('SIGTERM'), true);
      host.onSignal('SIGINT', () => stop('SIGINT'), true);
      const reload = (why: string) => {
        loadConfig(file, io.env)
          .then((c) => proxy.reload(c))
          .then(({ changed, applied, notApplied }) => (notApplied.length
            ? log.warn({ why, changed, applied, not_applied: notApplied }, 'reload done; some settings need a restart')
            : log.info({ why, changed, applied }, 'reload done')))
          .catch((e: Error) => log.error({ why, err: e.message }, 'reload refused; still running on the previous config and keys'));
      };
      host.onSignal('SIGHUP', () => reload('SIGHUP'));
      // A change to the key files (keys rotate, import, retire) is picked up without a signal.
      let timer: NodeJS.Timeout | undefined;
      try {
        watch(config.keys.dir, () => {
          clearTimeout(timer);
          timer = setTimeout(() => reload('keys changed'), 200);
        }).unref();
      } catch (e) {
        log.warn({ dir: config.keys.dir, err: (e as Error).message }, 'cannot watch the keys directory; use SIGHUP after key changes');
      }
    });
  },
};

export const checkConfigVerb: Verb = {
  name: 'check-config',
  synopsis: 'batv-proxy check-config [--config FILE]',
  help: 'Validates the config (file, then BATV_PROXY_* environment overrides over the embedded defaults).\nPrints the effective config with secrets hidden and exits 0 (when a batv-proxy is running on its addresses,\nstderr lists the settings a reload (SIGHUP) cannot apply), or lists every problem and exits 1.',
  options: { config: { type: 'string' } },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io) {
    // A port held by a running batv-proxy is fine here (checking the config of a running proxy).
    const { config, running } = await checkedConfig(configFile(values, io), io, true);
    io.out(`${JSON.stringify(redacted(config), null, 2)}\n`);
    // Checking the config for a proxy that is running: say what a SIGHUP would not take (src/runtime.ts).
    if (running) io.err(`A reload (SIGHUP) applies every setting except these, which need a restart:\n${RESTART_ONLY.map((r) => `  ${r.path}: ${r.why}`).join('\n')}\n  tls, outbound.usersFile: switching STARTTLS or AUTH on or off (a new certificate or users file is applied)\n`);
    return EXIT_OK;
  },
};
