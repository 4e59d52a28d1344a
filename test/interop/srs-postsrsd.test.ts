/**
 * SRS against postsrsd 1.10 (Debian 12; it embeds the patched libsrs2 1.0.14), over Postfix's tcp_table
 * protocol on 127.0.0.1. Several postsrsd instances (one per configuration: secrets, separator, hash
 * length, hash minimum, SRS domain) run in the foreground with their clocks in libfaketime timestamp
 * files, and are stopped by PID at the end.
 *
 * srsForward must equal postsrsd's forward map byte for byte, and each side must reverse the other's
 * addresses (as written, lower-cased, upper-cased) at ages 0..21 and refuse age 22 and the future.
 * postsrsd 1.x has no max-age option: it is always 21 days.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SRS_DEFAULTS, srsForward, srsReverse, type SrsOptions } from '../../src/tags/srs.js';
import { makeKeyring, tagKey, type TagKeyring } from '../../src/tags/keyring.js';
import { utf8 } from '../../src/tags/hmac.js';
import {
  DAY_MS, Postsrsd, aliasDomainArb, checkPostsrsd, craftSrsHash, expectNoMismatches, iso, lowerAsciiOnly, requirePeer, sepArb,
  shouldRun, srsDayArb, srsSecretArb, srsSenderArb, upperAsciiOnly, type Mismatch, type Sep, type TableReply,
} from '../helpers/peers.js';

const PEER = checkPostsrsd();
const RUN = shouldRun('SRS/postsrsd interop', PEER);
const CONFIGS = 6;
const PER_CONFIG = 80;
const MAX_AGE = 21; // postsrsd 1.x: fixed

interface Config {
  readonly secrets: readonly string[];
  readonly separator: Sep;
  readonly hashLength: number;
  readonly hashMin: number;
  readonly domain: string;
}
interface Case {
  readonly sender: string;
  /** Sign instant: one per day (moving postsrsd's clock costs a file write), time of day varies by day. */
  readonly signMs: number;
  readonly midAge: number;
  /** Index of the secret that signs our address in the key-rotation check. */
  readonly signer: number;
}

const dayInstant = (day: number) => day * DAY_MS + ((day * 7919) % 86_400) * 1000;

const configArb: fc.Arbitrary<Config> = fc
  .record({
    secrets: fc.array(srsSecretArb, { minLength: 1, maxLength: 3 }),
    separator: sepArb,
    hashLength: fc.integer({ min: 4, max: 8 }),
    hashMinSeed: fc.nat(),
    domain: aliasDomainArb,
  })
  .map((r) => ({ secrets: r.secrets, separator: r.separator, hashLength: r.hashLength, hashMin: 1 + (r.hashMinSeed % r.hashLength), domain: r.domain }));

const GROUPS: { config: Config; cases: Case[] }[] = fc.sample(configArb, { seed: 42, numRuns: CONFIGS }).map((config, i) => ({
  config,
  cases: fc.sample(
    fc.record({ sender: srsSenderArb(config.domain), signMs: srsDayArb.map(dayInstant), midAge: fc.integer({ min: 1, max: MAX_AGE - 1 }), signer: fc.nat({ max: config.secrets.length - 1 }) }),
    { seed: 4200 + i, numRuns: PER_CONFIG },
  ),
}));
// postsrsd's own published vector (upstream tests) as a seventh configuration.
GROUPS.push({
  config: { secrets: ['tops3cr3t'], separator: '=', hashLength: 4, hashMin: 4, domain: 'example.com' },
  cases: [
    { sender: 'test@otherdomain.com', signMs: Date.UTC(2020, 0, 1, 0, 1), midAge: 5, signer: 0 },
    { sender: 'SRS0=cLDn=7G=example.com=user@forwarder.example', signMs: Date.UTC(2026, 0, 1, 12), midAge: 5, signer: 0 },
  ],
});

function opts(cfg: Config): SrsOptions {
  return { ...SRS_DEFAULTS, domain: cfg.domain, separator: cfg.separator, hashLength: cfg.hashLength, hashMin: cfg.hashMin, maxAgeDays: MAX_AGE };
}
function ring(secrets: readonly string[]): TagKeyring {
  return makeKeyring(secrets.map((s, i) => tagKey(i, utf8(s))));
}
function rotated(cfg: Config, signer: number): string[] {
  return [cfg.secrets[signer]!, ...cfg.secrets.filter((_, i) => i !== signer)];
}
function describeCase(cfg: Config, c: Pick<Case, 'sender' | 'signMs'>, extra = ''): string {
  return `sender=${JSON.stringify(c.sender)} secrets=${JSON.stringify(cfg.secrets)} -a${cfg.separator} -n${cfg.hashLength} -N${cfg.hashMin} -d${cfg.domain} signed=${iso(c.signMs)} (day ${Math.floor(c.signMs / DAY_MS)}, slot ${Math.floor(c.signMs / DAY_MS) % 1024})${extra}`;
}
function oursReverseText(address: string, cfg: Config, ms: number): string {
  const r = srsReverse(address, ring(cfg.secrets), opts(cfg), ms);
  return r.kind === 'valid' ? r.original : 'refused';
}
const replyText = (r: TableReply) => (r.code === 200 ? (r as { value: string }).value : 'refused');

/** Runs requests grouped by instant, in time order, on one postsrsd; results in input order. */
async function byTime(ps: Postsrsd, dir: 'forward' | 'reverse', jobs: readonly { ms: number; address: string }[]): Promise<TableReply[]> {
  const groups = new Map<number, number[]>();
  jobs.forEach((j, i) => groups.set(j.ms, [...(groups.get(j.ms) ?? []), i]));
  const out = new Array<TableReply>(jobs.length);
  for (const ms of [...groups.keys()].sort((a, b) => a - b)) {
    const idx = groups.get(ms)!;
    const res = await ps[dir](idx.map((i) => jobs[i]!.address), ms);
    idx.forEach((i, k) => { out[i] = res[k]!; });
  }
  return out;
}

describe('SRS: interoperability with postsrsd 1.10 (tcp_table)', () => {
  const instances: Postsrsd[] = [];

  beforeAll(async () => {
    if (!RUN) return;
    requirePeer('postsrsd', PEER);
    for (const g of GROUPS) {
      instances.push(await Postsrsd.start({ ...g.config, secrets: g.config.secrets.map((s) => utf8(s)) }));
    }
  });
  afterAll(async () => {
    await Promise.all(instances.map((p) => p.stop()));
  });

  it.skipIf(!RUN)(`srsForward equals postsrsd's forward map byte for byte (${GROUPS.reduce((n, g) => n + g.cases.length, 0)} senders, ${GROUPS.length} configurations)`, async () => {
    const mismatches: Mismatch[] = [];
    let alreadyRewritten = 0;
    const kinds = { SRS0: 0, SRS1: 0, unchanged: 0 };
    await Promise.all(GROUPS.map(async (g, gi) => {
      const ps = instances[gi]!;
      const res = await byTime(ps, 'forward', g.cases.map((c) => ({ ms: c.signMs, address: c.sender })));
      g.cases.forEach((c, i) => {
        const r = res[i]!;
        const o = srsForward(c.sender, ring(g.config.secrets), opts(g.config), c.signMs);
        const ours = o.kind === 'refused' ? `(refused: ${o.reason})` : o.address;
        if (o.kind === 'rewritten') kinds[o.scheme]++;
        else kinds.unchanged++;
        let theirs: string;
        if (r.code === 200) theirs = (r as { value: string }).value;
        else if ((r as { text: string }).text === 'Already rewritten') {
          // postsrsd leaves alone any sender that reverses with its own secrets (docs/wire-formats.md): the same
          // effect as "unchanged", and only possible when the sender really is one of ours.
          alreadyRewritten++;
          const ok = srsReverse(c.sender, ring(g.config.secrets), opts(g.config), c.signMs).kind === 'valid';
          theirs = ok && o.kind === 'unchanged' ? c.sender : `(500 Already rewritten; ours reverses it: ${ok})`;
        } else theirs = `(500 ${(r as { text: string }).text})`;
        if (ours !== theirs) mismatches.push({ input: describeCase(g.config, c), ours, theirs });
      });
    }));
    console.info(`[interop] postsrsd forward: ${JSON.stringify(kinds)}, "500 Already rewritten": ${alreadyRewritten}`);
    expect(kinds.SRS0).toBeGreaterThan(100);
    expect(kinds.SRS1).toBeGreaterThan(50);
    expectNoMismatches('srsForward vs postsrsd forward', mismatches);
  });

  it.skipIf(!RUN)('each reverses the other\'s addresses (as written, lower-cased, upper-cased) at ages 0..21 and refuses 22 and the future', async () => {
    const mismatches: Mismatch[] = [];
    let total = 0;
    let valid = 0;
    await Promise.all(GROUPS.map(async (g, gi) => {
      const ps = instances[gi]!;
      const fwd = await byTime(ps, 'forward', g.cases.map((c) => ({ ms: c.signMs, address: c.sender })));
      const jobs: { ms: number; address: string; c: Case; age: number; who: string }[] = [];
      g.cases.forEach((c, i) => {
        const addrs = new Map<string, string>();
        const o = srsForward(c.sender, ring(rotated(g.config, c.signer)), opts(g.config), c.signMs);
        if (o.kind === 'rewritten') addrs.set(o.address, `ours, signed with secret #${c.signer}`);
        const t = fwd[i]!;
        if (t.code === 200 && (t as { value: string }).value !== c.sender) {
          const v = (t as { value: string }).value;
          if (!addrs.has(v)) addrs.set(v, 'theirs');
        }
        for (const [a, who] of addrs) {
          for (const variant of [a, lowerAsciiOnly(a), upperAsciiOnly(a)]) {
            for (const age of new Set([0, c.midAge, MAX_AGE, MAX_AGE + 1, -1, 1024, 1024 + MAX_AGE, 1024 + MAX_AGE + 1])) {
              jobs.push({ ms: dayInstant(Math.floor(c.signMs / DAY_MS) + age), address: variant, c, age, who });
            }
          }
        }
      });
      const res = await byTime(ps, 'reverse', jobs);
      jobs.forEach((j, i) => {
        total++;
        const theirs = replyText(res[i]!);
        const ours = oursReverseText(j.address, g.config, j.ms);
        const input = describeCase(g.config, j.c, ` [${j.who}] address=${JSON.stringify(j.address)} reversed at ${iso(j.ms)} (age ${j.age})`);
        if (ours !== theirs) mismatches.push({ input, ours, theirs });
        const age = ((j.age % 1024) + 1024) % 1024;
        const shouldBeValid = /^SRS1/i.test(j.address) || age <= MAX_AGE;
        if ((ours !== 'refused') !== shouldBeValid) mismatches.push({ input: `${input} [expected ${shouldBeValid ? 'valid' : 'refused'}]`, ours, theirs });
        if (ours !== 'refused') valid++;
      });
    }));
    console.info(`[interop] postsrsd reverse: ${total} reversals, ${valid} valid`);
    expect(valid).toBeGreaterThan(total / 3);
    expectNoMismatches('reverse ours/theirs in both', mismatches);
  });

  it.skipIf(!RUN)('hash length: HashMin characters reverse in both, one fewer in neither, longer ones only in postsrsd; base64url only in ours', async () => {
    const mismatches: Mismatch[] = [];
    let url = 0;
    let long = 0;
    await Promise.all(GROUPS.map(async (g, gi) => {
      const ps = instances[gi]!;
      const jobs: { ms: number; address: string; c: Case; kind: 'min' | 'short' | 'long' | 'url' }[] = [];
      for (const c of g.cases) {
        const o = srsForward(c.sender, ring(g.config.secrets), opts(g.config), c.signMs);
        if (o.kind !== 'rewritten') continue;
        const m = /^(SRS[01][=+-])([^=]+)(=.*)$/is.exec(o.address)!;
        const [, head, h, tail] = m as unknown as [string, string, string, string];
        jobs.push({ ms: c.signMs, address: `${head}${h.slice(0, g.config.hashMin)}${tail}`, c, kind: 'min' });
        if (g.config.hashMin > 1) jobs.push({ ms: c.signMs, address: `${head}${h.slice(0, g.config.hashMin - 1)}${tail}`, c, kind: 'short' });
        // "Zz" after the hash, unless the HMAC's own next two characters happen to be z/Z in some case
        // (hashes compare case-insensitively), which would make it a true longer hash
        const next = h.length + 2 <= 27 ? srsForward(c.sender, ring(g.config.secrets), { ...opts(g.config), hashLength: h.length + 2 }, c.signMs) : null;
        const coincides = next?.kind === 'rewritten' && /^zz$/i.test(/^SRS[01][=+-]([^=]+)/i.exec(next.address)![1]!.slice(h.length));
        if (!coincides) jobs.push({ ms: c.signMs, address: `${head}${h}Zz${tail}`, c, kind: 'long' });
        if (/[+/]/.test(h)) jobs.push({ ms: c.signMs, address: `${head}${h.replace(/\+/g, '-').replace(/\//g, '_')}${tail}`, c, kind: 'url' });
      }
      const res = await byTime(ps, 'reverse', jobs);
      jobs.forEach((j, i) => {
        const theirs = replyText(res[i]!);
        const ours = oursReverseText(j.address, g.config, j.ms);
        const input = describeCase(g.config, j.c, ` ${j.kind} hash: address=${JSON.stringify(j.address)}`);
        if (j.kind === 'url') {
          url++;
          // We accept base64url (postsrsd >= 2.2.6 writes it; docs/wire-formats.md); the 1.x family refuses it.
          if (ours === 'refused') mismatches.push({ input, ours, theirs: 'ours must accept base64url' });
          if (theirs !== 'refused') mismatches.push({ input: `${input} [postsrsd 1.10 refuses base64url]`, ours: 'refused', theirs });
        } else if (j.kind === 'long') {
          // Issue 9: a hash with characters after the HMAC's is refused, as Mail::SRS does; postsrsd 1.10
          // compares only the first HashLength characters and accepts it.
          long++;
          if (ours !== 'refused') mismatches.push({ input, ours, theirs: 'ours must refuse characters that are not the HMAC\'s' });
          if (theirs === 'refused') mismatches.push({ input: `${input} [postsrsd 1.10 truncates a longer hash]`, ours: 'refused', theirs });
        } else {
          if (ours !== theirs) mismatches.push({ input, ours, theirs });
          if ((ours === 'refused') !== (j.kind === 'short')) mismatches.push({ input, ours, theirs: j.kind === 'short' ? 'refused' : 'valid' });
        }
      });
    }));
    console.info(`[interop] postsrsd 1.10 refused all ${url} base64url variants (ours accepts them); accepted all ${long} over-long hashes (ours refuses them, as Mail::SRS)`);
    expectNoMismatches('hash length / alphabet', mismatches);
  });

  it.skipIf(!RUN)('a sender that reverses with postsrsd\'s own secrets: postsrsd answers "500 Already rewritten"', async () => {
    // In the SRS domain both leave it alone. In another domain (same secret elsewhere), ours wraps it
    // as SRS1 and postsrsd does not: documented, not an interop problem (the address is ours anyway).
    const g = GROUPS[GROUPS.length - 1]!;
    const ps = instances[GROUPS.length - 1]!;
    const at = Date.UTC(2020, 0, 1, 0, 1);
    const own = 'SRS0=vmyz=2W=otherdomain.com=test@example.com';
    const elsewhere = 'SRS0=vmyz=2W=otherdomain.com=test@elsewhere.example';
    const [r1, r2] = await ps.forward([own, elsewhere], at);
    expect(r1).toStrictEqual({ code: 500, text: 'Already rewritten' });
    expect(srsForward(own, ring(g.config.secrets), opts(g.config), at)).toMatchObject({ kind: 'unchanged' });
    expect(r2).toStrictEqual({ code: 500, text: 'Already rewritten' });
    expect(srsForward(elsewhere, ring(g.config.secrets), opts(g.config), at)).toMatchObject({ kind: 'rewritten', scheme: 'SRS1' });
  });
});

/**
 * Odd and malformed input where ours and postsrsd 1.10 differ on purpose or by accident: pinned here so
 * that any change on either side shows up. Secret "k3y", SRS domain fwd.example.net, separator "=",
 * hash length 4, 2026-01-01T12:00Z (7G). Reverse cases carry a valid hash over the odd fields.
 */
describe('SRS: odd input, ours vs postsrsd 1.10 (documented differences)', () => {
  const at = Date.UTC(2026, 0, 1, 12);
  const cfg: Config = { secrets: ['k3y'], separator: '=', hashLength: 4, hashMin: 4, domain: 'fwd.example.net' };
  const h = (...f: string[]) => craftSrsHash('k3y', f);
  let ps: Postsrsd | undefined;
  beforeAll(async () => {
    if (!RUN) return;
    ps = await Postsrsd.start({ ...cfg, secrets: cfg.secrets.map((s) => utf8(s)) });
  });
  afterAll(async () => {
    await ps?.stop();
  });
  const oursFwd = (s: string) => {
    const r = srsForward(s, ring(cfg.secrets), opts(cfg), at);
    return r.kind === 'refused' ? `(refused: ${r.reason})` : r.address;
  };
  const theirs = (r: TableReply) => (r.code === 200 ? (r as { value: string }).value : `(${r.code} ${(r as { text: string }).text})`);

  const forward: [sender: string, ours: string, postsrsd: string, why: string][] = [
    ['SRS1==h1.org=op@x.org', 'SRS1=kdVF=h1.org=op@fwd.example.net', 'SRS1=kdVF=h1.org=op@fwd.example.net', 'SRS1 with an empty hash field'],
    ['SRS1=hh==op@x.org', 'SRS1=Yill==op@fwd.example.net', 'SRS1=Yill==op@fwd.example.net', 'SRS1 with an empty first-forwarder field'],
    ['SRS1=hh=h1.org=@x.org', 'SRS1=+VTx=h1.org=@fwd.example.net', 'SRS1=+VTx=h1.org=@fwd.example.net', 'SRS1 with an empty opaque part'],
    ['SRS1=hh=h1.org@x.org', '(refused: malformed-srs1)', '(500 No user in SRS1 address.)', 'SRS1 with two fields: both leave it'],
    ['@x.org', '(refused: unqualified)', 'SRS0=69C0=7G=x.org=@fwd.example.net', 'empty local part'],
    ['user@', '(refused: unqualified)', 'SRS0=9/fG=7G==user@fwd.example.net', 'empty domain'],
    ['user@fwd.example.net.', 'SRS0=4cxx=7G=fwd.example.net.=user@fwd.example.net', 'SRS0=4cxx=7G=fwd.example.net.=user@fwd.example.net', 'SRS domain with a trailing dot (a different name, as the family compares)'],
    ['"a@b"@x.org', '(refused: at-in-local-part)', 'SRS0=/uSQ=7G=b"@x.org="a@fwd.example.net', '@ in a quoted local part: postsrsd splits at the first @ (docs/wire-formats.md)'],
    ['SRS0@x.org', 'SRS0=nwzX=7G=x.org=SRS0@fwd.example.net', 'SRS1=5U2a=x.org=@fwd.example.net', 'local part exactly "SRS0": postsrsd takes the NUL after it for a separator (strchr)'],
    ['SRS0=@x.org', 'SRS1=xZuz=x.org==@fwd.example.net', 'SRS1=xZuz=x.org==@fwd.example.net', 'SRS0 with nothing after the separator: same'],
  ];
  it.skipIf(!RUN)('forward', async () => {
    const res = await ps!.forward(forward.map(([s]) => s), at);
    forward.forEach(([s, o, p, why], i) => {
      expect(oursFwd(s), `ours: ${why}: ${s}`).toBe(o);
      expect(theirs(res[i]!), `postsrsd: ${why}: ${s}`).toBe(p);
    });
  });

  const reverse: [address: () => string, ours: string, postsrsd: string, why: string][] = [
    [() => `SRS0=${h('7G', '', 'user')}=7G==user@fwd.example.net`, 'refused', 'user@', 'SRS0 with an empty host (valid hash)'],
    [() => `SRS0=${h('7G', 'host.org', '')}=7G=host.org=@fwd.example.net`, 'refused', '@host.org', 'SRS0 with an empty user (valid hash)'],
    [() => `SRS1=${h('', 'op')}==op@fwd.example.net`, 'refused', 'SRS0op@', 'SRS1 with an empty host (valid hash)'],
    [() => `SRS1=${h('h1.org', '')}=h1.org=@fwd.example.net`, 'refused', 'SRS0@h1.org', 'SRS1 with an empty opaque part (valid hash)'],
    [() => `SRS0=${h('7G', 'host.org', 'user')}=7G=host.org=user`, 'user@host.org', 'user@host.org', 'no @ at all: both reverse it'],
    [() => `SRS0=${h('7G', 'host.org', 'a@b')}=7G=host.org=a@b@fwd.example.net`, 'a@b@host.org', 'refused', '@ in the user part: ours splits at the last @, postsrsd at the first'],
    [() => `SRS0=${h('7G', 'host.org', 'a')}=7G=host.org=a@b@fwd.example.net`, 'refused', 'a@host.org', '@ in the user part, hashed up to the first @'],
    [() => `SRS0=${h('7', 'host.org', 'user')}=7=host.org=user@fwd.example.net`, 'refused', 'refused', 'one-character stamp'],
    [() => `SRS0=${h('!!', 'host.org', 'user')}=!!=host.org=user@fwd.example.net`, 'refused', 'refused', 'stamp outside base32'],
  ];
  it.skipIf(!RUN)('reverse of crafted addresses: ours refuses empty fields that postsrsd accepts', async () => {
    const addrs = reverse.map(([a]) => a());
    const res = await ps!.reverse(addrs, at);
    reverse.forEach(([, o, p, why], i) => {
      expect(oursReverseText(addrs[i]!, cfg, at), `ours: ${why}: ${addrs[i]}`).toBe(o);
      expect(replyText(res[i]!), `postsrsd: ${why}: ${addrs[i]}`).toBe(p);
    });
  });
});
