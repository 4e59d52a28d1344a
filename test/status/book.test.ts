/**
 * The status book: refusal rows from finished transactions (exact reply lines), would-refusals during the
 * grace period, counts sampled from the real prom-client counters (refusals made at connect or MAIL
 * included) over the last hour and day, and the cached readiness probe.
 */
import { describe, expect, it } from 'vitest';
import { fixedClock } from '../../src/clock.js';
import { createMetrics } from '../../src/metrics.js';
import type { Transaction } from '../../src/transaction.js';
import { StatusBook } from '../../src/status/book.js';
import { cachedProbe } from '../../src/status/probe.js';

const T = Date.parse('2026-01-01T12:00:00Z');
const MIN = 60_000;

function txn(over: Partial<Omit<Transaction, 'rt'>> & { fields?: Record<string, unknown> }): Omit<Transaction, 'rt'> {
  return {
    id: 'ABC000001', role: 'inbound', sender: '', params: [], rewritten: '', hop: null, rcpts: [], accepted: 0, startedMs: T, done: true, utf8: false,
    ...over,
    fields: { client: '192.0.2.7', ...over.fields },
  };
}

describe('StatusBook: latest refusals', () => {
  it('a recipient refused at RCPT becomes a row with its exact reply line; accepted ones do not', () => {
    const clock = fixedClock(T);
    const book = new StatusBook({ clock, counters: createMetrics() });
    book.transaction(txn({
      rcpts: [
        { rcpt: 'prvs=0461000000=alice@example.com', to: 'prvs=0461000000=alice@example.com', verdict: 'batv-bad-signature', reply: '550 5.7.1 <prvs=0461000000=alice@example.com>: BATV signature invalid' },
        { rcpt: 'bob@example.com', to: 'bob@example.com', verdict: 'untagged', reply: '250 Accepted' },
      ],
    }), 'client-left');
    expect(book.recent()).toEqual([{
      time: T, kind: 'refused', role: 'inbound', id: 'ABC000001', client: '192.0.2.7', sender: '', rcpt: 'prvs=0461000000=alice@example.com',
      verdict: 'batv-bad-signature', classified: null, reply: '550 5.7.1 <prvs=0461000000=alice@example.com>: BATV signature invalid',
    }]);
  });

  it('a bounce let through by the grace period is a would-refuse row; a DATA refusal of a classified DSN is a refused row', () => {
    const clock = fixedClock(T);
    const book = new StatusBook({ clock, counters: createMetrics() });
    book.transaction(txn({ id: 'A1', rcpts: [{ rcpt: 'carol@example.com', to: 'carol@example.com', verdict: 'untagged-bounce-classify', reply: '250 Accepted' }], fields: { classified: 'dsn: multipart/report; report-type=delivery-status', would_refuse: true, data_reply: '250 Ok: queued' } }), 'delivered');
    clock.advance(1000);
    book.transaction(txn({ id: 'A2', rcpts: [{ rcpt: 'dave@example.com', to: 'dave@example.com', verdict: 'untagged-bounce-classify', reply: '250 Accepted' }], fields: { classified: 'dsn: multipart/report; report-type=delivery-status', data_reply: '550 5.7.1 Delivery status report for a message we never sent' } }), 'data-refused');
    expect(book.recent().map((e) => [e.id, e.kind, e.rcpt, e.reply])).toEqual([
      ['A2', 'refused', 'dave@example.com', '550 5.7.1 Delivery status report for a message we never sent'],
      ['A1', 'would-refuse', 'carol@example.com', '250 Ok: queued'],
    ]);
  });

  it('keeps at most `recent` rows', () => {
    const book = new StatusBook({ clock: fixedClock(T), counters: createMetrics(), recent: 5 });
    for (let i = 0; i < 50; i++) book.transaction(txn({ id: `X${i}`, rcpts: [{ rcpt: 'x@example.com', to: 'x@example.com', verdict: 'batv-missing', reply: '550 5.7.1 no' }] }), 'client-left');
    expect(book.recent().map((e) => e.id)).toEqual(['X49', 'X48', 'X47', 'X46', 'X45']);
  });
});

describe('StatusBook: counts sampled from the counters', () => {
  it('counts what each counter grew by, per minute, over the last hour and the last day', async () => {
    const clock = fixedClock(T);
    const metrics = createMetrics();
    const book = new StatusBook({ clock, counters: metrics });
    metrics.senders.inc({ result: 'signed', scheme: 'batv' }, 3);
    metrics.senders.inc({ result: 'exempt', scheme: 'none' });
    metrics.verdicts.inc({ result: 'refused', reason: 'batv-bad-signature' }, 2);
    metrics.rateLimited.inc({ kind: 'client' }); // cooling off at connect: no transaction
    metrics.refusals.inc({ role: 'inbound', reason: 'dnsbl' }); // at MAIL: no transaction
    await book.sample();
    clock.advance(2 * 60 * MIN); // two hours later
    metrics.verdicts.inc({ result: 'accepted', reason: 'batv-valid' });
    metrics.verdicts.inc({ result: 'refused', reason: 'batv-bad-signature' });
    metrics.wouldRefuse.inc({ reason: 'untagged-dsn' });
    await book.sample();
    await book.sample(); // nothing new: adds nothing
    expect(book.hour()).toEqual({ signed: {}, unsigned: {}, accepted: { 'batv-valid': 1 }, refused: { 'batv-bad-signature': 1 }, refusals: {}, rateLimited: {}, wouldRefuse: { 'untagged-dsn': 1 } });
    expect(book.day()).toEqual({
      signed: { batv: 3 }, unsigned: { exempt: 1 }, accepted: { 'batv-valid': 1 }, refused: { 'batv-bad-signature': 3 },
      refusals: { 'inbound/dnsbl': 1 }, rateLimited: { client: 1 }, wouldRefuse: { 'untagged-dsn': 1 },
    });
    const c = book.chart();
    expect(c.starts.length).toBe(144);
    expect(c.starts.at(-1)).toBe(T + 2 * 60 * MIN);
    expect([c.accepted.at(-1), c.refused.at(-1), c.wouldRefuse.at(-1)]).toEqual([1, 1, 1]);
    // refused at T: 2 recipients, 1 DNSBL refusal, 1 cooling off
    expect(c.refused[c.starts.indexOf(T)]).toBe(4);
    clock.advance(24 * 60 * MIN);
    expect(book.day()).toEqual({ signed: {}, unsigned: {}, accepted: {}, refused: {}, refusals: {}, rateLimited: {}, wouldRefuse: {} });
  });
});

describe('cachedProbe', () => {
  it('runs the probe at most once per ttl; callers in between share its result', async () => {
    const clock = fixedClock(T);
    let runs = 0;
    const probe = cachedProbe(async () => { runs++; return runs === 1 ? [] : ['smtp://127.0.0.1:1: down']; }, clock, 5000);
    expect(await Promise.all([probe(), probe()])).toEqual([{ problems: [], at: T }, { problems: [], at: T }]);
    clock.advance(4999);
    expect(await probe()).toEqual({ problems: [], at: T });
    clock.advance(1);
    expect(await probe()).toEqual({ problems: ['smtp://127.0.0.1:1: down'], at: T + 5000 });
    expect(runs).toBe(2);
  });

  it('a probe that throws is reported as a problem', async () => {
    const probe = cachedProbe(async () => { throw new Error('boom'); }, fixedClock(T));
    expect(await probe()).toEqual({ problems: ['boom'], at: T });
  });
});
