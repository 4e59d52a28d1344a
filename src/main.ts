/**
 * Process entry: picks the verb, runs it, maps errors to exit codes. The only module that touches
 * process.* (argv, env, stdout); bin/batv-proxy.js calls main().
 */
import { createRequire } from 'node:module';
import { EXIT_REFUSED, EXIT_USAGE, parseVerbArgs, UsageError, type Io, type Verb } from './cli/args.js';
import { sign, srsForwardVerb, srsReverseVerb, verify } from './cli/tags.js';
import { keysVerb } from './cli/keys.js';
import { checkConfigVerb, serveVerb } from './cli/serve.js';
import { explainVerb } from './cli/explain.js';
import { doctorVerb } from './cli/doctor.js';
import { hashPasswordVerb, sendTestVerb } from './cli/tools.js';

const VERBS: readonly Verb[] = [
  serveVerb, sign, verify, srsForwardVerb, srsReverseVerb, keysVerb, explainVerb, checkConfigVerb, doctorVerb, hashPasswordVerb, sendTestVerb,
];

/** package.json's version (src/ and dist/ both sit beside it). */
const VERSION = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

function usage(): string {
  return `Usage: batv-proxy <verb> [options]\n\n${VERBS.map((v) => `  ${v.synopsis}`).join('\n')}\n\nbatv-proxy <verb> --help for more; batv-proxy --version.\n`;
}

export const processIo: Io = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
  env: process.env,
  now: () => Date.now(),
  host: {
    stdin: process.stdin,
    stdout: process.stdout,
    get cwd() { return process.cwd(); },
    onSignal: (signal, handler, once = false) => void (once ? process.once(signal, handler) : process.on(signal, handler)),
  },
};

/** Runs one command line; resolves with the exit code. */
export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? io.err : io.out)(usage());
    return name === undefined ? EXIT_USAGE : 0;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    io.out(`batv-proxy ${VERSION}\n`);
    return 0;
  }
  const verb = VERBS.find((v) => v.name === name);
  if (!verb) {
    io.err(`batv-proxy: unknown verb "${name}"\n${usage()}`);
    return EXIT_USAGE;
  }
  try {
    const { values, positionals } = parseVerbArgs(verb, rest);
    if (values.help) {
      io.out(`Usage: ${verb.synopsis}\n\n${verb.help}\n`);
      return 0;
    }
    return await verb.run(values, positionals, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`batv-proxy ${verb.name}: ${e.message}\nUsage: ${verb.synopsis}\n`);
      return EXIT_USAGE;
    }
    // Config and keyring problems, a port in use, an unreadable file: say what failed, exit 1.
    io.err(`batv-proxy ${verb.name}: ${e instanceof Error ? e.message : String(e)}\n`);
    return EXIT_REFUSED;
  }
}
