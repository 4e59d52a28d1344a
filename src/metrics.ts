/**
 * Prometheus metrics (prom-client), one registry per proxy instance so tests can run several.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  const r = [registry];
  /** Sets the key-age gauge at each scrape (setKeyAges), so the ages grow while the proxy runs. */
  let keyAges: ((g: Gauge) => void) | null = null;
  return {
    /** Called with the key-age gauge at every scrape: it resets and sets one value per key. */
    setKeyAges(fn: (g: Gauge) => void): void {
      keyAges = fn;
    },
    registry,
    senders: new Counter({ name: 'batv_proxy_outbound_senders_total', help: 'Outbound senders by result (signed, unchanged, exempt, refused) and scheme', labelNames: ['result', 'scheme'], registers: r }),
    overlong: new Counter({ name: 'batv_proxy_overlong_tags_total', help: 'Tags that pushed a local part over 64 octets', registers: r }),
    verdicts: new Counter({ name: 'batv_proxy_inbound_verdicts_total', help: 'Inbound recipient verdicts by verdict or refusal reason', labelNames: ['result', 'reason'], registers: r }),
    wouldRefuse: new Counter({ name: 'batv_proxy_would_refuse_total', help: 'Untagged bounces let through during the grace period that would have been refused', labelNames: ['reason'], registers: r }),
    refusals: new Counter({ name: 'batv_proxy_refusals_total', help: 'Every 4xx/5xx reply the proxy itself gave a client (not a next hop\'s, passed through), by role and kind of reply', labelNames: ['role', 'reason'], registers: r }),
    nextHopFailures: new Counter({ name: 'batv_proxy_nexthop_failures_total', help: 'Next-hop transport failures by stage and kind', labelNames: ['role', 'stage', 'kind'], registers: r }),
    dnsbl: new Counter({ name: 'batv_proxy_dnsbl_lookups_total', help: 'DNSBL lookups by result (listed, clean, timeout, error)', labelNames: ['result'], registers: r }),
    rateLimited: new Counter({ name: 'batv_proxy_rate_limited_total', help: 'Abuse-limit refusals by kind (client, tag)', labelNames: ['kind'], registers: r }),
    transactions: new Counter({ name: 'batv_proxy_transactions_total', help: 'Transactions by role and outcome', labelNames: ['role', 'outcome'], registers: r }),
    stageSeconds: new Histogram({ name: 'batv_proxy_stage_seconds', help: 'Next-hop latency per stage', labelNames: ['role', 'stage'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: r }),
    connections: new Gauge({ name: 'batv_proxy_active_connections', help: 'Open client connections', labelNames: ['role'], registers: r }),
    keyAge: new Gauge({ name: 'batv_proxy_key_age_days', help: 'Age of each key in days, at the time of the scrape', labelNames: ['key', 'status'], registers: r, collect() { keyAges?.(this); } }),
    sharedStateFallback: new Gauge({ name: 'batv_proxy_shared_state_fallback', help: '1 while state.redis is configured but unavailable and local limits are used, else 0', registers: r }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
