/**
 * Command-line plumbing shared by the verbs: strict flag parsing with errors that name the flag, the
 * exit codes (0 ok, 1 refused or invalid, 2 usage; README "CLI"), and an injectable I/O so tests can run
 * verbs in-process.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export const EXIT_OK = 0;
export const EXIT_REFUSED = 1;
export const EXIT_USAGE = 2;

export interface Io {
  out(text: string): void;
  err(text: string): void;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly now: () => number;
  /** The process around a long-running or piped verb (serve, hash-password); main.ts gives it. */
  readonly host?: Host;
}

/** What `serve` and `hash-password` need of the process, so only src/main.ts touches `process`. */
export interface Host {
  readonly stdin: AsyncIterable<Buffer | string>;
  /** Standard output as a stream (the logger writes JSON lines to it; a terminal gets a summary first). */
  readonly stdout: { write(text: string): unknown; readonly isTTY?: boolean };
  readonly cwd: string;
  onSignal(signal: 'SIGTERM' | 'SIGINT' | 'SIGHUP', handler: () => void, once?: boolean): void;
}

/** The host, or a clear error when a verb that needs one is run without it (a test's own Io). */
export function hostOf(io: Io, verb: string): Host {
  if (!io.host) throw new Error(`${verb} needs the process (stdin, stdout, signals); run it through src/main.ts`);
  return io.host;
}

/** A usage error: printed with the verb's synopsis, exit 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface Verb {
  readonly name: string;
  readonly synopsis: string;
  readonly help: string;
  readonly options: NonNullable<ParseArgsConfig['options']>;
  readonly positionals: { min: number; max: number };
  run(values: Record<string, string | string[] | boolean | undefined>, positionals: string[], io: Io): Promise<number>;
}

export function parseVerbArgs(verb: Verb, argv: string[]): { values: Record<string, string | string[] | boolean | undefined>; positionals: string[] } {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...verb.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify a positional argument.*$/s, '').replace(/^TypeError \[[A-Z_]+\]: /, ''));
  }
  const { values, positionals } = parsed;
  if (!values.help) {
    if (positionals.length < verb.positionals.min) {
      const name = /^batv-proxy \S+ (\S+)/.exec(verb.synopsis)?.[1] ?? 'argument';
      throw new UsageError(`missing argument ${name}`);
    }
    if (positionals.length > verb.positionals.max) throw new UsageError(`unexpected argument "${positionals[verb.positionals.max]}"`);
  }
  return { values: values as Record<string, string | string[] | boolean | undefined>, positionals };
}

/** --now ISO8601 (or the real clock). */
/** The config file a verb reads: --config, else $BATV_PROXY_CONFIG, else none (the embedded defaults). */
export function configFile(values: Record<string, unknown>, io: Io): string | null {
  return (values.config as string | undefined) || io.env.BATV_PROXY_CONFIG || null;
}

export function nowFrom(values: Record<string, unknown>, io: Io): number {
  const v = values.now;
  if (v === undefined) return io.now();
  const text = String(v);
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i.exec(text);
  // Tags count UTC days, so a time without a zone is UTC, never the machine's local time.
  const t = m ? Date.parse(`${m[1]}T${m[2] ?? '00:00'}${m[3] ?? 'Z'}`) : NaN;
  if (Number.isNaN(t)) throw new UsageError(`--now: "${text}" is not an ISO 8601 date (e.g. 2026-01-01T12:00:00Z)`);
  return t;
}

/** A whole-number flag within bounds. */
export function intFlag(values: Record<string, unknown>, name: string, min: number, max: number): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const s = String(v);
  if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) throw new UsageError(`--${name}: "${s}" must be a whole number from ${min} to ${max}`);
  return Number(s);
}

export function strings(v: unknown): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v.map(String) : [String(v)];
}

/** Rows as aligned columns: every column but the last padded to its widest cell plus two spaces. */
export function columns(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length); });
  return rows.map((r) => `${r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]! + 2))).join('')}\n`).join('');
}
