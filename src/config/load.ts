/**
 * Where a Config comes from, later wins: the embedded defaults < the JSON/YAML file < BATV_PROXY_*
 * environment variables; and the effective config with its secrets hidden (check-config, logs). The
 * schema itself is src/config.ts. An environment variable names a path with "__" between levels, e.g.
 *   BATV_PROXY_OUTBOUND__RELAY=smtp://mx.internal:25
 *   BATV_PROXY_DOMAINS=example.com,example.org         (lists are comma-separated)
 *   BATV_PROXY_INBOUND__UNTAGGED_BOUNCES=classify       (snake_case maps to camelCase)
 */
import { promises as fs } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { ConfigError, DEFAULTS, isObj, merge, Settings, validate, type Config, type Obj } from '../config.js';
import { entriesOf, nearest } from './problems.js';

/** What the BATV_PROXY_* variables say: the settings, which variable set which path, and variables naming no setting. */
export interface EnvSettings {
  readonly values: Obj;
  readonly names: ReadonlyMap<string, string>;
  readonly problems: readonly string[];
}

const envName = (path: readonly string[]) => `BATV_PROXY_${path.map((k) => k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()).join('__')}`;

/** Why `path` names no setting (with the nearest variable that does, when one is close), or null. */
function envPathProblem(name: string, path: readonly string[]): string | null {
  let schema: unknown = Settings;
  for (let i = 0; i < path.length; i++) {
    const entries = entriesOf(schema);
    const key = path[i]!;
    if (entries && Object.hasOwn(entries, key)) { schema = entries[key]; continue; }
    const near = entries ? nearest(key, Object.keys(entries)) : null;
    return `${name}: no setting ${path.join('.')}${near ? ` (did you mean ${envName([...path.slice(0, i), near])}?)` : ''}`;
  }
  return null;
}

/**
 * BATV_PROXY_A__B_C=v → { a: { bC: v } }, converted by the type the default of that setting has:
 * numbers, booleans, comma-separated lists; "null" only where null is allowed; everything else stays a
 * string (a password of digits stays a string). A variable naming no setting is a problem, not a setting.
 */
export function envOverrides(env: Readonly<Record<string, string | undefined>>): EnvSettings {
  const values: Obj = {};
  const names = new Map<string, string>();
  const problems: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('BATV_PROXY_') || value === undefined || name === 'BATV_PROXY_CONFIG') continue;
    const path = name.slice('BATV_PROXY_'.length).split('__').map((seg) => seg.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase()));
    const problem = envPathProblem(name, path);
    if (problem !== null) { problems.push(problem); continue; }
    const def = path.reduce<unknown>((o, k) => (isObj(o) ? o[k] : undefined), DEFAULTS);
    let x: unknown = value;
    if (typeof def === 'number' && /^-?\d+$/.test(value)) x = Number(value);
    else if (typeof def === 'boolean' && (value === 'true' || value === 'false')) x = value === 'true';
    else if (Array.isArray(def)) x = value.split(',').map((s) => s.trim()).filter(Boolean);
    else if ((def === null || typeof def === 'string') && value === 'null') x = null;
    let o = values;
    for (const seg of path.slice(0, -1)) o = (o[seg] = isObj(o[seg]) ? o[seg] : {}) as Obj;
    o[path[path.length - 1]!] = x;
    names.set(path.join('.'), name);
  }
  return { values, names, problems };
}

/** "cannot parse FILE:LINE:COL: what" from the yaml library's error (its first line, its position). */
function parseProblem(file: string, e: unknown): string {
  const first = (e as Error).message.split('\n')[0]!;
  if (!(e instanceof YAMLParseError) || !e.linePos) return `cannot parse ${file}: ${first}`;
  const { line, col } = e.linePos[0];
  return `cannot parse ${file}:${line}:${col}: ${first.replace(/ at line \d+, column \d+:?$/, '')}`;
}

/**
 * Reads the config file (JSON or YAML by content), applies environment overrides and parses.
 * @throws ConfigError naming the file and every problem (a value from the environment names its variable).
 */
export async function loadConfig(file: string | null, env: Readonly<Record<string, string | undefined>> = {}): Promise<Config> {
  const source = file === null ? 'configuration' : `configuration ${file}`;
  let fromFile: unknown = {};
  if (file !== null) {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      throw new ConfigError([`cannot read ${file}: ${(e as Error).message}`], source);
    }
    try {
      fromFile = parseYaml(text) ?? {};
    } catch (e) {
      throw new ConfigError([parseProblem(file, e)], source);
    }
    if (!isObj(fromFile)) throw new ConfigError([`${file} must hold an object of settings`], source);
  }
  const fromEnv = envOverrides(env);
  const { config, problems } = validate(merge(fromFile, fromEnv.values), fromEnv.names);
  if (config === null || fromEnv.problems.length) throw new ConfigError([...fromEnv.problems, ...problems], source);
  return config;
}

/** A Redis URL with its password replaced by *** (state.redis). */
export function redactUrl(url: string | null): string | null {
  if (url === null) return null;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '***';
  }
}

/** The effective config with secrets hidden, for check-config and logs. */
export function redacted(c: Config): unknown {
  return JSON.parse(JSON.stringify({
    ...c,
    relayAuth: c.relayAuth ? { user: c.relayAuth.user, pass: '***' } : null,
    metrics: { ...c.metrics, token: c.metrics.token === null ? null : '***' },
    state: { ...c.state, redis: redactUrl(c.state.redis) },
  }));
}
