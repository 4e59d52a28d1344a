/**
 * Abuse limits for the inbound gate, bounded in memory (lru-cache) and driven by the injected clock:
 *  - per client IP, refused bounces are counted over a window; past the threshold the IP is cooled off
 *    (421 4.7.0) for a while;
 *  - per valid tag, accepted bounces are capped per window, so a harvested valid tag cannot be replayed
 *    into a flood.
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';

/** inbound.limits of the config (documented there). */
export type LimitSettings = Config['inbound']['limits'];

interface Window {
  count: number;
}

export class AbuseLimits {
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
    return this.cooling.has(ip);
  }

  /** Counts a refused bounce; true when this one tipped the client into cooling off. */
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

  /** Takes one accepted bounce for a tag; false when the tag is over its cap for this window. */
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
