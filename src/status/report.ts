/**
 * The document /status.json serves: listeners and their next hops, the keyring, counts over the last
 * hour and day, a chart series and the latest refusals. Addresses appear in it: serve it only where
 * the metrics listener is protected (loopback, or a token / users file).
 */
import type { Clock } from '../clock.js';
import { MS_PER_DAY } from '../clock.js';
import { thumbprint, type StoredKey } from '../keys.js';
import type { Chart, Counts, RecentEvent, StatusBook } from './book.js';
import type { ProbeResult } from './probe.js';

export interface ListenerInfo {
  readonly name: 'outbound' | 'inbound';
  /** host:port it listens on. */
  readonly address: string;
  /** The next hop's URL (the internal capture hop's when mail is captured). */
  readonly nextHop: string;
  /** The capture folder when no next hop is configured, else null. */
  readonly capture: string | null;
}

/** What the proxy tells the status page about itself; read at each request (reloads show). */
export interface StatusSource {
  readonly book: StatusBook;
  listeners(): readonly ListenerInfo[];
  keys(): readonly StoredKey[];
  /** inbound.graceUntil (ISO 8601) or null. */
  graceUntil(): string | null;
  hostname(): string;
}

export interface StatusReport {
  readonly now: string;
  readonly hostname: string;
  readonly listeners: ReadonlyArray<ListenerInfo & { answers: boolean; problem: string | null }>;
  readonly probedAt: string;
  readonly problems: readonly string[];
  readonly keys: ReadonlyArray<{ num: number; thumbprint: string; status: string; created: string | null; ageDays: number | null; activateAt: string | null; demoted: string | null; origin: string | null }>;
  readonly grace: { until: string | null; active: boolean };
  readonly counts: { hour: Counts; day: Counts };
  readonly chart: Chart;
  readonly recent: ReadonlyArray<Omit<RecentEvent, 'time'> & { time: string }>;
}

const iso = (ms: number) => new Date(ms).toISOString();

export async function statusReport(src: StatusSource, probe: () => Promise<ProbeResult>, clock: Clock): Promise<StatusReport> {
  const [p] = await Promise.all([probe(), src.book.sample()]);
  const now = clock.now();
  const grace = src.graceUntil();
  const seen = new Set<string>();
  const listeners = src.listeners().map((l) => {
    const problem = p.problems.find((x) => x.startsWith(`${l.nextHop}: `));
    if (problem) seen.add(problem);
    return { ...l, answers: problem === undefined, problem: problem ? problem.slice(l.nextHop.length + 2) : null };
  });
  const keys = await Promise.all(src.keys().map(async (k) => {
    const created = Date.parse(k.created);
    // Scheduled activation: an optional field a keyring may carry (shown when present).
    const activateAt = (k as { activateAt?: unknown }).activateAt;
    return {
      num: k.num,
      thumbprint: await thumbprint(k.secret),
      status: k.status,
      created: Number.isNaN(created) ? null : k.created,
      ageDays: Number.isNaN(created) ? null : Math.floor((now - created) / MS_PER_DAY),
      activateAt: typeof activateAt === 'string' ? activateAt : null,
      demoted: k.demoted ?? null,
      origin: k.origin ?? null,
    };
  }));
  return {
    now: iso(now),
    hostname: src.hostname(),
    listeners,
    probedAt: iso(p.at),
    problems: p.problems.filter((x) => !seen.has(x)),
    keys,
    grace: { until: grace, active: grace !== null && now < Date.parse(grace) },
    counts: { hour: src.book.hour(), day: src.book.day() },
    chart: src.book.chart(),
    recent: src.book.recent().map((e) => ({ ...e, time: iso(e.time) })),
  };
}
