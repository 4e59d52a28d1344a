/**
 * The metrics endpoint after a scripted set of transactions: exact Prometheus lines for senders signed by
 * scheme, inbound verdicts, transactions by outcome, per-stage latency histograms, next-hop failures,
 * active connections and key age; /healthz and /readyz (200, and 503 naming the next hop that is down);
 * /status.json naming the listener whose next hop is down; the Docker image's listen defaults.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk, type Talk } from '../helpers/talk.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';
import { closedPort } from '../helpers/fake-peer.js';
import { startTestProxy, testConfig, testKeyring, T0 } from '../helpers/proxy.js';
import { fixedClock } from '../../src/clock.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { batvSign } from '../../src/tags/batv.js';

const ring = testKeyring();
const tag = (a: string): string => {
  const r = batvSign(a, ring.signing, T0);
  if (r.kind !== 'signed') throw new Error('not signed');
  return r.address;
};

async function get(proxy: Proxy, urlPath: string): Promise<{ status: number; type: string | null; body: string }> {
  const a = proxy.metricsAddress!;
  const r = await fetch(`http://${a.host}:${a.port}${urlPath}`);
  return { status: r.status, type: r.headers.get('content-type'), body: await r.text() };
}

/** The sample lines of one metric family (no # HELP / # TYPE). */
function samples(text: string, name: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

/** /metrics once `name` has the wanted samples (the server sees a QUIT's close a moment after the client), or after 2 s. */
async function metricsWhen(proxy: Proxy, name: string, want: string[]): Promise<string> {
  const deadline = Date.now() + 2000;
  for (;;) {
    const text = (await get(proxy, '/metrics')).body;
    if (JSON.stringify(samples(text, name)) === JSON.stringify(want) || Date.now() > deadline) return text;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function session(port: number): Promise<Talk> {
  const t = talk(port);
  expect(await t.greeting).toMatch(/^220 /);
  expect(await t.cmd('EHLO client.test')).toMatch(/^250/);
  return t;
}

async function deliver(port: number, from: string, to: string): Promise<void> {
  const t = await session(port);
  expect(await t.cmd(`MAIL FROM:<${from}>`)).toBe('250 Accepted');
  expect(await t.cmd(`RCPT TO:<${to}>`)).toBe('250 Accepted');
  expect((await t.data('Subject: metrics\r\n\r\nHello.\r\n')).end).toBe('250 Ok: queued as sink');
  await t.quit();
}

describe('/metrics after a scripted set of transactions', () => {
  let sink: Sink;
  let proxy: Proxy;
  let text: string;
  beforeAll(async () => {
    sink = await startSink();
    ({ proxy } = await startTestProxy({
      metrics: { listen: '127.0.0.1:0' },
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject' },
    }));
    await deliver(proxy.outbound.port, 'alice@example.com', 'bob@example.net'); // BATV
    await deliver(proxy.outbound.port, 'carol@elsewhere.example', 'bob@example.net'); // SRS0
    await deliver(proxy.inbound.port, '', tag('alice@example.com')); // a real bounce
    const forged = await session(proxy.inbound.port);
    expect(await forged.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await forged.cmd('RCPT TO:<prvs=0461000000=alice@example.com>')).toBe('550 5.7.1 <prvs=0461000000=alice@example.com>: BATV signature invalid');
    await forged.quit();
    await sink.waitForMessages(3);
    await metricsWhen(proxy, 'batv_proxy_transactions_total', [
      'batv_proxy_transactions_total{role="outbound",outcome="delivered"} 2',
      'batv_proxy_transactions_total{role="inbound",outcome="delivered"} 1',
      'batv_proxy_transactions_total{role="inbound",outcome="client-left"} 1',
    ]);
    const r = await get(proxy, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    text = r.body;
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('listens where proxy.metricsAddress says (127.0.0.1, a real port)', () => {
    expect(proxy.metricsAddress).toEqual({ host: '127.0.0.1', port: expect.any(Number) });
    expect(proxy.metricsAddress!.port).toBeGreaterThan(0);
  });

  it('declares every metric family the README lists, with its type', () => {
    const types = text.split('\n').filter((l) => l.startsWith('# TYPE ')).sort();
    expect(types).toEqual([
      '# TYPE batv_proxy_active_connections gauge',
      '# TYPE batv_proxy_dnsbl_lookups_total counter',
      '# TYPE batv_proxy_inbound_verdicts_total counter',
      '# TYPE batv_proxy_key_age_days gauge',
      '# TYPE batv_proxy_nexthop_failures_total counter',
      '# TYPE batv_proxy_outbound_senders_total counter',
      '# TYPE batv_proxy_overlong_tags_total counter',
      '# TYPE batv_proxy_rate_limited_total counter',
      '# TYPE batv_proxy_refusals_total counter',
      '# TYPE batv_proxy_shared_state_fallback gauge',
      '# TYPE batv_proxy_stage_seconds histogram',
      '# TYPE batv_proxy_transactions_total counter',
      '# TYPE batv_proxy_would_refuse_total counter',
    ]);
  });

  it('counts senders signed by scheme', () => {
    expect(samples(text, 'batv_proxy_outbound_senders_total')).toEqual([
      'batv_proxy_outbound_senders_total{result="signed",scheme="batv"} 1',
      'batv_proxy_outbound_senders_total{result="signed",scheme="srs0"} 1',
    ]);
    expect(samples(text, 'batv_proxy_overlong_tags_total')).toEqual(['batv_proxy_overlong_tags_total 0']);
  });

  it('counts inbound verdicts by result and reason', () => {
    expect(samples(text, 'batv_proxy_inbound_verdicts_total')).toEqual([
      'batv_proxy_inbound_verdicts_total{result="accepted",reason="batv-valid"} 1',
      'batv_proxy_inbound_verdicts_total{result="refused",reason="batv-bad-signature"} 1',
    ]);
  });

  it('counts transactions by role and outcome (the forged bounce\'s session ends as client-left)', () => {
    expect(samples(text, 'batv_proxy_transactions_total')).toEqual([
      'batv_proxy_transactions_total{role="outbound",outcome="delivered"} 2',
      'batv_proxy_transactions_total{role="inbound",outcome="delivered"} 1',
      'batv_proxy_transactions_total{role="inbound",outcome="client-left"} 1',
    ]);
    expect(samples(text, 'batv_proxy_nexthop_failures_total')).toEqual([]);
  });

  it('has a latency histogram per role and stage', () => {
    const counts = samples(text, 'batv_proxy_stage_seconds_count');
    expect(counts).toEqual([
      'batv_proxy_stage_seconds_count{role="outbound",stage="mail"} 2',
      'batv_proxy_stage_seconds_count{role="outbound",stage="rcpt"} 2',
      'batv_proxy_stage_seconds_count{role="outbound",stage="data"} 2',
      'batv_proxy_stage_seconds_count{role="inbound",stage="mail"} 1',
      'batv_proxy_stage_seconds_count{role="inbound",stage="rcpt"} 1',
      'batv_proxy_stage_seconds_count{role="inbound",stage="data"} 1',
    ]);
    for (const [role, stage, n] of [['outbound', 'mail', 2], ['outbound', 'data', 2], ['inbound', 'rcpt', 1]] as const) {
      expect(text).toContain(`batv_proxy_stage_seconds_bucket{le="+Inf",role="${role}",stage="${stage}"} ${n}\n`);
      expect(text).toMatch(new RegExp(`\\nbatv_proxy_stage_seconds_sum\\{role="${role}",stage="${stage}"\\} \\d+(\\.\\d+)?(e-\\d+)?\\n`));
    }
    const les = samples(text, 'batv_proxy_stage_seconds_bucket').filter((l) => l.includes('role="outbound",stage="mail"')).map((l) => /le="([^"]+)"/.exec(l)![1]);
    expect(les).toEqual(['0.001', '0.005', '0.01', '0.05', '0.1', '0.5', '1', '5', '30', '+Inf']);
  });

  it('shows open client connections per role', async () => {
    const t = await session(proxy.outbound.port);
    const during = (await get(proxy, '/metrics')).body;
    await t.quit();
    // The inbound series is present too once an inbound connection has come and gone (then at 0).
    expect(samples(during, 'batv_proxy_active_connections')).toContain('batv_proxy_active_connections{role="outbound"} 1');
    expect(samples(during, 'batv_proxy_active_connections').filter((l) => !l.includes('role="outbound"'))).toEqual(
      samples(during, 'batv_proxy_active_connections').filter((l) => l.includes('role="inbound"')).map(() => 'batv_proxy_active_connections{role="inbound"} 0'),
    );
  });

  it('/healthz is 200 "ok" and /readyz 200 "ready" while both next hops answer', async () => {
    expect(await get(proxy, '/healthz')).toEqual({ status: 200, type: 'text/plain', body: 'ok\n' });
    expect(await get(proxy, '/readyz')).toEqual({ status: 200, type: 'text/plain', body: 'ready\n' });
    expect(await get(proxy, '/nothing')).toMatchObject({ status: 404, body: '' });
  });
});

describe('/readyz and failure counters with the next hop down', () => {
  let sink: Sink;
  let proxy: Proxy;
  let port: number;
  beforeAll(async () => {
    sink = await startSink();
    port = await closedPort();
    ({ proxy } = await startTestProxy({
      metrics: { listen: '127.0.0.1:0' },
      outbound: { relay: `smtp://127.0.0.1:${port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}` },
    }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('/readyz is 503 and names the next hop and the problem; /healthz stays 200', async () => {
    expect(await get(proxy, '/readyz')).toEqual({
      status: 503,
      type: 'text/plain',
      body: `smtp://127.0.0.1:${port}: Next hop 127.0.0.1:${port} unreachable: connection refused\n`,
    });
    expect(await get(proxy, '/healthz')).toEqual({ status: 200, type: 'text/plain', body: 'ok\n' });
  });

  it('/status.json marks the listener whose next hop is down, with the reason, and the other as answering', async () => {
    const r = await get(proxy, '/status.json');
    expect(r).toMatchObject({ status: 200, type: 'application/json; charset=utf-8' });
    const s = JSON.parse(r.body) as { listeners: Array<Record<string, unknown>>; problems: string[] };
    expect(s.listeners.map(({ name, nextHop, answers, problem }) => ({ name, nextHop, answers, problem }))).toEqual([
      { name: 'outbound', nextHop: `smtp://127.0.0.1:${port}`, answers: false, problem: `Next hop 127.0.0.1:${port} unreachable: connection refused` },
      { name: 'inbound', nextHop: `smtp://127.0.0.1:${sink.port}`, answers: true, problem: null },
    ]);
    expect(s.problems).toEqual([]);
  });

  it('a MAIL the next hop cannot take is a 4xx for the client and a next-hop failure by stage (the transaction ends when the client leaves)', async () => {
    const t = await session(proxy.outbound.port);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toMatch(/^4\d\d 4\.4\.\d /);
    await t.quit();
    const text = await metricsWhen(proxy, 'batv_proxy_transactions_total', ['batv_proxy_transactions_total{role="outbound",outcome="client-left"} 1']);
    expect(samples(text, 'batv_proxy_nexthop_failures_total')).toEqual(['batv_proxy_nexthop_failures_total{role="outbound",stage="connect",kind="refused"} 1']);
    expect(samples(text, 'batv_proxy_transactions_total')).toEqual(['batv_proxy_transactions_total{role="outbound",outcome="client-left"} 1']);
  });
});

describe('the Docker image\'s defaults', () => {
  it('listen on all interfaces inside the container, metrics on 9425 where the HEALTHCHECK looks', () => {
    const dockerfile = readFileSync(path.join(import.meta.dirname, '..', '..', 'Dockerfile'), 'utf8');
    for (const v of ['BATV_PROXY_OUTBOUND__LISTEN=0.0.0.0:2525', 'BATV_PROXY_INBOUND__LISTEN=0.0.0.0:2526', 'BATV_PROXY_METRICS__LISTEN=0.0.0.0:9425']) expect(dockerfile).toContain(`    ${v} \\\n`);
    expect(dockerfile).toContain("fetch('http://127.0.0.1:9425/healthz')");
  });
});

describe('key age from a keyring on disk', () => {
  const clock = fixedClock(T0);
  let dir: string;
  let proxy: Proxy;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-metrics-keys-'));
    proxy = await startProxy(testConfig({ metrics: { listen: '127.0.0.1:0' }, keys: { dir } }), { clock });
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports each key\'s age in days', async () => {
    expect(samples((await get(proxy, '/metrics')).body, 'batv_proxy_key_age_days')).toEqual(['batv_proxy_key_age_days{key="0",status="active"} 0']);
  });

  it('the age grows while the proxy runs (worked out at each scrape, not at start or reload)', async () => {
    clock.set(T0 + 36 * 3_600_000);
    try {
      expect(samples((await get(proxy, '/metrics')).body, 'batv_proxy_key_age_days')).toEqual(['batv_proxy_key_age_days{key="0",status="active"} 1.5']);
    } finally {
      clock.set(T0);
    }
  });
});

describe('batv_proxy_refusals_total counts every refusal the proxy makes itself, once (issue 13.4)', () => {
  let sink: Sink;
  let proxy: Proxy;
  beforeAll(async () => {
    sink = await startSink({ refuseRecipients: { 'nobody@example.net': { code: 550, message: '5.1.1 No such user' } } });
    ({ proxy } = await startTestProxy({
      metrics: { listen: '127.0.0.1:0' },
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject' },
      limits: { maxMessageBytes: 2000 },
    }));
  });
  afterAll(async () => {
    await closeTestProxy(proxy);
    await sink.close();
  });

  it('by role and kind of reply; a next hop\'s refusal passed through is not the proxy\'s and is not counted', async () => {
    const inb = await session(proxy.inbound.port);
    expect(await inb.cmd('RCPT TO:<alice@example.com>')).toBe('503 Error: need MAIL command'); // smtp-server's own, not counted
    expect(await inb.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await inb.cmd('RCPT TO:<alice@example.com>')).toBe('550 5.7.1 <alice@example.com>: bounce to an address we never sent from (no BATV tag); backscatter refused');
    expect(await inb.cmd('RCPT TO:<prvs=0461000000=alice@example.com>')).toBe('550 5.7.1 <prvs=0461000000=alice@example.com>: BATV signature invalid');
    expect(await inb.cmd('RCPT TO:<someone@elsewhere.example>')).toBe('550 5.7.1 <someone@elsewhere.example>: relaying denied');
    await inb.quit();

    const out = await session(proxy.outbound.port);
    expect(await out.cmd('MAIL FROM:<alice@example.com> FOO=BAR')).toBe('555 5.5.4 Unsupported parameter FOO');
    expect(await out.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await out.cmd('RCPT TO:<nobody@example.net>')).toBe('550 5.1.1 No such user'); // the next hop's
    expect(await out.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await out.data(`Subject: big\r\n\r\n${'x'.repeat(3000)}\r\n`)).end).toBe('552 5.3.4 Message exceeds fixed maximum message size 2000');
    await out.quit();

    const text = await metricsWhen(proxy, 'batv_proxy_refusals_total', [
      'batv_proxy_refusals_total{role="inbound",reason="untagged-bounce"} 1',
      'batv_proxy_refusals_total{role="inbound",reason="batv-invalid"} 1',
      'batv_proxy_refusals_total{role="inbound",reason="not-our-domain"} 1',
      'batv_proxy_refusals_total{role="outbound",reason="unknown-parameter"} 1',
      'batv_proxy_refusals_total{role="outbound",reason="message-too-large"} 1',
    ]);
    expect(samples(text, 'batv_proxy_refusals_total')).toEqual([
      'batv_proxy_refusals_total{role="inbound",reason="untagged-bounce"} 1',
      'batv_proxy_refusals_total{role="inbound",reason="batv-invalid"} 1',
      'batv_proxy_refusals_total{role="inbound",reason="not-our-domain"} 1',
      'batv_proxy_refusals_total{role="outbound",reason="unknown-parameter"} 1',
      'batv_proxy_refusals_total{role="outbound",reason="message-too-large"} 1',
    ]);
  });
});
