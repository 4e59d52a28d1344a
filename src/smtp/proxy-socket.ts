/**
 * The socket side of the PROXY protocol header (the bytes are read by src/smtp/proxy-header.ts): taken
 * off a new connection from a load balancer before smtp-server gets the socket (src/smtp/listener.ts).
 */
import type { Socket } from 'node:net';
import { parseProxyHeader, type ProxyClient } from './proxy-header.js';

/**
 * Reads the PROXY header (version 1 or 2) off the start of `socket` and leaves the bytes after it
 * unread for smtp-server; resolves with the client it names (null: LOCAL/UNKNOWN, the socket's own
 * address stays). Rejects on a refused header, a connection that ends first, or `timeoutMs` of waiting.
 */
export function takeProxyHeader(socket: Socket, timeoutMs: number): Promise<ProxyClient> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error('no PROXY header in time')), timeoutMs);
    const finish = (err: Error | null, client: ProxyClient = null, rest?: Buffer) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (err) return reject(err);
      if (rest && rest.length) socket.unshift(rest);
      resolve(client);
    };
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const r = parseProxyHeader(buf);
      if (r.kind === 'more') return;
      if (r.kind === 'invalid') return finish(new Error(r.why));
      finish(null, r.client, buf.subarray(r.length));
    };
    const onEnd = () => finish(new Error('connection ended before its PROXY header'));
    const onError = (e: Error) => finish(e);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
  });
}
