/**
 * Micro-benchmark of the tag core on one core: BATV sign/verify, SRS0 forward/reverse, and node:crypto's
 * createHmac('sha1') for comparison. Each case runs for a fixed time AND at most a fixed count, over ~1000
 * pre-generated, varied addresses (so the numbers are not one hot string's cache artefact).
 *
 *   npm run bench:tags                    # table on stdout
 *   npm run bench:tags -- --json          # table on stderr, JSON on stdout
 *   npm run bench:tags -- --ms 500        # shorter runs (100..10000 ms per case)
 */
import { createHmac } from 'node:crypto';
import { cpus } from 'node:os';
import { batvSign, batvVerify } from '../src/tags/batv.js';
import { HmacSha1Key, utf8 } from '../src/tags/hmac.js';
import { makeKeyring, tagKey } from '../src/tags/keyring.js';
import { SRS_DEFAULTS, srsForward, srsReverse, type SrsOptions } from '../src/tags/srs.js';

const args = process.argv.slice(2);
const JSON_OUT = args.includes('--json');
const msArg = args.indexOf('--ms');
const CASE_MS = msArg >= 0 ? Math.min(10_000, Math.max(100, Number(args[msArg + 1]) || 2000)) : 2000;
const WARMUP_MS = Math.min(300, CASE_MS / 4);
const MAX_OPS = 50_000_000; // count cap per case, whatever the clock says
const ADDRESS_COUNT = 1000;

// ---- deterministic address mix ----
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(20260101);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
const FIRST = ['anna', 'bob', 'carla', 'dieter', 'eve', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'karl', 'lena', 'mallory', 'niaj', 'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'victor', 'walter', 'jörg', 'josé', 'zoë'];
const LAST = ['smith', 'müller', 'garcia', 'nguyen', 'kowalski', 'o\'brien', 'schmidt', 'rossi', 'tanaka', 'johansson', 'dubois', 'van-der-berg'];
const ROLES = ['postmaster', 'info', 'noreply', 'billing', 'support', 'newsletter', 'bounces', 'hr'];
const DOMAINS = [
  'example.com', 'example.org', 'example.net', 'mail.example.co.uk', 'corp.example.de', 'lists.example.org',
  'shop.example.fr', 'eu-west.mx.example.io', 'a.b.c.example.com', 'bücher.example', 'xn--bcher-kva.example',
  'university.example.edu', 'gov.example.ca', 'news.example.jp', 'very-long-subdomain-name.department.example.com',
];
function localPart(): string {
  const f = pick(FIRST), l = pick(LAST);
  switch (Math.floor(rnd() * 9)) {
    case 0: return f;
    case 1: return `${f}.${l}`;
    case 2: return `${f[0]}.${l}`;
    case 3: return `${f}+${pick(['news', 'shop', 'list', 'x7'])}`;
    case 4: return `${f[0]!.toUpperCase()}${f.slice(1)}.${l[0]!.toUpperCase()}${l.slice(1)}`;
    case 5: return `${f}_${l}${Math.floor(rnd() * 1000)}`;
    case 6: return pick(ROLES);
    case 7: return `${f}.${l}.${pick(LAST)}-${Math.floor(rnd() * 1e6).toString(36)}`;
    default: return `${f}=${l}`;
  }
}
const senders: string[] = [];
const seen = new Set<string>();
for (let guard = 0; senders.length < ADDRESS_COUNT && guard < ADDRESS_COUNT * 50; guard++) {
  const a = `${localPart()}@${pick(DOMAINS)}`;
  if (!seen.has(a)) { seen.add(a); senders.push(a); }
}
const N = senders.length;

// ---- keys, clock, pre-made tags ----
const NOW = Date.parse('2026-01-01T12:00:00Z');
const VERIFY_AT = NOW + 3 * 86_400_000;
const secret = utf8('bench-secret-0123456789abcdefghijklmnopq'); // 40 bytes, printable like a generated one
const key = tagKey(3, secret);
const ring = makeKeyring([key, tagKey(2, utf8('older secret'))]);
const srsOpts: SrsOptions = { ...SRS_DEFAULTS, domain: 'fwd.example.net' };

const batvTags = senders.map((s) => {
  const r = batvSign(s, key, NOW);
  if (r.kind !== 'signed') throw new Error(`bench set-up: cannot sign ${s}`);
  return r.address;
});
const srsAddrs = senders.map((s) => {
  const r = srsForward(s, ring, srsOpts, NOW);
  if (r.kind !== 'rewritten') throw new Error(`bench set-up: cannot forward ${s}`);
  return r.address;
});
const hmacMsgs = senders.map((s) => `3461${s}`);
const hmacKey = new HmacSha1Key(secret);
const secretBuf = Buffer.from(secret);

// ---- runner ----
interface Result { name: string; ops: number; seconds: number; opsPerSec: number; nsPerOp: number }

/** Runs `op(i)` for i cycling over the address set; returns a checksum so nothing is optimised away. */
function measure(name: string, op: (i: number) => number): Result {
  const loop = (ms: number, cap: number): { ops: number; seconds: number; check: number } => {
    let ops = 0, check = 0;
    const t0 = performance.now();
    const deadline = t0 + ms;
    while (ops < cap) {
      for (let i = 0; i < N; i++) check += op(i); // one pass over every address per clock check
      ops += N;
      if (performance.now() >= deadline) break;
    }
    return { ops, seconds: (performance.now() - t0) / 1000, check };
  };
  loop(WARMUP_MS, MAX_OPS);
  const { ops, seconds, check } = loop(CASE_MS, MAX_OPS);
  if (check < 0) throw new Error(`${name}: failure count ${check}`); // ok() turns a wrong result into -Infinity
  return { name, ops, seconds, opsPerSec: ops / seconds, nsPerOp: (seconds * 1e9) / ops };
}

const ok = (b: boolean): number => (b ? 1 : Number.NEGATIVE_INFINITY);

const cases: [string, (i: number) => number][] = [
  ['BATV sign', (i) => ok(batvSign(senders[i]!, key, NOW).kind === 'signed')],
  ['BATV verify', (i) => ok(batvVerify(batvTags[i]!, ring, VERIFY_AT).kind === 'valid')],
  ['BATV sign+verify pair', (i) => {
    const s = batvSign(senders[i]!, key, NOW);
    return ok(s.kind === 'signed' && batvVerify(s.address, ring, VERIFY_AT).kind === 'valid');
  }],
  ['SRS0 forward', (i) => ok(srsForward(senders[i]!, ring, srsOpts, NOW).kind === 'rewritten')],
  ['SRS0 reverse', (i) => ok(srsReverse(srsAddrs[i]!, ring, srsOpts, VERIFY_AT).kind === 'valid')],
  ['SRS0 forward+reverse pair', (i) => {
    const f = srsForward(senders[i]!, ring, srsOpts, NOW);
    return ok(f.kind === 'rewritten' && srsReverse(f.address, ring, srsOpts, VERIFY_AT).kind === 'valid');
  }],
  ['HmacSha1Key.mac (utf8 + MAC)', (i) => hmacKey.mac(utf8(hmacMsgs[i]!))[0]!],
  ["node:crypto createHmac('sha1')", (i) => createHmac('sha1', secretBuf).update(hmacMsgs[i]!).digest()[0]!],
];

const results = cases.map(([name, op]) => measure(name, op));

// ---- report ----
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
const rows = [
  ['case', 'ops/s', 'ns/op', 'ops', 's'],
  ...results.map((r) => [r.name, fmt(r.opsPerSec), r.nsPerOp.toFixed(0), fmt(r.ops), r.seconds.toFixed(2)]),
];
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
const line = (r: string[]): string => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
const table = [
  `tag core, one core: ${N} addresses, ${CASE_MS} ms per case (cap ${fmt(MAX_OPS)} ops), node ${process.version}, ${cpus()[0]?.model ?? 'cpu?'}`,
  line(rows[0]!),
  widths.map((w) => '-'.repeat(w)).join('  '),
  ...rows.slice(1).map(line),
].join('\n');

if (JSON_OUT) {
  process.stderr.write(`${table}\n`);
  process.stdout.write(
    `${JSON.stringify({
      node: process.version,
      cpu: cpus()[0]?.model ?? null,
      date: new Date().toISOString(),
      addresses: N,
      caseMs: CASE_MS,
      maxOps: MAX_OPS,
      results: results.map((r) => ({ ...r, opsPerSec: Math.round(r.opsPerSec), nsPerOp: Number(r.nsPerOp.toFixed(1)), seconds: Number(r.seconds.toFixed(3)) })),
    }, null, 2)}\n`,
  );
} else {
  process.stdout.write(`${table}\n`);
}
