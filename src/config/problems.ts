/**
 * Turning what the schema found into lines a person can act on: each names the setting's path (and the
 * BATV_PROXY_* variable when the value came from the environment), and a setting the schema does not
 * have is named with the nearest one it does have, when one is close.
 */
import type * as v from 'valibot';

/** One thing wrong: the setting's dotted path ('' for the whole config) and what is wrong with it. */
export interface Problem {
  readonly path: string;
  readonly text: string;
}

/** The dotted path of an issue; list positions are left out (the message quotes the entry). */
export function issuePath(issue: v.BaseIssue<unknown>): string {
  return (issue.path ?? []).filter((p) => typeof p.key === 'string').map((p) => p.key as string).join('.');
}

const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');

/** Edit distance with adjacent transpositions counted once (optimal string alignment). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The known name closest to `name`, when it is close: at most 2 edits and at most a third of the name's
 * length, ignoring case, "-" and "_" (so max_age_days finds maxAgeDays). First in `known` wins a tie.
 */
export function nearest(name: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Infinity;
  const n = norm(name);
  for (const k of known) {
    const d = editDistance(n, norm(k));
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best !== null && bestDistance <= 2 && bestDistance * 3 <= n.length ? best : null;
}

type Schema = v.GenericSchema & { entries?: Record<string, unknown>; wrapped?: unknown; options?: readonly unknown[] };

/** The settings a section schema holds (looking through optional, nullable, unions and pipes), or null. */
export function entriesOf(schema: unknown): Record<string, unknown> | null {
  const s = schema as Schema | undefined;
  if (!s || typeof s !== 'object') return null;
  if (s.entries) return s.entries;
  if (s.wrapped) return entriesOf(s.wrapped);
  if (s.options) for (const o of s.options) { const e = entriesOf(o); if (e) return e; }
  return null;
}

const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

/**
 * Settings in `input` the schema does not have, at any depth (a typo is never silently ignored), and
 * lists given where a section of settings belongs (the object schema would take a list for an empty
 * object).
 */
export function unknownSettings(input: unknown, schema: unknown, prefix = ''): Problem[] {
  const entries = entriesOf(schema);
  if (!entries) return [];
  if (Array.isArray(input)) return [{ path: prefix, text: 'must be an object of settings (found a list)' }];
  if (!isObj(input)) return [];
  const out: Problem[] = [];
  for (const [key, value] of Object.entries(input)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (!Object.hasOwn(entries, key)) {
      const near = nearest(key, Object.keys(entries));
      out.push({ path, text: `unknown setting${near ? ` (did you mean "${near}"?)` : ''}` });
    } else out.push(...unknownSettings(value, entries[key], path));
  }
  return out;
}

/**
 * "path: text", with the environment variables in front when the value came from them (`names` maps a
 * dotted path to the variable that set it): the one that set the setting or a section around it, else
 * those that set settings inside it.
 */
export function formatProblem(p: Problem, names: ReadonlyMap<string, string> = new Map()): string {
  const under = (a: string, b: string) => b === '' || a === b || a.startsWith(`${b}.`);
  const around = [...names].filter(([path]) => under(p.path, path)).map(([, name]) => name);
  const inside = [...names].filter(([path]) => under(path, p.path)).map(([, name]) => name);
  const from = around.length ? around.slice(-1) : inside;
  const where = p.path === '' ? '(top level)' : p.path;
  return `${from.length ? `${from.join(', ')} (${where})` : where}: ${p.text}`;
}
