/**
 * What the status page shows of the traffic: the latest refusals and would-refusals (a bounded ring,
 * fed by each finished transaction) and counts over time (minute buckets, fed by sampling the Prometheus
 * counters, so refusals made before any transaction exists, at connect or at MAIL, are counted too).
 * Pure apart from the injected Clock; `sample` reads the counters it is given.
 */
import type { Clock } from '../clock.js';
import type { Transaction } from '../transaction.js';
import { Ring } from './ring.js';
import { TimeBuckets } from './buckets.js';

export interface RecentEvent {
  /** Epoch ms the transaction ended. */
  readonly time: number;
  readonly kind: 'refused' | 'would-refuse';
  readonly role: 'outbound' | 'inbound';
  readonly id: string;
  readonly client: string;
  readonly sender: string;
  readonly rcpt: string;
  /** The verdict or refusal reason, e.g. "batv-bad-signature", "untagged-bounce-grace". */
  readonly verdict: string;
  /** The DATA classifier's result for an untagged bounce ("dsn: ..."), when it ran. */
  readonly classified: string | null;
  /** The exact reply line the client got. */
  readonly reply: string;
}

/** A labelled counter to sample: its current values (prom-client's `Counter.get()` has this shape). */
export interface Sampled {
  get(): Promise<{ values: ReadonlyArray<{ value: number; labels: Readonly<Record<string, string | number | undefined>> }> }>;
}

/** The counters sampled, by the key prefix they get in the buckets. */
export interface SampledCounters {
  /** batv_proxy_outbound_senders_total{result,scheme} → "signed:<scheme>" / "unsigned:<result>" */
  readonly senders: Sampled;
  /** batv_proxy_inbound_verdicts_total{result,reason} → "accepted:<reason>" / "refused:<reason>" */
  readonly verdicts: Sampled;
  /** batv_proxy_refusals_total{role,reason} → "refusal:<role>/<reason>" */
  readonly refusals: Sampled;
  /** batv_proxy_would_refuse_total{reason} → "would:<reason>" */
  readonly wouldRefuse: Sampled;
  /** batv_proxy_rate_limited_total{kind} → "limited:<kind>" */
  readonly rateLimited: Sampled;
}

export interface Counts {
  readonly signed: Record<string, number>;
  readonly unsigned: Record<string, number>;
  readonly accepted: Record<string, number>;
  readonly refused: Record<string, number>;
  readonly refusals: Record<string, number>;
  readonly rateLimited: Record<string, number>;
  readonly wouldRefuse: Record<string, number>;
}

export interface Chart {
  /** Start of each point, epoch ms. */
  readonly starts: number[];
  readonly stepMs: number;
  /** Inbound recipients accepted (all verdicts). */
  readonly accepted: number[];
  /** Inbound recipients refused plus refusals at connect or MAIL (rate limits, DNSBL). */
  readonly refused: number[];
  /** Would have been refused, had the grace period not been running. */
  readonly wouldRefuse: number[];
}

const COUNTERS = ['senders', 'verdicts', 'refusals', 'wouldRefuse', 'rateLimited'] as const satisfies ReadonlyArray<keyof SampledCounters>;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const PREFIX: Record<string, keyof Counts> = { signed: 'signed', unsigned: 'unsigned', accepted: 'accepted', refused: 'refused', refusal: 'refusals', limited: 'rateLimited', would: 'wouldRefuse' };
/** A reply line starting 4xx or 5xx (a 2xx or 3xx, or none, is not a refusal); looked at per recipient. */
const isRefusal = (reply: string | undefined): reply is string => {
  if (typeof reply !== 'string' || reply.length < 4) return false;
  const c = reply.charCodeAt(0);
  const sep = reply.charCodeAt(3);
  return (c === 0x34 || c === 0x35) && isDigit(reply.charCodeAt(1)) && isDigit(reply.charCodeAt(2)) && (sep === 0x20 || sep === 0x2d);
};
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

function keyOf(counter: keyof SampledCounters, labels: Readonly<Record<string, string | number | undefined>>): string {
  const l = (k: string) => String(labels[k] ?? '');
  switch (counter) {
    case 'senders': return l('result') === 'signed' ? `signed:${l('scheme')}` : `unsigned:${l('result')}`;
    case 'verdicts': return `${l('result') === 'accepted' ? 'accepted' : 'refused'}:${l('reason')}`;
    case 'refusals': return `refusal:${l('role')}/${l('reason')}`;
    case 'wouldRefuse': return `would:${l('reason')}`;
    case 'rateLimited': return `limited:${l('kind')}`;
  }
}

export interface StatusBookOptions {
  readonly clock: Clock;
  readonly counters: SampledCounters;
  /** Latest events kept (default 200). */
  readonly recent?: number;
  /** Buckets (default one a minute for a day). */
  readonly buckets?: { stepMs?: number; count?: number };
}

export class StatusBook {
  private readonly clock: Clock;
  private readonly counters: SampledCounters;
  private readonly ring: Ring<RecentEvent>;
  readonly buckets: TimeBuckets;
  /** Counter values at the last sample, by bucket key. */
  private last = new Map<string, number>();
  private sampling: Promise<void> | null = null;

  constructor(opts: StatusBookOptions) {
    this.clock = opts.clock;
    this.counters = opts.counters;
    this.ring = new Ring(opts.recent ?? 200);
    this.buckets = new TimeBuckets(opts.buckets);
  }

  /** Takes the refusals and would-refusals of a finished transaction into the ring. */
  transaction(txn: Omit<Transaction, 'rt'>, _outcome: string): void {
    const f = txn.fields;
    const base = {
      time: this.clock.now(),
      role: txn.role,
      id: txn.id,
      client: String(f.client ?? ''),
      sender: txn.sender,
      classified: typeof f.classified === 'string' ? f.classified : null,
    };
    const dataReply = typeof f.data_reply === 'string' ? f.data_reply : undefined;
    for (const r of txn.rcpts) {
      const verdict = r.verdict ?? '';
      if (isRefusal(r.reply)) this.ring.push({ ...base, kind: 'refused', rcpt: r.rcpt, verdict, reply: r.reply });
      else if (f.would_refuse === true || verdict === 'untagged-bounce-grace') {
        this.ring.push({ ...base, kind: 'would-refuse', rcpt: r.rcpt, verdict, reply: dataReply ?? r.reply ?? '' });
      } else if (base.classified !== null && isRefusal(dataReply)) {
        // Accepted at RCPT, refused at the end of DATA (an untagged delivery-status report).
        this.ring.push({ ...base, kind: 'refused', rcpt: r.rcpt, verdict, reply: dataReply });
      }
    }
  }

  /** The latest events, newest first. */
  recent(): RecentEvent[] {
    return this.ring.newestFirst();
  }

  /**
   * Reads the counters and puts what they grew by since the last sample into the current bucket.
   * Concurrent calls share one read.
   */
  sample(): Promise<void> {
    this.sampling ??= (async () => {
      try {
        const now = this.clock.now();
        const next = new Map<string, number>();
        for (const name of COUNTERS) {
          for (const v of (await this.counters[name].get()).values) {
            const key = keyOf(name, v.labels);
            next.set(key, (next.get(key) ?? 0) + v.value);
          }
        }
        for (const [key, value] of next) {
          const before = this.last.get(key) ?? 0;
          // A counter below its last value was reset: all of it is new.
          this.buckets.add(now, key, value >= before ? value - before : value);
        }
        this.last = next;
      } finally {
        this.sampling = null;
      }
    })();
    return this.sampling;
  }

  /** Counts over the last `windowMs` (by whole buckets), grouped as the page shows them. */
  counts(windowMs: number): Counts {
    const now = this.clock.now();
    const out: Counts = { signed: {}, unsigned: {}, accepted: {}, refused: {}, refusals: {}, rateLimited: {}, wouldRefuse: {} };
    for (const [key, n] of Object.entries(this.buckets.totals(now - windowMs + this.buckets.stepMs, now))) {
      const at = key.indexOf(':');
      const group = PREFIX[key.slice(0, at)];
      if (group && n > 0) out[group][key.slice(at + 1)] = n;
    }
    return out;
  }

  hour(): Counts { return this.counts(HOUR_MS); }
  day(): Counts { return this.counts(DAY_MS); }

  /** Acceptances, refusals and would-refusals over the last day, `groupMs` a point. */
  chart(groupMs = 10 * 60_000, windowMs = DAY_MS): Chart {
    const points = Math.max(1, Math.ceil(windowMs / groupMs));
    const s = this.buckets.series(this.clock.now(), points, groupMs, (k) => {
      if (k.startsWith('accepted:')) return 'accepted';
      if (k.startsWith('refused:') || k === 'refusal:inbound/dnsbl' || k === 'limited:client') return 'refused';
      if (k.startsWith('would:')) return 'wouldRefuse';
      return null;
    });
    const zero = () => new Array<number>(points).fill(0);
    return { starts: s.starts, stepMs: groupMs, accepted: s.values.accepted ?? zero(), refused: s.values.refused ?? zero(), wouldRefuse: s.values.wouldRefuse ?? zero() };
  }
}
