/**
 * The tag verbs: sign, verify, srs-forward, srs-reverse. Outside checks drive these with vectors from
 * real exim, Mail::SRS and postsrsd, so flags, output and exit codes are fixed (README, "CLI"):
 * the result on stdout, exit 0; refused or invalid: the reason on stderr, exit 1; usage: exit 2.
 */
import { BATV_DEFAULT_MAX_AGE_DAYS, batvSign, batvVerify } from '../tags/batv.js';
import { utf8 } from '../tags/hmac.js';
import { makeKeyring, tagKey, type TagKey, type TagKeyring } from '../tags/keyring.js';
import { lowerAscii, parseMailbox } from '../tags/address.js';
import { SRS_DEFAULTS, srsForward, srsReverse, type SrsOptions, type SrsSeparator } from '../tags/srs.js';
import { type Config } from '../config.js';
import { loadConfig } from '../config/load.js';
import { loadKeyring } from '../keys.js';
import { EXIT_OK, EXIT_REFUSED, configFile, intFlag, nowFrom, strings, UsageError, type Io, type Verb } from './args.js';

const keyringFlags = {
  secret: { type: 'string', multiple: true },
  dir: { type: 'string' },
  config: { type: 'string' },
  now: { type: 'string' },
} as const;

/** The config file (--config or BATV_PROXY_CONFIG) with BATV_PROXY_* overrides, or null when neither is set. */
export async function configFor(values: Record<string, unknown>, io: Io): Promise<Config | null> {
  const file = configFile(values, io);
  const anyEnv = Object.keys(io.env).some((k) => k.startsWith('BATV_PROXY_') && k !== 'BATV_PROXY_CONFIG');
  return file || anyEnv ? loadConfig(file, io.env) : null;
}

/** The keyring from --secret (first signs) or from --dir / the config's keys.dir / keys/. */
async function keyringFrom(values: Record<string, unknown>, io: Io, nowMs: number, keynum?: number): Promise<TagKeyring> {
  const secrets = strings(values.secret);
  if (secrets.length > 0) return secretsKeyring(secrets, keynum ?? 0);
  const dir = (values.dir as string | undefined) ?? (await configFor(values, io))?.keys.dir ?? 'keys';
  const { ring } = await loadKeyring(dir);
  if (keynum !== undefined && keynum !== ring.signingAt(nowMs).num) {
    const k = ring.byNum(keynum);
    if (!k) throw new UsageError(`--keynum: the keyring in ${dir} has no key ${keynum}`);
    // The chosen key signs whatever the schedule says: the others only verify.
    return makeKeyring([k, ...ring.verifying.filter((x) => x !== k).map((x) => tagKey(x.num, x.secret))]);
  }
  return ring;
}

/**
 * A keyring from --secret values: the first signs (with key number `keynum`), all verify. Any number of
 * secrets is allowed (postsrsd keeps any number), so numbers are not required to be unique here.
 */
export function secretsKeyring(secrets: readonly string[], keynum: number): TagKeyring {
  const keys = secrets.map((s, i) => {
    try {
      return tagKey(i === 0 ? keynum : (keynum + i) % 10, utf8(s));
    } catch (e) {
      throw new UsageError(`--secret: ${(e as Error).message}`);
    }
  });
  const first = keys[0]!;
  return { signing: first, signingAt: () => first, verifying: keys, byNum: (n) => keys.find((k) => k.num === n) };
}

/** Refuses what is not an RFC 5321 mailbox (exit 1), as the tag tools promise; the null sender is refused by the tag code. */
function checkAddress(address: string, verb: string, io: Io): boolean {
  if (address === '' || address === '<>') return true;
  const p = parseMailbox(address);
  // Unqualified addresses are refused by the tag code itself, with its own words.
  if (p.ok || p.problem === 'unqualified') return true;
  io.err(`Cannot ${verb} "${address}": invalid address (${p.message})\n`);
  return false;
}

/** With --secret, BATV verification uses the given secret(s) whatever key number the tag carries (as exim does). */
function anyNumber(secrets: string[], ring: TagKeyring): (num: number) => TagKey[] {
  if (secrets.length === 0) return (n) => { const k = ring.byNum(n); return k ? [k] : []; };
  return (n) => secrets.map((s) => tagKey(n, utf8(s)));
}

export const sign: Verb = {
  name: 'sign',
  synopsis: 'batv-proxy sign ADDRESS [--secret S] [--keynum K] [--now ISO8601] [--dir DIR] [--config FILE]',
  help: 'Prints ADDRESS with a BATV prvs= tag, byte-identical to exim\'s ${prvs}. K defaults to 0 with --secret and to the\nactive key\'s number with the keyring. An address already carrying a prvs= tag is printed unchanged.',
  options: { ...keyringFlags, keynum: { type: 'string' } },
  positionals: { min: 1, max: 1 },
  async run(values, [address], io) {
    const keynum = intFlag(values, 'keynum', 0, 9);
    const now = nowFrom(values, io);
    const ring = await keyringFrom(values, io, now, keynum);
    if (!checkAddress(address!, 'sign', io)) return EXIT_REFUSED;
    const r = batvSign(address!, ring.signingAt(now), now);
    if (r.kind === 'refused') { io.err(`Cannot sign "${address}": ${r.message}\n`); return EXIT_REFUSED; }
    io.out(`${r.address}\n`);
    return EXIT_OK;
  },
};

export const verify: Verb = {
  name: 'verify',
  synopsis: 'batv-proxy verify ADDRESS [--secret S] [--max-age DAYS] [--now ISO8601] [--dir DIR] [--config FILE]',
  help: 'Checks a BATV prvs= address and prints the untagged address. Valid for ages 0..DAYS (default 7) by the\ndraft\'s mod-1000 rule; hex is compared case-insensitively.',
  options: { ...keyringFlags, 'max-age': { type: 'string' } },
  positionals: { min: 1, max: 1 },
  async run(values, [address], io) {
    const maxAge = intFlag(values, 'max-age', 0, 999);
    const now = nowFrom(values, io);
    const secrets = strings(values.secret);
    const ring = await keyringFrom(values, io, now);
    const candidates = anyNumber(secrets, ring);
    const config = secrets.length ? null : await configFor(values, io);
    const age = maxAge ?? config?.batv.maxAgeDays ?? BATV_DEFAULT_MAX_AGE_DAYS;
    let first: ReturnType<typeof batvVerify> | undefined;
    for (const key of candidates(Number(/^prvs=(\d)/i.exec(address!)?.[1] ?? 0))) {
      const r = batvVerify(address!, { byNum: (n) => (n === key.num ? key : undefined) }, now, age);
      if (r.kind === 'valid') { io.out(`${r.original}\n`); return EXIT_OK; }
      first ??= r;
    }
    first ??= batvVerify(address!, ring, now, age);
    const why = first.kind === 'not-tagged' ? 'not a BATV (prvs=) address' : first.kind === 'invalid' ? first.message : 'invalid';
    io.err(`Cannot verify "${address}": ${why}\n`);
    return EXIT_REFUSED;
  },
};

const srsFlags = {
  ...keyringFlags,
  'srs-domain': { type: 'string' },
  separator: { type: 'string' },
  'hash-length': { type: 'string' },
  'hash-min': { type: 'string' },
  'max-age': { type: 'string' },
  alphabet: { type: 'string' },
  'always-rewrite': { type: 'boolean' },
} as const;

/**
 * The SRS options from the flags, else the config's srs section, else the defaults. Forwarding needs the SRS
 * domain; reversing does not (the libsrs2 family reverses any SRS address whose hash verifies), so there
 * `domain` is "" when neither --srs-domain nor a config gives one.
 */
async function srsOptions(values: Record<string, unknown>, io: Io, need: 'domain' | 'no-domain'): Promise<SrsOptions> {
  const config = strings(values.secret).length ? null : await configFor(values, io);
  const base = config?.srs;
  const domain = (values['srs-domain'] as string | undefined) ?? base?.domain ?? '';
  if (!domain && need === 'domain') throw new UsageError('--srs-domain: required (the forwarder domain written after "@")');
  const sep = (values.separator as string | undefined) ?? base?.separator ?? SRS_DEFAULTS.separator;
  if (sep !== '=' && sep !== '+' && sep !== '-') throw new UsageError(`--separator: "${sep}" must be one of =, +, -`);
  const alphabet = (values.alphabet as string | undefined) ?? base?.alphabet ?? SRS_DEFAULTS.alphabet;
  if (alphabet !== 'base64' && alphabet !== 'base64url') throw new UsageError(`--alphabet: "${alphabet}" must be base64 or base64url`);
  const hashLength = intFlag(values, 'hash-length', 1, 27) ?? base?.hashLength ?? SRS_DEFAULTS.hashLength;
  const hashMin = intFlag(values, 'hash-min', 1, 27) ?? (values['hash-length'] !== undefined ? hashLength : (base?.hashMin ?? SRS_DEFAULTS.hashMin));
  if (hashMin > hashLength) throw new UsageError(`--hash-min: ${hashMin} is above the hash length ${hashLength}`);
  return {
    domain,
    separator: sep as SrsSeparator,
    hashLength,
    hashMin,
    maxAgeDays: intFlag(values, 'max-age', 0, 1023) ?? base?.maxAgeDays ?? SRS_DEFAULTS.maxAgeDays,
    alphabet,
    alwaysRewrite: values['always-rewrite'] === true || (base?.alwaysRewrite ?? false),
  };
}

export const srsForwardVerb: Verb = {
  name: 'srs-forward',
  synopsis: 'batv-proxy srs-forward ADDRESS --srs-domain D [--secret S]... [--separator =|+|-] [--hash-length N] [--hash-min N] [--max-age DAYS] [--alphabet base64|base64url] [--now ISO8601] [--config FILE]',
  help: 'Rewrites a sender as SRS0 (or SRS1 for an SRS address) under the SRS domain, as libsrs2, postsrsd 1.x and\nMail::SRS do. The first --secret signs. A sender already in the SRS domain is printed unchanged.',
  options: srsFlags,
  positionals: { min: 1, max: 1 },
  async run(values, [address], io) {
    const opts = await srsOptions(values, io, 'domain');
    const now = nowFrom(values, io);
    const ring = await keyringFrom(values, io, now);
    if (!checkAddress(address!, 'rewrite', io)) return EXIT_REFUSED;
    const r = srsForward(address!, ring, opts, now);
    if (r.kind === 'refused') { io.err(`Cannot rewrite "${address}": ${r.message}\n`); return EXIT_REFUSED; }
    io.out(`${r.address}\n`);
    return EXIT_OK;
  },
};

export const srsReverseVerb: Verb = {
  name: 'srs-reverse',
  synopsis: 'batv-proxy srs-reverse ADDRESS [--srs-domain D] [--secret S]... [--hash-length N] [--hash-min N] [--max-age DAYS] [--now ISO8601] [--config FILE]',
  help: 'Reverses an SRS0 address to the original sender, or an SRS1 address to the SRS0 address at its first\nforwarder. Every --secret verifies; hashes compare case-insensitively and base64url equals base64.\nThe domain after "@" is checked only when --srs-domain (or the config\'s srs.domain) gives one.',
  options: srsFlags,
  positionals: { min: 1, max: 1 },
  async run(values, [address], io) {
    const opts = await srsOptions(values, io, 'no-domain');
    const now = nowFrom(values, io);
    const at = address!.lastIndexOf('@');
    if (opts.domain && (at < 0 || lowerAscii(address!.slice(at + 1)) !== lowerAscii(opts.domain))) {
      io.err(`Cannot reverse "${address}": not in the SRS domain ${opts.domain}\n`);
      return EXIT_REFUSED;
    }
    const r = srsReverse(address!, await keyringFrom(values, io, now), opts, now);
    if (r.kind === 'valid') { io.out(`${r.original}\n`); return EXIT_OK; }
    io.err(`Cannot reverse "${address}": ${r.kind === 'not-tagged' ? 'not an SRS address' : r.message}\n`);
    return EXIT_REFUSED;
  },
};
