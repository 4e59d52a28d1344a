/**
 * Limits shared between replicas through Redis (issue 12), with ioredis. Every operation is one Lua
 * script (atomic on the server: no read-modify-write race between replicas) on counters with expiry.
 *
 * Redis is a brake, never the gate: each call waits at most `timeoutMs` (ioredis commandTimeout; the
 * offline queue is off, so a call while disconnected fails at once). The first failure switches this
 * process to its local limits (logged once, gauge batv_proxy_shared_state_fallback = 1); while in
 * fallback no call goes to Redis on the hot path, and a PING every second (plus ioredis's own
 * reconnects) brings it back to shared state by itself when Redis answers again.
 *
 * Nothing secret is written: keys hold client IPs and a SHA-256 of the tag identity; values are counts.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { Redis } from 'ioredis';
import type { Config } from '../config.js';
import { redactUrl } from '../config/load.js';

export interface StateLog {
  warn(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
}

/** What /readyz and the metric show. */
export interface SharedStatus {
  readonly configured: boolean;
  readonly fallback: boolean;
  readonly since: string | null;
  readonly reason: string | null;
}

// Refused bounce from a client: count in the window; at the threshold start cooling off and reset the count.
// Returns {tipped, coolingMs}: tipped 1 when this call started the cooling off.
const NOTE_REFUSED = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0`;

// One accepted bounce for a tag: 1 while within the cap for this window, else 0.
const TAKE_TAG = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1`;

// AUTH failure: count with an expiry renewed on each failure; returns the count.
const NOTE_FAILURE = `
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n`;

type Scripted = Redis & {
  noteRefused(refusedKey: string, coolKey: string, threshold: number, windowMs: number, coolMs: number): Promise<number>;
  takeTag(key: string, cap: number, windowMs: number): Promise<number>;
  noteFailure(key: string, ttlMs: number): Promise<number>;
};

export interface SharedStateOptions {
  readonly url: string;
  readonly password?: string;
  readonly prefix: string;
  readonly timeoutMs: number;
  readonly log: StateLog;
  /** Called with true when falling back to local limits, false when shared again. */
  readonly onFallback?: (fallback: boolean) => void;
  /** How often a PING is tried while in fallback. */
  readonly probeMs?: number;
}

export class SharedState {
  private readonly redis: Scripted;
  private fallback = false;
  private since: string | null = null;
  private reason: string | null = null;
  private probe: NodeJS.Timeout | null = null;
  private closed = false;
  private announced = false;

  constructor(private readonly o: SharedStateOptions) {
    this.redis = new Redis(o.url, {
      ...(o.password !== undefined ? { password: o.password } : {}),
      commandTimeout: o.timeoutMs,
      connectTimeout: 2000,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // Keep reconnecting (quickly at first) for as long as the process runs.
      retryStrategy: (times) => Math.min(50 * times, 1000),
      lazyConnect: false,
    }) as Scripted;
    this.redis.defineCommand('noteRefused', { numberOfKeys: 2, lua: NOTE_REFUSED });
    this.redis.defineCommand('takeTag', { numberOfKeys: 1, lua: TAKE_TAG });
    this.redis.defineCommand('noteFailure', { numberOfKeys: 1, lua: NOTE_FAILURE });
    // Until the first connection is ready, answer locally (start-up never waits for Redis).
    this.enterFallback('connecting', false);
    this.redis.on('ready', () => this.leaveFallback());
    this.redis.on('error', (e: Error) => this.enterFallback(e.message));
    this.redis.on('close', () => this.enterFallback('connection closed'));
  }

  get status(): SharedStatus {
    return { configured: true, fallback: this.fallback, since: this.since, reason: this.reason };
  }

  /** True while calls go to Redis. */
  get shared(): boolean {
    return !this.fallback;
  }

  private key(kind: string, id: string): string {
    return `${this.o.prefix}${kind}:${id}`;
  }

  private enterFallback(reason: string, say = true): void {
    if (this.closed) return;
    if (!this.fallback) {
      this.fallback = true;
      this.since = new Date().toISOString();
      this.o.onFallback?.(true);
    }
    if (say || this.reason === null) this.reason = reason;
    // Said once per outage, however many reconnect attempts fail.
    if (say && !this.announced) {
      this.announced = true;
      this.o.log.warn('shared state unavailable; using local limits', { redis: redactUrl(this.o.url), reason });
    }
    if (!this.probe) {
      this.probe = setInterval(() => {
        if (this.redis.status === 'ready') this.redis.ping().then(() => this.leaveFallback(), () => undefined);
      }, this.o.probeMs ?? 1000);
      this.probe.unref();
    }
  }

  private leaveFallback(): void {
    if (this.closed || !this.fallback) return;
    this.fallback = false;
    this.since = null;
    this.reason = null;
    if (this.probe) { clearInterval(this.probe); this.probe = null; }
    if (this.announced) this.o.log.info('shared state available again; using shared limits', { redis: redactUrl(this.o.url) });
    this.announced = false;
    this.o.onFallback?.(false);
  }

  /** Runs one Redis call; undefined (and fallback) on any failure or timeout. */
  private async run<T>(fn: () => Promise<T>): Promise<T | undefined> {
    if (this.fallback) return undefined;
    try {
      return await fn();
    } catch (e) {
      this.enterFallback((e as Error).message);
      return undefined;
    }
  }

  isCoolingOff(ip: string): Promise<boolean | undefined> {
    return this.run(async () => (await this.redis.exists(this.key('cool', ip))) === 1);
  }

  noteRefused(ip: string, threshold: number, windowMs: number, coolMs: number): Promise<boolean | undefined> {
    return this.run(async () => (await this.redis.noteRefused(this.key('refused', ip), this.key('cool', ip), threshold, windowMs, coolMs)) === 1);
  }

  /** `id` is the tag's canonical identity, opaque here; only its hash is stored. */
  takeTag(id: string, cap: number, windowMs: number): Promise<boolean | undefined> {
    const h = createHash('sha256').update(id).digest('hex').slice(0, 32);
    return this.run(async () => (await this.redis.takeTag(this.key('tag', h), cap, windowMs)) === 1);
  }

  authFailures(ip: string): Promise<number | undefined> {
    return this.run(async () => Number((await this.redis.get(this.key('authfail', ip))) ?? 0));
  }

  noteAuthFailure(ip: string, ttlMs: number): Promise<number | undefined> {
    return this.run(() => this.redis.noteFailure(this.key('authfail', ip), ttlMs));
  }

  clearAuthFailures(ip: string): Promise<void> {
    return this.run(async () => { await this.redis.del(this.key('authfail', ip)); }).then(() => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.probe) { clearInterval(this.probe); this.probe = null; }
    this.redis.disconnect(false);
  }
}

/** The shared state a config asks for (state.redis), or null. The password file is read here, never logged. */
export async function openSharedState(state: Config['state'], log: StateLog, onFallback?: (fallback: boolean) => void): Promise<SharedState | null> {
  if (state.redis === null) return null;
  const password = state.passwordFile !== null ? (await fs.readFile(state.passwordFile, 'utf8')).split(/\r?\n/)[0] : undefined;
  return new SharedState({ url: state.redis, ...(password !== undefined ? { password } : {}), prefix: state.prefix, timeoutMs: state.timeoutMs, log, ...(onFallback ? { onFallback } : {}) });
}
