/**
 * The status page in a real headless Chromium (Debian's /usr/bin/chromium driven by playwright-core; no
 * browser is downloaded): a proxy with a keyring on disk and its metrics listener on 127.0.0.1 port 0,
 * the page opened first, then a forged bounce refused over real SMTP and an untagged bounce let through
 * by the grace period. After a poll the page shows both rows with the exact reply lines, the keyring,
 * the counts and the chart, without a console error. The screenshot is kept in test/artifacts/.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initKeys, readKeys, thumbprint } from '../../src/keys.js';
import { startProxy, type Proxy } from '../../src/proxy.js';
import { startSink, type Sink } from '../helpers/sink.js';
import { talk } from '../helpers/talk.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';
import { testConfig, T0 } from '../helpers/proxy.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve(import.meta.dirname, '..', 'artifacts');
const SCREENSHOT = path.join(ARTIFACTS, 'status-page.png');
const FORGED = 'prvs=0461000000=alice@example.com';
const FORGED_REPLY = `550 5.7.1 <${FORGED}>: BATV signature invalid`;

describe('the status page in headless Chromium', () => {
  let dir: string;
  let sink: Sink;
  let proxy: Proxy;
  let browser: BrowserContext;
  let page: Page;
  let base: string;
  const consoleErrors: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'batv-status-page-'));
    sink = await startSink({ name: 'sink.test' });
    // Time runs on from T0, so tags made with T0's day stay valid and the chart moves.
    const started = Date.now();
    const clock = { now: () => T0 + (Date.now() - started) };
    await initKeys(path.join(dir, 'keys'), T0 - 3 * 86_400_000);
    proxy = await startProxy(testConfig({
      keys: { dir: path.join(dir, 'keys') },
      metrics: { listen: '127.0.0.1:0' },
      outbound: { relay: `smtp://127.0.0.1:${sink.port}` },
      inbound: { mailbox: `smtp://127.0.0.1:${sink.port}`, untaggedBounces: 'reject', graceUntil: '2026-01-15T00:00:00Z' },
    }), { clock });
    base = `http://127.0.0.1:${proxy.metricsAddress!.port}/`;
    browser = await chromium.launchPersistentContext(path.join(dir, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 900 },
    });
    page = browser.pages()[0] ?? await browser.newPage();
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(e.message));
    page.on('requestfailed', (r) => consoleErrors.push(`request failed: ${r.url()}`));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await closeTestProxy(proxy);
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('loads, then shows the refusal the test caused (exact reply line) after a poll, without console errors', async () => {
    const resp = await page.goto(base);
    expect(resp!.status()).toBe(200);
    // the first poll rendered (polled from the test: waitForFunction evaluates a string, which the page's
    // CSP, script-src 'self', rightly forbids)
    await expect.poll(() => page.evaluate(() => Number((globalThis as unknown as { document: { body: { dataset: { polls?: string } } } }).document.body.dataset.polls || 0)), { timeout: 10_000 }).toBeGreaterThanOrEqual(1);
    expect(await page.locator('#recent tbody').innerText()).toBe('none yet');

    // Over real SMTP: one signed message out, a forged bounce (refused), an untagged one (grace: let through).
    const out = talk(proxy.outbound.port);
    expect(await out.greeting).toMatch(/^220 /);
    expect(await out.cmd('EHLO client.test')).toMatch(/^250/);
    expect(await out.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await out.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    expect((await out.data('Subject: status page\r\n\r\nHello.\r\n')).end).toBe('250 Ok: queued as sink');
    await out.quit();
    const t = talk(proxy.inbound.port);
    expect(await t.greeting).toMatch(/^220 /);
    expect(await t.cmd('EHLO mx.elsewhere.test')).toMatch(/^250/);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd(`RCPT TO:<${FORGED}>`)).toBe(FORGED_REPLY);
    expect(await t.cmd('RSET')).toMatch(/^250/);
    expect(await t.cmd('MAIL FROM:<>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.com>')).toBe('250 Accepted');
    expect((await t.data('Subject: Undelivered Mail Returned to Sender\r\n\r\nYour message could not be delivered.\r\n')).end).toBe('250 Ok: queued as sink');
    await t.quit();

    const refusedRow = page.locator('#recent tbody tr', { hasText: FORGED });
    await refusedRow.waitFor({ timeout: 15_000 });
    expect(await refusedRow.locator('td').allInnerTexts()).toEqual([
      expect.stringMatching(/^2026-01-01 12:\d\d:\d\d$/), 'refused', '127.0.0.1', FORGED, 'batv-bad-signature', FORGED_REPLY,
    ]);
    const wouldRow = page.locator('#recent tbody tr', { hasText: 'bob@example.com' });
    await wouldRow.waitFor({ timeout: 15_000 });
    expect((await wouldRow.locator('td').allInnerTexts()).slice(1)).toEqual(['would-refuse', '127.0.0.1', 'bob@example.com', 'untagged-bounce-grace', '250 Ok: queued as sink']);

    // The rest of the page, from the same poll.
    expect(await page.locator('#mode').innerText()).toBe('Observing: untagged bounces that would be refused are let through and counted until 2026-01-15 00:00:00 UTC (inbound.graceUntil).');
    const listeners = await page.locator('#listeners tbody tr').allInnerTexts();
    expect(listeners).toEqual([
      `outbound\t127.0.0.1:${proxy.outbound.port}\tsmtp://127.0.0.1:${sink.port}\tanswers`,
      `inbound\t127.0.0.1:${proxy.inbound.port}\tsmtp://127.0.0.1:${sink.port}\tanswers`,
    ]);
    const keys = await readKeys(path.join(dir, 'keys'));
    expect(await page.locator('#keys tbody tr').allInnerTexts()).toEqual([`0\t${await thumbprint(keys[0]!.secret)}\tactive (signs)\t3 days\t—`]);
    const counts = await page.locator('#counts tbody tr').allInnerTexts();
    expect(counts).toContain('batv\t1\t1');
    expect(counts).toContain('Inbound recipients refused, by reason\t1\t1');
    expect(counts).toContain('batv-bad-signature\t1\t1');
    expect(counts).toContain('untagged-bounce\t1\t1'); // would-refuse, by reason
    expect(await page.locator('#chart canvas').count()).toBe(1);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(consoleErrors).toEqual([]);
  }, 60_000);

  it('serves uPlot from node_modules under /assets/uplot/ with a strict content security policy', async () => {
    const r = await fetch(`${base}assets/uplot/uPlot.iife.min.js`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(await r.text()).toContain('uPlot');
    const html = await fetch(base);
    expect(html.headers.get('content-security-policy')).toMatch(/^default-src 'none'; script-src 'self';/);
  });
});
