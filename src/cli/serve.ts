/**
 * `serve` (run the proxy) and `check-config` (validate and print the effective config, secrets hidden).
 */
import { watch } from 'node:fs';
import { ConfigError, loadConfig, redacted, type Config } from '../config.js';
import { listenProblems } from './doctor.js';
import { createLogger } from '../log.js';
import { startProxy } from '../proxy.js';
import { EXIT_OK, type Io, type Verb } from './args.js';

function configFile(values: Record<string, unknown>, io: Io): string | null {
  return (values.config as string | undefined) ?? io.env.BATV_PROXY_CONFIG ?? null;
}

/**
 * The config, refused (one list of problems) when a listen address is unusable: a listen address in use
 * is a configuration problem like any other. `allowOurs`: a running batv-proxy may hold it.
 */
async function checkedConfig(file: string | null, io: Io, allowOurs: boolean): Promise<Config> {
  const config = await loadConfig(file, io.env);
  const taken = await listenProblems(config, allowOurs);
  if (taken.length) throw new ConfigError(taken, file ? `configuration ${file}` : 'configuration');
  return config;
}

export const serveVerb: Verb = {
  name: 'serve',
  synopsis: 'batv-proxy serve [--config FILE]',
  help: 'Runs both listeners. With no config the embedded defaults apply: loopback listeners on 127.0.0.1:2525\n(outbound) and 127.0.0.1:2526 (inbound), a keyring created in keys/ if none exists, and messages captured as\n.eml files in mail/outbox and mail/inbox. BATV_PROXY_* environment variables override config settings.\nSIGHUP reloads config and keys; SIGTERM drains and exits.',
  options: { config: { type: 'string' } },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io) {
    const file = configFile(values, io);
    const config = await checkedConfig(file, io, false);
    const log = createLogger(config.log.level);
    const proxy = await startProxy(config, { log });
    return new Promise<number>((resolve) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, 'stopping: no new connections; running transactions may finish');
        proxy.close(config.timeouts.commandMs).then(() => { log.info('stopped'); log.flush(); resolve(EXIT_OK); });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      const reload = (why: string) => {
        loadConfig(file, io.env)
          .then((c) => proxy.reload(c))
          .then(({ changed }) => log.info({ why, changed }, 'reload done'))
          .catch((e: Error) => log.error({ why, err: e.message }, 'reload refused; still running on the previous config and keys'));
      };
      process.on('SIGHUP', () => reload('SIGHUP'));
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
  help: 'Validates the config (file, then BATV_PROXY_* environment overrides over the embedded defaults).\nPrints the effective config with secrets hidden and exits 0, or lists every problem and exits 1.',
  options: { config: { type: 'string' } },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io) {
    // A port held by a running batv-proxy is fine here (checking the config of a running proxy).
    const config = await checkedConfig(configFile(values, io), io, true);
    io.out(`${JSON.stringify(redacted(config), null, 2)}\n`);
    return EXIT_OK;
  },
};
