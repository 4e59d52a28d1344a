/**
 * Fuzzing both listeners with random and mutated SMTP command streams (test/helpers/smtp-fuzz.ts), many
 * sessions at once, each from its own loopback address (127.x.y.z, so per-client limits and the AUTH
 * brake are exercised without throttling the whole run). For every session:
 *   - every byte the proxy sends is a well-formed reply line (3-digit code 2xx-5xx, SP or "-", CRLF,
 *     at most 512 octets);
 *   - the session ends (the proxy closes after QUIT or a 421) within a time limit: no hang;
 * and across the run:
 *   - the process never crashes, no hook hits an unexpected error (logged at error level), and the
 *     proxy's own "451 4.3.0 Local error" never appears;
 *   - every "250 Ok: queued as sink" a client saw matches one message the sinks accepted, and back;
 *   - RSS stays bounded; afterwards both listeners still deliver a clean message.
 *
 * Run count: FUZZ_RUNS (default 2000 sequences); the full target is
 *   FUZZ_RUNS=100000 npx vitest run test/fuzz
 * A failure prints the seed, the path and the shrunk sequence, replayable with FUZZ_SEED.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../src/auth.js';
import type { Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';
import { srsForward, SRS_DEFAULTS } from '../../src/tags/srs.js';
import { startCountingSink, type CountingSink } from '../helpers/counting-sink.js';
import { FUZZ_RUNS, FUZZ_SEED } from '../helpers/fuzz-env.js';
import { startTestProxy, T0, testKeyring } from '../helpers/proxy.js';
import { createLogger } from '../../src/log.js';
import { Writable } from 'node:stream';
import { badReplyLines, runSession, sequenceArb, type FuzzAddresses } from '../helpers/smtp-fuzz.js';
import { talk } from '../helpers/talk.js';

const CONCURRENCY = 32;
/** A full garbage collection (V8's gc, exposed at run time) so heap measurements show live memory only. */
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const SESSION_LIMIT_MS = 15_000;
const ring = testKeyring();
const srsOpts = { ...SRS_DEFAULTS, domain: 'srs.example.net' };
const tag = (a: string) => { const r = batvSign(a, ring.signing, T0); return r.kind === 'signed' ? r.address : a; };
const srs = (a: string) => { const r = srsForward(a, ring, srsOpts, T0); return r.kind === 'rewritten' ? r.address : a; };
const ADDRESSES: FuzzAddresses = {
  interesting: [
    'alice@example.com', 'bob@example.org', 'friend@example.net', 'postmaster@example.com',
    tag('alice@example.com'), tag('bob@example.org'), tag('x@victim.example'),
    tag('alice@example.com').toUpperCase(), tag('alice@example.com').replace(/=([0-9a-f]{6})=/, '=000000='),
    srs('orig@foreign.example'), srs(srs('orig@foreign.example')), srs('orig@foreign.example').replace(/^SRS0=..../, 'SRS0=AAAA'),
    'SRS0=xxxx=ZZ=foreign.example=orig@srs.example.net', 'postmaster@srs.example.net',
  ],
};

let proxy: Proxy;
let out: CountingSink;
let mailbox: CountingSink;
// Log lines at error level and above are kept (they mean a hook met an unexpected error); the rest is only
// counted, so a long run does not grow the test's own memory.
const lines: Array<Record<string, unknown>> = [];
let logged = 0;
const log = createLogger('info', new Writable({
  write(chunk: Buffer, _e, cb) {
    for (const l of chunk.toString().split('\n')) {
      if (!l) continue;
      logged++;
      const o = JSON.parse(l) as Record<string, unknown>;
      if ((o.level as number) >= 50) lines.push(o);
    }
    cb();
  },
}) as never);

beforeAll(async () => {
  out = await startCountingSink();
  mailbox = await startCountingSink();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-fuzz-'));
  const usersFile = path.join(dir, 'users');
  writeFileSync(usersFile, `fuzz:${await hashPassword('fuzz-password', 1024)}\n`);
  ({ proxy } = await startTestProxy({
    timeouts: { connectMs: 2000, greetingMs: 2000, commandMs: 5000, dataMs: 5000, clientIdleMs: 6000 },
    // a small message limit, so that over-size messages (some generated bodies are 4-40 KiB) are common
    limits: { maxClients: 500, maxMessageBytes: 16_384 },
    outbound: { relay: `smtp://127.0.0.1:${out.port}`, usersFile, allowInsecureAuth: true },
    inbound: { mailbox: `smtp://127.0.0.1:${mailbox.port}`, untaggedBounces: 'classify' },
  }, { log }));
});
// An exception nobody catches would end a real proxy process: each one is recorded as a crash.
const crashes: string[] = [];
const onCrash = (e: unknown) => { crashes.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e)); };
process.on('uncaughtException', onCrash);
process.on('unhandledRejection', onCrash);

afterAll(async () => {
  process.off('uncaughtException', onCrash);
  process.off('unhandledRejection', onCrash);
  await proxy?.close(50);
  await out?.close();
  await mailbox?.close();
});

/** A distinct loopback source address per session (127.1.0.0 - 127.254.255.255). */
function sourceAddress(n: number): string {
  const x = (n * 2654435761) >>> 0;
  return `127.${1 + (x % 254)}.${(x >>> 8) & 255}.${(x >>> 16) & 255}`;
}

describe('listeners under random and mutated command streams', () => {
  it(`${FUZZ_RUNS} sequences (seed ${FUZZ_SEED}): well-formed replies, no hang, no crash, no unexpected error, bounded memory, exact delivery count`, async () => {
    // Sequences are made in batches as the run goes (not all up front), so the test's own memory stays flat.
    const arb = fc.tuple(sequenceArb(ADDRESSES), fc.boolean(), fc.integer({ min: 0, max: 49 }));
    const BATCH = 1000;
    let batch: Array<[{ text: string; cuts: number[] }, boolean, number]> = [];
    let batchStart = 0;
    const sample = (n: number) => {
      if (n >= batchStart + batch.length || n < batchStart) {
        batchStart = n - (n % BATCH);
        batch = fc.sample(arb, { seed: FUZZ_SEED + batchStart / BATCH, numRuns: Math.min(BATCH, FUZZ_RUNS - batchStart) });
      }
      return batch[n - batchStart]!;
    };
    const problems: string[] = [];
    let queuedReplies = 0;
    const codes = new Map<string, number>();
    const examples = new Set<string>();
    let sessions = 0;
    let next = 0;
    const rss: number[] = [];
    const heap: number[] = [];
    const worker = async () => {
      while (next < FUZZ_RUNS) {
        const n = next++;
        const [{ text, cuts }, inbound, dice] = sample(n);
        const port = inbound ? proxy.inbound.port : proxy.outbound.port;
        const r = await runSession(port, text, cuts, sourceAddress(n), SESSION_LIMIT_MS, dice === 0);
        sessions++;
        const bad = badReplyLines(r.output);
        const where = `#${n} ${inbound ? 'inbound' : 'outbound'} ${JSON.stringify(text.length > 600 ? `${text.slice(0, 600)}...` : text)} cuts=${JSON.stringify(cuts)}`;
        if (bad.length) problems.push(`malformed reply ${bad.join(' | ')} for ${where}`);
        if (!r.closed) problems.push(`no close within ${SESSION_LIMIT_MS} ms (hang) for ${where}; got ${JSON.stringify(r.output.slice(-300))}`);
        if (/^451 4\.3\.0 Local error/m.test(r.output)) problems.push(`internal error reply for ${where}`);
        // every connection is still served: greeted (or, talking before the greeting, refused with a 421)
        if (!r.output.startsWith('220 proxy.test ESMTP') && !(dice === 0 && r.output.startsWith('421 '))) {
          problems.push(`not greeted: ${JSON.stringify(r.output.slice(0, 100))} for ${where}`);
        }
        for (const l of r.output.split('\r\n')) {
          if (l === '250 Ok: queued as sink') queuedReplies++;
          const key = l.slice(0, 3);
          if (/^\d{3}$/.test(key)) {
            codes.set(key, (codes.get(key) ?? 0) + 1);
            if (process.env.FUZZ_SHOW && !examples.has(l)) { examples.add(l); console.log('reply:', l.slice(0, 160)); }
          }
        }
        if (n % 500 === 0) {
          gc();
          rss.push(process.memoryUsage().rss);
          heap.push(process.memoryUsage().heapUsed);
          if (process.env.FUZZ_SHOW) console.log('progress', n, (rss.at(-1)! / 2 ** 20).toFixed(0), 'MiB rss', (heap.at(-1)! / 2 ** 20).toFixed(0), 'MiB heap after gc');
        }
        // stop early once the run has clearly failed (FUZZ_KEEP_GOING=1 runs every sequence, for counting)
        if (problems.length > 20 && !process.env.FUZZ_KEEP_GOING) return;
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const unexpected = lines.filter((l) => (l.level as number) >= 50).map((l) => JSON.stringify(l).slice(0, 400));
    const kinds = (p: string) => p.replace(/ for #.*$/s, '').replace(/\(hang\).*/, '(hang)');
    const tally = [...problems.reduce((m, p) => m.set(kinds(p), (m.get(kinds(p)) ?? 0) + 1), new Map<string, number>())].map(([k, n]) => `${n}x ${k.slice(0, 120)}`);
    console.log(`fuzz: ${sessions} sessions run; ${crashes.length} uncaught exceptions (crashes)${crashes.length ? `: ${[...new Set(crashes)].join(' | ')}` : ''}; ${problems.length} other problems${problems.length ? ` [${tally.join('; ')}], first: ${problems[0]!.slice(0, 300)}` : ''}; ${unexpected.length} error log lines`);
    expect(crashes.length, `uncaught exceptions: ${[...new Set(crashes)].join(' | ')}`).toBe(0);
    expect(problems.slice(0, 10)).toEqual([]);
    expect(unexpected.slice(0, 5)).toEqual([]);
    expect(sessions).toBe(FUZZ_RUNS);
    expect(logged).toBeGreaterThan(0);
    // Exact accounting: each 250 a client saw after DATA is one message a sink accepted.
    await new Promise((r) => setTimeout(r, 200));
    expect(out.accepted + mailbox.accepted).toBe(queuedReplies);
    // Memory: after warm-up (the first 1000 sessions), the live heap after a full GC grows by less than
    // 32 MiB and RSS by less than 200 MiB, whatever the run count.
    gc();
    heap.push(process.memoryUsage().heapUsed);
    rss.push(process.memoryUsage().rss);
    const warm = Math.min(2, heap.length - 1);
    const heapGrowth = Math.max(...heap.slice(warm)) - heap[warm]!;
    const rssGrowth = Math.max(...rss.slice(warm)) - rss[warm]!;
    console.log(`fuzz: ${sessions} sessions, ${queuedReplies} messages delivered; heap after GC ${(Math.min(...heap) / 2 ** 20).toFixed(0)}-${(Math.max(...heap) / 2 ** 20).toFixed(0)} MiB, RSS ${(Math.min(...rss) / 2 ** 20).toFixed(0)}-${(Math.max(...rss) / 2 ** 20).toFixed(0)} MiB; reply codes ${JSON.stringify(Object.fromEntries([...codes].sort()))}`);
    expect(heapGrowth).toBeLessThan(32 * 2 ** 20);
    expect(rssGrowth).toBeLessThan(200 * 2 ** 20);
    // the run reached deep states: relayed transactions, messages, refusals of every kind
    for (const c of ['220', '221', '250', '354', '421', '500', '501', '503', '550', '555']) expect(codes.get(c) ?? 0, `reply code ${c} seen`).toBeGreaterThan(0);
    expect(queuedReplies).toBeGreaterThan(FUZZ_RUNS / 50);
  }, 60_000 + FUZZ_RUNS * 20);

  it('both listeners still relay a clean message afterwards', async () => {
    const before = out.accepted + mailbox.accepted;
    for (const [port, from, to] of [[proxy.outbound.port, 'alice@example.com', 'b@example.net'], [proxy.inbound.port, 'friend@example.net', 'alice@example.com']] as const) {
      const t = talk(port);
      expect(await t.greeting).toMatch(/^220 /);
      expect(await t.cmd('EHLO after.fuzz')).toMatch(/^250-/);
      expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
      expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
      expect((await t.data('Subject: after\r\n\r\nok\r\n')).end).toBe('250 Ok: queued as sink');
      await t.quit();
    }
    expect(out.accepted + mailbox.accepted).toBe(before + 2);
  });
});
