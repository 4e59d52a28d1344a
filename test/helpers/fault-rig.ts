/**
 * A proxy whose outbound relay (or inbound mailbox host) is a scripted fake peer, with short timeouts so
 * every stall is over in well under a second, for fault-injection tests.
 *
 * The proxy opens one session to each next hop at start (to learn its extensions) and pools it; `startRig`
 * waits until that first session has settled (pooled, or failed and closed), so a test's first MAIL
 * always meets a known state.
 *
 * @example
 *   const rig = await startRig('outbound', { MAIL: '451 4.3.0 later' });
 *   const t = await rig.session();
 *   expect(await t.cmd('MAIL FROM:<a@example.com>')).toBe('451 4.3.0 later');
 *   await rig.close();
 */
import type { Proxy } from '../../src/proxy.js';
import type { Logger } from '../../src/log.js';
import { startFakePeer, type FakePeer, type PeerScript } from './fake-peer.js';
import { startTestProxy } from './proxy.js';
import { talk, type Talk } from './talk.js';

/** Short next-hop budgets: stalls cost at most 300/600 ms; the client is kept 2 s. */
export const FAULT_TIMEOUTS = { connectMs: 300, greetingMs: 300, commandMs: 300, dataMs: 600, clientIdleMs: 2000 } as const;

export type Role = 'outbound' | 'inbound';

export interface Rig {
  readonly role: Role;
  readonly peer: FakePeer;
  readonly proxy: Proxy;
  /** "127.0.0.1:<peer port>", as the proxy names the hop in its replies. */
  readonly hop: string;
  /** Connects to the role's listener, checks the greeting and says EHLO. */
  session(): Promise<Talk>;
  close(): Promise<void>;
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
}

export async function startRig(role: Role, script: PeerScript = {}, over: Record<string, unknown> = {}, opts: { log?: Logger } = {}): Promise<Rig> {
  const peer = await startFakePeer(script);
  const url = `smtp://127.0.0.1:${peer.port}`;
  const base: Record<string, unknown> = {
    timeouts: FAULT_TIMEOUTS,
    ...(role === 'outbound' ? { outbound: { relay: url } } : { inbound: { mailbox: url } }),
  };
  const merged = { ...base, ...over };
  if (over.outbound && role === 'outbound') merged.outbound = { relay: url, ...(over.outbound as object) };
  if (over.inbound && role === 'inbound') merged.inbound = { mailbox: url, ...(over.inbound as object) };
  const { proxy } = await startTestProxy(merged, opts.log ? { log: opts.log } : {});
  // Let the start-up session settle: pooled (idle) or failed (its connection closed).
  await until(() => peer.connections.length > 0, 2000);
  await until(() => proxy.pool.idleCount() > 0 || (peer.connections[0]?.isClosed ?? false), 2000);
  const port = role === 'outbound' ? proxy.outbound.port : proxy.inbound.port;
  return {
    role,
    peer,
    proxy,
    hop: `127.0.0.1:${peer.port}`,
    async session() {
      const t = talk(port);
      const g = await t.greeting;
      if (!g.startsWith('220 ')) throw new Error(`greeting: ${g}`);
      const e = await t.cmd('EHLO client.test');
      if (!e.startsWith('250')) throw new Error(`EHLO: ${e}`);
      return t;
    },
    async close() {
      await proxy.close(50);
      await peer.close();
    },
  };
}
