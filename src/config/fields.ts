/**
 * The building blocks of the config schema (src/config.ts), on valibot: one kind of setting each, with
 * its message. A message says what the setting must be and what was found instead; the setting's path
 * is put in front of it by src/config/problems.ts. Every setting yields at most one problem (its checks
 * stop at the first that fails), so a wrong value is reported once, however many rules it breaks.
 */
import * as v from 'valibot';
import { parseNextHop, type NextHop } from './text.js';

/** How a value found in the config is shown in a message: strings quoted, lists and objects named. */
export function shown(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.length > 60 ? `${x.slice(0, 57)}...` : x);
  if (x === null || typeof x === 'number' || typeof x === 'boolean') return String(x);
  if (Array.isArray(x)) return 'a list';
  return x === undefined ? 'nothing' : typeof x === 'object' ? 'an object' : typeof x;
}

type Message = (issue: v.BaseIssue<unknown>) => string;
/** "must be X (found Y)"; a secret's value is never repeated. */
const must = (expected: string, secret = false): Message => (i) => (secret ? expected : `${expected} (found ${shown(i.input)})`);
/** An extra check on a value already of the right type: null when fine, else what is wrong. */
export type Problem<T> = (value: T) => string | null;

function check<T>(problem: Problem<T> | undefined) {
  return v.rawCheck<T>(({ dataset, addIssue }) => {
    const p = dataset.typed && problem ? problem(dataset.value) : null;
    if (p !== null) addIssue({ message: p });
  });
}
/** Stops a setting's pipe at its first failing step, so one value gives one problem. */
const once = <S extends v.GenericSchema>(schema: S): S => v.config(schema, { abortPipeEarly: true });

/** A non-empty string, optionally with a further check. */
export function text(problem?: Problem<string>, opts: { secret?: boolean } = {}) {
  const m = must('must be a non-empty string', opts.secret);
  return once(v.pipe(v.string(m), v.nonEmpty(m), check(problem)));
}

/** A non-empty string or null. */
export function textOrNull(problem?: Problem<string>, opts: { secret?: boolean } = {}) {
  const m = must('must be a non-empty string or null', opts.secret);
  return v.nullable(once(v.pipe(v.string(m), v.nonEmpty(m), check(problem))));
}

/** A whole number within [min, max]. */
export function whole(min: number, max: number) {
  const m = must(`must be a whole number from ${min} to ${max}`);
  return once(v.pipe(v.number(m), v.check((n) => Number.isInteger(n) && n >= min && n <= max, m)));
}

export const flag = () => v.boolean(must('must be true or false'));

/** One of a few words. */
export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return v.picklist(values, must(`must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`));
}

/** A list of non-empty strings, each passing `problem`; every bad entry is reported. */
export function list(problem?: Problem<string>) {
  const entry: Message = (i) => `must be a list of non-empty strings; ${shown(i.input)} is not one`;
  return once(v.array(v.pipe(v.string(entry), v.nonEmpty(entry), check(problem)), must('must be a list of non-empty strings')));
}

/** A next-hop URL (or null), parsed into a NextHop. */
export function nextHop() {
  const m = must('must be a non-empty string or null');
  return v.nullable(once(v.pipe(
    v.string(m),
    v.nonEmpty(m),
    v.rawTransform<string, NextHop>(({ dataset, addIssue, NEVER }) => {
      const hop = parseNextHop(dataset.value);
      if (typeof hop === 'string') {
        addIssue({ message: hop });
        return NEVER;
      }
      return hop;
    }),
  )));
}

/**
 * A rule across settings of a section (or of the whole config): `problem` sees the section's value and
 * runs only when every path it `reads` passed its own checks (`valid` tells about any other path); what
 * it returns is reported at the path it names (relative to the section; [] for the section itself).
 */
export interface Rule<T> {
  readonly reads: readonly string[];
  readonly problem: (value: T, valid: (path: string) => boolean) => { at: readonly string[]; text: string } | null;
}

/** A section of settings, with the rules across them. */
export function section<E extends v.ObjectEntries>(entries: E, ...rules: Array<Rule<v.InferOutput<v.ObjectSchema<E, undefined>>>>) {
  return v.pipe(v.object(entries, must('must be an object of settings')), ...rules.map((r) => ruleCheck(r)));
}

type PathItem = v.IssuePathItem;
const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

/** A Rule as a valibot check (exported for the rules across sections). */
export function ruleCheck<T>({ reads, problem }: Rule<T>) {
  return v.rawCheck<T>(({ dataset, addIssue }) => {
    const bad = (dataset.issues ?? []).map((i) => (i.path ?? []).map((p) => String(p.key)).join('.'));
    const valid = (r: string) => !bad.some((b) => r === b || r.startsWith(`${b}.`) || b.startsWith(`${r}.`));
    if (!isObj(dataset.value) || !reads.every(valid)) return;
    const found = problem(dataset.value as T, valid);
    if (found === null) return;
    const path: PathItem[] = [];
    let at: unknown = dataset.value;
    for (const key of found.at) {
      const value = isObj(at) ? at[key] : undefined;
      path.push({ type: 'object', origin: 'value', input: at as Record<string, unknown>, key, value });
      at = value;
    }
    addIssue(path.length ? { message: found.text, path: path as [PathItem, ...PathItem[]] } : { message: found.text });
  });
}
