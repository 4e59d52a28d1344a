/**
 * `batv-proxy keys init|list|rotate|retire|import`: the keyring in keys/ (or --dir, or the config's
 * keys.dir). Never prints a secret, except once when `init`/`rotate` is asked for it with --show-secret
 * (so an admin can paste it into exim or postsrsd).
 */
import { promises as fs } from 'node:fs';
import { configFor } from './tags.js';
import {
  importSecrets, initKeys, KeyringError, keyringPath, parsePostsrsdSecrets, readKeys, retire, rotate, settle, thumbprint, writeKeys,
  type StoredKey,
} from '../keys.js';
import { MS_PER_DAY } from '../clock.js';
import { BATV_DEFAULT_MAX_AGE_DAYS } from '../tags/batv.js';
import { utf8 } from '../tags/hmac.js';
import { SRS_DEFAULTS } from '../tags/srs.js';
import { columns, EXIT_OK, EXIT_REFUSED, intFlag, nowFrom, UsageError, type Io, type Verb } from './args.js';

async function dirAndAges(values: Record<string, unknown>, io: Io): Promise<{ dir: string; verifyDays: number }> {
  const config = await configFor(values, io);
  const dir = (values.dir as string | undefined) ?? config?.keys.dir ?? 'keys';
  // A key must keep verifying as long as any tag it made can be valid: the longer lifetime, plus a day of skew.
  const verifyDays = Math.max(config?.batv.maxAgeDays ?? BATV_DEFAULT_MAX_AGE_DAYS, config?.srs.maxAgeDays ?? SRS_DEFAULTS.maxAgeDays) + 1;
  return { dir, verifyDays };
}

/** One row of `keys list`, for the keys as they stand at `nowMs` (a scheduled key whose time has come signs). */
async function describe(k: StoredKey, nowMs: number, verifyDays: number): Promise<string[]> {
  const role = k.status === 'active' ? 'active (signs)'
    : k.status === 'scheduled' ? `scheduled, signs from ${k.activateAt}`
    : `verify-only${k.demoted ? `, retire after ${new Date(Date.parse(k.demoted) + verifyDays * MS_PER_DAY).toISOString().slice(0, 10)}` : ''}`;
  const age = k.created ? `${Math.floor((nowMs - Date.parse(k.created)) / MS_PER_DAY)}d` : '?';
  return [String(k.num), k.created || '-', age, `${role}${k.origin ? ` (imported from ${k.origin})` : ''}`, await thumbprint(k.secret)];
}

const ORDER: Record<StoredKey['status'], number> = { active: 0, scheduled: 1, verify: 2 };

const common = { dir: { type: 'string' }, config: { type: 'string' }, now: { type: 'string' } } as const;

async function guard<T>(fn: () => Promise<T>, io: Io): Promise<T | number> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof KeyringError) { io.err(`${e.message}\n`); return EXIT_REFUSED; }
    throw e;
  }
}

export const keysVerb: Verb = {
  name: 'keys',
  synopsis: 'batv-proxy keys init|list|rotate|retire|import [--dir DIR] [options]',
  help: [
    'keys init [--dir DIR]              create a keyring with one fresh signing key (number 0)',
    'keys list [--dir DIR]              number, created, age, role and RFC 7638 thumbprint of each key',
    'keys rotate [--dir DIR]            add a fresh key that signs at once; the old one keeps verifying',
    'keys rotate --activate-at ISO8601  add a key that verifies at once and signs from that instant on every replica',
    'keys retire [--dir DIR]            remove verify-only keys whose tags can no longer be valid',
    'keys import --postsrsd FILE [--activate]       add the secrets of a postsrsd secrets file',
    'keys import --exim-secret S --keynum K [--activate]   add an exim prvs secret under its key number',
    '',
    'Secrets live in DIR/keyring.json (mode 0600). --show-secret prints a new key\'s secret once (init, rotate).',
  ].join('\n'),
  options: {
    ...common,
    postsrsd: { type: 'string' },
    'exim-secret': { type: 'string' },
    keynum: { type: 'string' },
    activate: { type: 'boolean' },
    'show-secret': { type: 'boolean' },
    'activate-at': { type: 'string' },
  },
  positionals: { min: 1, max: 1 },
  async run(values, [action], io) {
    const now = nowFrom(values, io);
    const { dir, verifyDays } = await dirAndAges(values, io);
    const show = (k: StoredKey) => values['show-secret'] ? io.out(`secret for key ${k.num}: ${Buffer.from(k.secret).toString('utf8')}\n`) : undefined;
    switch (action) {
      case 'init':
        return guard(async () => {
          const k = await initKeys(dir, now);
          io.out(`Created ${keyringPath(dir)} with signing key ${k.num} (${await thumbprint(k.secret)})\n`);
          show(k);
          return EXIT_OK;
        }, io);
      case 'list':
        return guard(async () => {
          const keys = settle(await readKeys(dir), now);
          const sorted = [...keys].sort((a, b) => ORDER[a.status] - ORDER[b.status] || a.num - b.num);
          const rows = [['num', 'created', 'age', 'role', 'thumbprint']];
          for (const k of sorted) rows.push(await describe(k, now, verifyDays));
          io.out(columns(rows));
          return EXIT_OK;
        }, io);
      case 'rotate':
        return guard(async () => {
          const at = values['activate-at'] as string | undefined;
          const atMs = at === undefined ? undefined : Date.parse(at);
          if (at !== undefined && (!/^\d{4}-\d\d-\d\dT/.test(at) || Number.isNaN(atMs))) throw new UsageError(`--activate-at: "${at}" is not an ISO 8601 time such as 2026-12-01T06:00:00Z`);
          const r = rotate(await readKeys(dir), now, undefined, atMs);
          await writeKeys(dir, r.keys);
          io.out(r.added.status === 'scheduled'
            ? `Key ${r.added.num} (${await thumbprint(r.added.secret)}) verifies from now on and signs from ${r.added.activateAt}; copy ${keyringPath(dir)} to every replica before then\n`
            : `Key ${r.added.num} (${await thumbprint(r.added.secret)}) signs from now on; older keys keep verifying for ${verifyDays} days, then "keys retire" removes them\n`);
          show(r.added);
          return EXIT_OK;
        }, io);
      case 'retire':
        return guard(async () => {
          const before = await readKeys(dir);
          const r = retire(before, now, verifyDays);
          // A scheduled key whose instant has passed is written down as active (and its predecessor as verify).
          const settled = before.some((k) => k.status === 'scheduled' && !r.keys.some((x) => x.num === k.num && x.status === 'scheduled'));
          if (r.removed.length || settled) await writeKeys(dir, r.keys);
          io.out(r.removed.length ? `Retired keys ${r.removed.map((k) => k.num).join(', ')}\n` : 'No key is ready to retire\n');
          return EXIT_OK;
        }, io);
      case 'import':
        return guard(async () => {
          const postsrsd = values.postsrsd as string | undefined;
          const exim = values['exim-secret'] as string | undefined;
          if ((postsrsd === undefined) === (exim === undefined)) throw new UsageError('keys import: give exactly one of --postsrsd FILE or --exim-secret S');
          const keynum = intFlag(values, 'keynum', 0, 9);
          if (exim !== undefined && keynum === undefined) throw new UsageError('keys import --exim-secret: --keynum K is required (the digit your exim tags carry)');
          let secrets: Uint8Array[];
          if (postsrsd !== undefined) {
            let text: Buffer;
            try { text = await fs.readFile(postsrsd); } catch (e) { throw new KeyringError(`Cannot read ${postsrsd}: ${(e as Error).message}`); }
            secrets = parsePostsrsdSecrets(text);
          } else secrets = [utf8(exim!)];
          const existing = await readKeys(dir).then((ks) => settle(ks, now), (e: unknown) => {
            if (e instanceof KeyringError && e.message.startsWith('No keyring')) return [] as StoredKey[];
            throw e;
          });
          const r = importSecrets(existing, secrets, { nowMs: now, origin: postsrsd !== undefined ? 'postsrsd' : 'exim', ...(keynum !== undefined ? { num: keynum } : {}), activate: values.activate === true });
          await writeKeys(dir, r.keys);
          for (const k of r.added) io.out(`Imported key ${k.num} (${await thumbprint(k.secret)}), ${k.status === 'active' ? 'signing' : 'verify-only'}\n`);
          return EXIT_OK;
        }, io);
      default:
        throw new UsageError(`keys: unknown action "${action}"; use init, list, rotate, retire or import`);
    }
  },
};
