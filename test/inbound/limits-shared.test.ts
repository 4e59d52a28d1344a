/**
 * AbuseLimits shared through a real redis-server (issue 12): two SharedLimits stand for two replicas.
 * Counts hold across both (the threshold and the tag cap are not multiplied by the number of
 * replicas); Redis stopped, paused (slower than state.timeoutMs) or restarted never throws nor delays
 * a call past the timeout, local limits take over at once (logged once, gauge callback), and shared
 * limits come back by themselves. Nothing but IPs, hashes and counts is written to Redis.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLimits, LocalLimits, SharedLimits, type LimitSettings } from '../../src/inbound/limits.js';
import { SharedState } from '../../src/state/redis.js';
import { systemClock } from '../../src/clock.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';

const S: LimitSettings = { refusedPerClient: 5, refusedWindowSec: 600, coolingOffSec: 900, bouncesPerTag: 3, tagWindowSec: 3600, maxTracked: 1000 };
const TIMEOUT_MS = 20;

let redis: RedisProcess;
const logs: string[] = [];
const gauge: boolean[] = [];
let stateA: SharedState;
let stateB: SharedState;
let prefixN = 0;

function replica(prefix: string): SharedState {
  return new SharedState({
    url: redis.url, prefix, timeoutMs: TIMEOUT_MS, probeMs: 100,
    log: { warn: (m) => logs.push(`warn ${m}`), info: (m) => logs.push(`info ${m}`) },
    onFallback: (f) => gauge.push(f),
  });
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await stateA?.close();
  await stateB?.close();
  await redis?.stop();
});

describe('SharedLimits across two replicas', () => {
  it('cools a client off at the 5th refused bounce counted over both replicas, and both then say so', async () => {
    const prefix = `t${prefixN++}:`;
    stateA = replica(prefix);
    stateB = replica(prefix);
    await until(() => stateA.shared && stateB.shared);
    const a = new SharedLimits(S, systemClock, stateA);
    const b = new SharedLimits(S, systemClock, stateB);
    const tipped: boolean[] = [];
    for (let i = 0; i < 5; i++) tipped.push(await (i % 2 ? b : a).noteRefused('192.0.2.7'));
    expect(tipped).toEqual([false, false, false, false, true]);
    expect([await a.isCoolingOff('192.0.2.7'), await b.isCoolingOff('192.0.2.7'), await a.isCoolingOff('192.0.2.8')]).toEqual([true, true, false]);
    // Local-only replicas, for contrast: five refusals spread over two are not enough for either.
    const la = new LocalLimits(S, systemClock);
    const lb = new LocalLimits(S, systemClock);
    for (let i = 0; i < 5; i++) await (i % 2 ? lb : la).noteRefused('192.0.2.7');
    expect([await la.isCoolingOff('192.0.2.7'), await lb.isCoolingOff('192.0.2.7')]).toEqual([false, false]);
  });

  it('holds a tag to 3 accepted bounces over both replicas, whatever the case of its spelling', async () => {
    const a = createLimits(S, systemClock, stateA);
    const b = createLimits(S, systemClock, stateB);
    const tag = 'prvs=0123abcdef=alice@example.com';
    const spellings = [tag, tag.toUpperCase(), tag, 'PRVS=0123ABCDEF=Alice@Example.COM', tag, tag];
    const took: boolean[] = [];
    for (const [i, t] of spellings.entries()) took.push(await (i % 2 ? b : a).takeTag(t));
    expect(took).toEqual([true, true, true, false, false, false]);
  });

  it('writes only prefixed keys holding IPs and tag hashes, never the tag or an address', async () => {
    const c = new Redis(redis.url);
    const keys = (await c.keys('*')).sort();
    await c.quit();
    expect(keys.every((k) => k.startsWith('t0:'))).toBe(true);
    expect(keys.some((k) => k.includes('alice') || k.includes('prvs'))).toBe(false);
    expect(keys).toContain('t0:cool:192.0.2.7');
    expect(keys.filter((k) => /^t0:tag:[0-9a-f]{32}$/.test(k))).toHaveLength(1);
  });
});

describe('SharedLimits when Redis fails', () => {
  it('Redis paused (slower than the timeout): calls answer within the timeout from local limits; back to shared by itself', async () => {
    const a = new SharedLimits(S, systemClock, stateA);
    logs.length = 0;
    gauge.length = 0;
    redis.pause();
    try {
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        await a.noteRefused('198.51.100.1');
        times.push(performance.now() - t);
      }
      // The first call waits for the timeout; the following ones do not go to Redis at all.
      expect(Math.max(...times)).toBeLessThan(TIMEOUT_MS + 30);
      expect(stateA.shared).toBe(false);
      expect(await a.isCoolingOff('198.51.100.1')).toBe(true); // the local count reached 5 on its own
    } finally {
      redis.resume();
    }
    await until(() => stateA.shared);
    expect(logs.filter((l) => l.startsWith('warn'))).toEqual(['warn shared state unavailable; using local limits']);
    expect(logs.filter((l) => l.startsWith('info'))).toEqual(['info shared state available again; using shared limits']);
    expect(gauge.slice(0, 1)).toEqual([true]);
    expect(gauge.at(-1)).toBe(false);
  });

  it('Redis stopped: no call throws or waits, local limits count; after a restart shared limits come back', async () => {
    const a = new SharedLimits(S, systemClock, stateA);
    const b = new SharedLimits(S, systemClock, stateB);
    logs.length = 0;
    await redis.halt();
    await until(() => !stateA.shared && !stateB.shared);
    const t = performance.now();
    const took: boolean[] = [];
    for (let i = 0; i < 8; i++) took.push(await (i % 2 ? b : a).takeTag('prvs=0999ffffff=bob@example.com'));
    expect(performance.now() - t).toBeLessThan(50);
    // Each replica caps on its own meanwhile: 3 each.
    expect(took).toEqual([true, true, true, true, true, true, false, false]);
    await redis.start();
    await until(() => stateA.shared && stateB.shared);
    const after: boolean[] = [];
    for (let i = 0; i < 4; i++) after.push(await (i % 2 ? b : a).takeTag('prvs=0888eeeeee=carol@example.com'));
    expect(after).toEqual([true, true, true, false]);
    expect(logs.filter((l) => l.startsWith('warn')).length).toBe(2); // once per replica
  });
});

describe('config state section', () => {
  it('accepts redis:// and rediss:// URLs, refuses others, and check-config output hides the password', async () => {
    const { parseConfig, ConfigError } = await import('../../src/config.js');
    const { redacted } = await import('../../src/config/load.js');
    const c = parseConfig({ state: { redis: 'rediss://app:hunter2secret@127.0.0.1:6380/2', prefix: 'mx1:', timeoutMs: 3 } });
    expect(c.state).toEqual({ redis: 'rediss://app:hunter2secret@127.0.0.1:6380/2', passwordFile: null, prefix: 'mx1:', timeoutMs: 3 });
    const shown = JSON.stringify(redacted(c));
    expect(shown).toContain('"redis":"rediss://app:***@127.0.0.1:6380/2"');
    expect(shown.includes('hunter2secret')).toBe(false);
    expect(parseConfig({}).state).toEqual({ redis: null, passwordFile: null, prefix: 'batv:', timeoutMs: 5 });
    let e: unknown;
    try { parseConfig({ state: { redis: 'http://127.0.0.1:6379', timeoutMs: 0 } }); } catch (x) { e = x; }
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as InstanceType<typeof ConfigError>).problems).toEqual([
      'state.redis: must be redis://host:port[/db] or rediss://host:port[/db]',
      'state.timeoutMs: must be a whole number from 1 to 10000 (found 0)',
    ]);
  });
});
