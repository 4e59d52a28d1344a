/**
 * Abuse limits for the inbound gate:
 *  - per client IP, refused bounces are counted over a window; past the threshold the IP is cooled off
 *    (421 4.7.0) for a while;
 *  - per valid tag, accepted bounces are capped per window, so a harvested valid tag cannot be replayed
 *    into a flood.
 *
 * One interface, two backends: `LocalLimits` (lru-cache, bounded, driven by the injected clock; the
 * default) and `SharedLimits` (the counts of every replica in Redis, src/state/redis.ts), which answers
 * from its local limits whenever Redis is unreachable or slower than state.timeoutMs, and keeps a local
 * cooling-off entry in front of Redis (a client known to be cooling off needs no round trip).
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { SharedState } from '../state/redis.js';

/** inbound.limits of the config (documented there). */
export type LimitSettings = Config['inbound']['limits'];

/**
 * The local limits answer at once (a boolean), the shared ones through Redis (a promise): callers await
 * only a promise, so a refusal on the local limits costs no extra turns of the microtask queue.
 */
export type Answer = boolean | Promise<boolean>;

export interface AbuseLimits {
  isCoolingOff(ip: string): Answer;
  /** Counts a refused bounce; true when this one tipped the client into cooling off. */
  noteRefused(ip: string): Answer;
  /** Takes one accepted bounce for a tag (its canonical identity, an opaque key); false when over its cap. */
  takeTag(tag: string): Answer;
  readonly tracked: { refused: number; cooling: number; tags: number };
}

interface Window {
  count: number;
}

export class LocalLimits implements AbuseLimits {
  private readonly refused: LRUCache<string, Window>;
  private readonly cooling: LRUCache<string, true>;
  private readonly tags: LRUCache<string, Window>;

  constructor(private readonly s: LimitSettings, clock: Clock) {
    const common = { max: s.maxTracked, perf: clock, ttlResolution: 0, ttlAutopurge: false } as const;
    // noUpdateTTL: a window starts at its first event and is not extended by later ones.
    this.refused = new LRUCache({ ...common, ttl: s.refusedWindowSec * 1000, noUpdateTTL: true });
    this.cooling = new LRUCache({ ...common, ttl: s.coolingOffSec * 1000 });
    this.tags = new LRUCache({ ...common, ttl: s.tagWindowSec * 1000, noUpdateTTL: true });
  }

  isCoolingOff(ip: string): boolean {
    return this.coolingNow(ip);
  }

  coolingNow(ip: string): boolean {
    return this.cooling.has(ip);
  }

  /** Marks a client as cooling off (what the shared state said). */
  markCooling(ip: string): void {
    this.cooling.set(ip, true);
  }

  noteRefused(ip: string): boolean {
    const w = this.refused.get(ip);
    if (w) w.count++;
    else this.refused.set(ip, { count: 1 });
    const count = w ? w.count : 1;
    if (count >= this.s.refusedPerClient && !this.cooling.has(ip)) {
      this.cooling.set(ip, true);
      this.refused.delete(ip);
      return true;
    }
    return false;
  }

  takeTag(tag: string): boolean {
    const key = tag.toLowerCase();
    const w = this.tags.get(key);
    if (!w) {
      this.tags.set(key, { count: 1 });
      return true;
    }
    if (w.count >= this.s.bouncesPerTag) return false;
    w.count++;
    return true;
  }

  get tracked(): { refused: number; cooling: number; tags: number } {
    return { refused: this.refused.size, cooling: this.cooling.size, tags: this.tags.size };
  }
}

/** Counts shared by every replica through Redis; the local limits answer whenever Redis does not. */
export class SharedLimits implements AbuseLimits {
  readonly local: LocalLimits;

  constructor(private readonly s: LimitSettings, clock: Clock, private readonly state: SharedState) {
    this.local = new LocalLimits(s, clock);
  }

  async isCoolingOff(ip: string): Promise<boolean> {
    if (this.local.coolingNow(ip)) return true;
    const r = await this.state.isCoolingOff(ip);
    if (r === undefined) return false;
    if (r) this.local.markCooling(ip);
    return r;
  }

  async noteRefused(ip: string): Promise<boolean> {
    const r = await this.state.noteRefused(ip, this.s.refusedPerClient, this.s.refusedWindowSec * 1000, this.s.coolingOffSec * 1000);
    if (r === undefined) return this.local.noteRefused(ip);
    if (r) this.local.markCooling(ip);
    return r;
  }

  async takeTag(tag: string): Promise<boolean> {
    const r = await this.state.takeTag(tag.toLowerCase(), this.s.bouncesPerTag, this.s.tagWindowSec * 1000);
    return r === undefined ? this.local.takeTag(tag) : r;
  }

  get tracked(): { refused: number; cooling: number; tags: number } {
    return this.local.tracked;
  }
}

/** The limits for a config: shared when a SharedState is given, local otherwise. */
export function createLimits(s: LimitSettings, clock: Clock, state: SharedState | null): AbuseLimits {
  return state ? new SharedLimits(s, clock, state) : new LocalLimits(s, clock);
}
