/**
 * An smtp-server next hop that accepts everything and only counts (no bodies kept), for long fuzz runs
 * where a recording sink would grow without bound and hide the proxy's own memory use.
 *
 * @example
 *   const sink = await startCountingSink();
 *   // ... relay through it ...
 *   expect(sink.accepted).toBe(repliesSeen);
 *   await sink.close();
 */
import type net from 'node:net';
import { SMTPServer } from 'smtp-server';

export interface CountingSink {
  readonly port: number;
  /** Messages accepted (250 sent after end of data). */
  readonly accepted: number;
  /** Bytes of message data received in total. */
  readonly bytes: number;
  close(): Promise<void>;
}

export async function startCountingSink(): Promise<CountingSink> {
  const state = { accepted: 0, bytes: 0 };
  const server = new SMTPServer({
    name: 'sink.test',
    disableReverseLookup: true,
    authOptional: true,
    logger: false,
    closeTimeout: 100,
    disabledCommands: ['STARTTLS', 'AUTH'],
    onData(stream, _session, cb) {
      stream.on('data', (c: Buffer) => { state.bytes += c.length; });
      stream.on('error', () => undefined);
      stream.on('end', () => {
        state.accepted += 1;
        cb(null, 'Ok: queued as sink');
      });
    },
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.server.address() as net.AddressInfo).port;
  return {
    port,
    get accepted() { return state.accepted; },
    get bytes() { return state.bytes; },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
