/**
 * The metrics endpoint: /metrics (Prometheus text), /healthz (the process is up), /readyz (a signing key
 * is loaded and the next hops answer SMTP; 503 with the problems otherwise), and the status page: /
 * (HTML), /status.json (what it polls), /assets/ (its CSS and script, and uPlot from node_modules).
 *
 * With access protection configured (metrics.token, metrics.tokenFile, metrics.usersFile) every path but
 * /healthz and /readyz answers 401 without valid credentials. Those two stay open because container
 * health checks and load-balancer probes cannot carry a secret; they reveal no mail addresses (only
 * "ok", or the next hops' URLs and why they do not answer).
 */
import { promises as fs } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from './clock.js';
import { parseListen } from './config.js';
import type { Metrics } from './metrics.js';
import type { Access } from './status/access.js';
import { PAGE_CSS, PAGE_HTML, PAGE_JS } from './status/page.js';
import { cachedProbe } from './status/probe.js';
import { statusReport, type StatusSource } from './status/report.js';

export interface MetricsServer {
  readonly address: { host: string; port: number };
  /** Whether anything has asked /readyz since the start (a load balancer or orchestrator is probing). */
  readonly readinessProbed: boolean;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  /** Serves the status page and /status.json when given. */
  readonly status?: StatusSource;
  /** Credentials required on every path but /healthz and /readyz. */
  readonly access?: Access;
  readonly clock?: Clock;
  /** How long the status page reuses one readiness probe (default 5 s). */
  readonly probeCacheMs?: number;
  /** issue 12: lines /readyz adds below "ready" without failing it (shared-state fallback). */
  readonly readyDetail?: () => string[];
}

/** How often the counters are sampled into the status page's minute buckets. */
const SAMPLE_MS = 60_000;

interface Asset { readonly type: string; readonly body: string | Buffer }

/** uPlot's files, found the way Node finds the package (also from an installed npm package). */
async function uplotAssets(): Promise<Record<string, Asset>> {
  const resolve = createRequire(import.meta.url).resolve;
  return {
    '/assets/uplot/uPlot.iife.min.js': { type: 'text/javascript; charset=utf-8', body: await fs.readFile(resolve('uplot/dist/uPlot.iife.min.js')) },
    '/assets/uplot/uPlot.min.css': { type: 'text/css; charset=utf-8', body: await fs.readFile(resolve('uplot/dist/uPlot.min.css')) },
  };
}

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

export async function startMetricsServer(listen: string, metrics: Metrics, ready: () => Promise<string[]>, opts: MetricsServerOptions = {}): Promise<MetricsServer> {
  const l = parseListen(listen);
  if (typeof l === 'string') throw new Error(`metrics.listen: ${l}`);
  const clock = opts.clock ?? systemClock;
  const status = opts.status;
  const access = opts.access;
  const probe = cachedProbe(ready, clock, opts.probeCacheMs ?? 5000);
  let probed = false;
  const assets: Record<string, Asset> = status ? {
    '/': { type: 'text/html; charset=utf-8', body: PAGE_HTML },
    '/index.html': { type: 'text/html; charset=utf-8', body: PAGE_HTML },
    '/assets/status.css': { type: 'text/css; charset=utf-8', body: PAGE_CSS },
    '/assets/status.js': { type: 'text/javascript; charset=utf-8', body: PAGE_JS },
    ...await uplotAssets(),
  } : {};

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse, url: string): Promise<void> => {
    if (url === '/metrics') {
      const text = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType });
      res.end(text);
    } else if (url === '/status.json' && status) {
      const body = JSON.stringify(await statusReport(status, probe, clock));
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8' });
      res.end(body);
    } else if (Object.hasOwn(assets, url)) {
      const a = assets[url]!;
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': a.type });
      res.end(req.method === 'HEAD' ? undefined : a.body);
    } else {
      res.writeHead(404);
      res.end();
    }
  };

  const server = http.createServer((req, res) => {
    // Names the program, so `doctor` recognises a running proxy's metrics listener.
    res.setHeader('server', 'batv-proxy');
    const url = (req.url ?? '/').split('?')[0]!;
    if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
    } else if (url === '/readyz') {
      probed = true;
      ready().then((problems) => {
        res.writeHead(problems.length ? 503 : 200, { 'content-type': 'text/plain' });
        res.end(problems.length ? `${problems.join('\n')}\n` : ['ready', ...(opts.readyDetail?.() ?? [])].join('\n') + '\n'); // issue 12: readyDetail
      }, (e: Error) => { res.writeHead(503); res.end(`${e.message}\n`); });
    } else if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' });
      res.end();
    } else {
      const allowed = access?.enabled ? access.check(req.headers.authorization, req.socket.remoteAddress ?? '') : Promise.resolve(true);
      allowed.then((ok) => {
        if (!ok) {
          res.writeHead(401, { 'www-authenticate': access!.challenge, 'content-type': 'text/plain' });
          res.end('authentication required\n');
          return undefined;
        }
        return handle(req, res, url);
      }).catch((e: Error) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`${e.message}\n`);
      });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`Cannot listen on ${listen}: ${e.message}`)));
    server.listen(l.port, l.host, () => resolve());
  });
  // Counts between two page loads still land in the right minute.
  const sampler = status ? setInterval(() => { status.book.sample().catch(() => undefined); }, SAMPLE_MS) : null;
  sampler?.unref();
  const a = server.address() as AddressInfo;
  return {
    address: { host: a.address, port: a.port },
    get readinessProbed() { return probed; },
    close: () => new Promise<void>((r) => {
      if (sampler) clearInterval(sampler);
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}
