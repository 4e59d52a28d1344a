/**
 * The metrics endpoint: /metrics (Prometheus text), /healthz (the process is up), /readyz (a signing key
 * is loaded and the next hops answer SMTP; 503 with the problems otherwise).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseListen } from './config.js';
import type { Metrics } from './metrics.js';

export interface MetricsServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

export async function startMetricsServer(listen: string, metrics: Metrics, ready: () => Promise<string[]>): Promise<MetricsServer> {
  const l = parseListen(listen);
  if (typeof l === 'string') throw new Error(`metrics.listen: ${l}`);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/metrics') {
      metrics.registry.metrics().then(
        (text) => { res.writeHead(200, { 'content-type': metrics.registry.contentType }); res.end(text); },
        (e: Error) => { res.writeHead(500); res.end(e.message); },
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
    } else if (url === '/readyz') {
      ready().then((problems) => {
        res.writeHead(problems.length ? 503 : 200, { 'content-type': 'text/plain' });
        res.end(problems.length ? `${problems.join('\n')}\n` : 'ready\n');
      }, (e: Error) => { res.writeHead(503); res.end(`${e.message}\n`); });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`Cannot listen on ${listen}: ${e.message}`)));
    server.listen(l.port, l.host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: { host: a.address, port: a.port },
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}
