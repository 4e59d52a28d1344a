/**
 * Closing an in-process test proxy without leaving temp directories behind: testConfig() (helpers/proxy.ts)
 * makes a fresh capture directory for each listener whether or not a next hop is set; this removes them.
 *
 * @example
 *   const { proxy } = await startTestProxy({ outbound: { relay: `smtp://127.0.0.1:${sink.port}` } });
 *   // ...
 *   await closeTestProxy(proxy);
 */
import { rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Proxy } from '../../src/proxy.js';

export async function closeTestProxy(proxy: Proxy, graceMs = 100): Promise<void> {
  const { config } = proxy.state();
  await proxy.close(graceMs);
  for (const dir of [config.outbound.captureDir, config.inbound.captureDir]) {
    if (path.dirname(dir) === os.tmpdir() && /^batv-(out|in)-/.test(path.basename(dir))) rmSync(dir, { recursive: true, force: true });
  }
}
