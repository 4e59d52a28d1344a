/**
 * `batv-proxy explain ADDRESS`: decodes a BATV or SRS address, says which key made it, when it was made
 * and expires, and whether (and why) the inbound gate would accept it now. Exit 0 when it would be
 * accepted, 1 otherwise (like verify).
 */
import { MS_PER_DAY, utcDay } from '../clock.js';
import { BATV_DEFAULT_MAX_AGE_DAYS, BATV_INVALID_WORDS, BATV_LIFETIME_DAYS, FUTURE_WINDOW_DAYS, batvVerify, parseBatvTag } from '../tags/batv.js';
import { SRS_DEFAULTS, srsReverse, type SrsOptions } from '../tags/srs.js';
import { tagKey, type TagKeyring } from '../tags/keyring.js';
import type { Config } from '../config.js';
import { configFor, secretsKeyring } from './tags.js';
import { loadKeyring, thumbprint, type StoredKey } from '../keys.js';
import { EXIT_OK, EXIT_REFUSED, nowFrom, strings, type Io, type Verb } from './args.js';

const day = (d: number) => new Date(d * MS_PER_DAY).toISOString().slice(0, 10);

/** The absolute day whose residue mod `cycle` is `residue`, nearest below today + the future window. */
export function plausibleDay(residue: number, cycle: number, today: number): number {
  const ahead = (((residue - today) % cycle) + cycle) % cycle;
  return ahead <= FUTURE_WINDOW_DAYS ? today + ahead : today + ahead - cycle;
}

interface Ctx {
  ring: TagKeyring;
  stored: StoredKey[];
  config: Config | null;
  now: number;
}

async function keyName(ctx: Ctx, num: number): Promise<string> {
  const s = ctx.stored.find((k) => k.num === num);
  if (!s) return `key ${num}`;
  return `key ${num} (${s.status === 'active' ? 'active' : 'verify-only'}, thumbprint ${await thumbprint(s.secret)})`;
}

async function explainBatv(address: string, ctx: Ctx, out: string[]): Promise<boolean> {
  const m = parseBatvTag(address);
  out.push('scheme: BATV prvs (draft-levine-smtp-batv-01)');
  if (!m) {
    out.push(`verdict: refused: ${BATV_INVALID_WORDS.malformed}`);
    return false;
  }
  const today = utcDay(ctx.now);
  const expiry = plausibleDay(Number(m.ddd), 1000, today);
  const maxAge = ctx.config?.batv.maxAgeDays ?? BATV_DEFAULT_MAX_AGE_DAYS;
  out.push(`original: ${m.original}`, `key number: ${m.k}`);
  out.push(`signed: ${day(expiry - BATV_LIFETIME_DAYS)} (UTC day; the tag carries ${m.ddd}, the expiry day mod 1000)`);
  out.push(`valid through: ${day(expiry - BATV_LIFETIME_DAYS + maxAge)} (max age ${maxAge} days)`);
  const r = batvVerify(address, ctx.ring, ctx.now, maxAge);
  if (r.kind === 'valid') {
    out.push(`signature: valid with ${await keyName(ctx, r.keyNum)}`, `verdict: accepted (age ${r.ageDays} days): a bounce is delivered to ${r.original}`);
    return true;
  }
  const reason = r.kind === 'invalid' ? r.message : 'not tagged';
  out.push(`verdict: refused: ${reason}`);
  return false;
}

async function explainSrs(address: string, ctx: Ctx, opts: SrsOptions, out: string[]): Promise<boolean> {
  const at = address.lastIndexOf('@');
  const local = address.slice(0, at < 0 ? address.length : at);
  const scheme = local.slice(0, 4).toUpperCase();
  out.push(`scheme: ${scheme} (SRS, Guarded, libsrs2/postsrsd/Mail::SRS compatible)`);
  const fields = local.slice(5).split('=');
  if (scheme === 'SRS0' && fields.length >= 4) {
    const [hash, tt, host, ...user] = fields;
    out.push(`original: ${user.join('=')}@${host}`, `hash: ${hash}`);
    const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
    const hi = B32.indexOf((tt ?? '').charAt(0).toUpperCase());
    const lo = B32.indexOf((tt ?? '').charAt(1).toUpperCase());
    if (tt?.length === 2 && hi >= 0 && lo >= 0) {
      const made = plausibleDay((hi << 5) | lo, 1024, utcDay(ctx.now));
      out.push(`made: ${day(made)} (UTC day; stamp ${tt} = day mod 1024)`, `valid through: ${day(made + opts.maxAgeDays)} (max age ${opts.maxAgeDays} days)`);
    }
  } else if (scheme === 'SRS1' && fields.length >= 3) {
    out.push(`first forwarder: ${fields[1]}`, `hash: ${fields[0]}`);
  }
  const r = srsReverse(address, ctx.ring, opts, ctx.now);
  if (r.kind === 'valid') {
    out.push(`hash check: valid with ${await keyName(ctx, r.keyNum)}`);
    out.push(`verdict: accepted for bounces (null sender) only: reversed to ${r.original}${r.scheme === 'SRS1' ? ' (the first forwarder reverses it further)' : ''}`);
    return true;
  }
  out.push(`verdict: refused: ${r.kind === 'invalid' ? r.message : 'not an SRS address'}`);
  return false;
}

export const explainVerb: Verb = {
  name: 'explain',
  synopsis: 'batv-proxy explain ADDRESS [--secret S]... [--now ISO8601] [--dir DIR] [--config FILE]',
  help: 'Decodes a BATV (prvs=) or SRS (SRS0/SRS1) address: the original address, the key that made it, when it was\nmade and until when it is valid, and whether the inbound gate would accept a bounce to it now, and why not.\nExit 0 when it would be accepted, 1 otherwise.',
  options: { secret: { type: 'string', multiple: true }, now: { type: 'string' }, dir: { type: 'string' }, config: { type: 'string' }, 'srs-domain': { type: 'string' } },
  positionals: { min: 1, max: 1 },
  async run(values, [address], io: Io) {
    const now = nowFrom(values, io);
    const config = await configFor(values, io);
    const secrets = strings(values.secret);
    let ring: TagKeyring;
    let stored: StoredKey[] = [];
    if (secrets.length) ring = secretsKeyring(secrets, 0);
    else ({ ring, keys: stored } = await loadKeyring((values.dir as string | undefined) ?? config?.keys.dir ?? 'keys'));
    if (secrets.length === 1) {
      // One secret on the command line verifies whatever key number a BATV tag carries (as exim does).
      const k = ring.signing.secret;
      ring = { ...ring, byNum: (n) => tagKey(n, k) };
    }
    const ctx: Ctx = { ring, stored, config, now };
    const out = [`address: ${address}`, `now: ${new Date(now).toISOString()}`];
    let ok: boolean;
    if (/^prvs=/i.test(address!)) ok = await explainBatv(address!, ctx, out);
    else if (/^SRS[01][=+-]/i.test(address!)) {
      const srs = config?.srs;
      const opts: SrsOptions = { ...SRS_DEFAULTS, ...(srs ? { ...srs, domain: srs.domain ?? '' } : {}), domain: (values['srs-domain'] as string | undefined) ?? srs?.domain ?? '' };
      ok = await explainSrs(address!, ctx, opts, out);
    } else {
      out.push('scheme: none (not a BATV or SRS address)', 'verdict: a bounce to it is handled by inbound.untaggedBounces');
      ok = false;
    }
    io.out(`${out.join('\n')}\n`);
    if (!ok) io.err(`${out[out.length - 1]!.replace(/^verdict: /, '')}\n`);
    return ok ? EXIT_OK : EXIT_REFUSED;
  },
};
