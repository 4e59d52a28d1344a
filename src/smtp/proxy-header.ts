/**
 * The HAProxy PROXY protocol header, versions 1 (text) and 2 (binary), as a load balancer in front of
 * the proxy sends it before the first SMTP byte (docs/architecture.md, "Behind a load balancer").
 * smtp-server reads only version 1, and HAProxy's `send-proxy-v2` is what operators configure, so the
 * listener reads the header itself (src/smtp/listener.ts) and hands smtp-server the client's address.
 * Pure: bytes in, a verdict out.
 *
 * Version 1: "PROXY TCP4|TCP6 <src> <dst> <srcport> <dstport>\r\n" or "PROXY UNKNOWN...\r\n", at most
 * 107 bytes. Version 2: the 12-byte signature, a version/command byte (0x20 LOCAL, 0x21 PROXY), a
 * family/transport byte (0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 unspecified), a 16-bit length, then
 * the addresses and ports and optional TLVs (skipped). LOCAL (a health check of the balancer itself),
 * UNKNOWN and an unspecified family carry no client: the connection's own address stays in use.
 * Anything else (another version, UDP or unix sockets, a bad address) is refused: the connection is
 * closed rather than attributed to the wrong client.
 */
import { isIPv4, isIPv6, SocketAddress } from 'node:net';

export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_MAX = 107;
/** The most a version 2 header may carry after its first 16 bytes (addresses and TLVs); more is refused. */
export const PROXY_V2_MAX_BODY = 1024;

/** The client the header names, or none (LOCAL, UNKNOWN, unspecified family: use the socket's). */
export type ProxyClient = { readonly address: string; readonly port: number } | null;

export type ProxyParse =
  | { readonly kind: 'more' } // not a whole header yet
  | { readonly kind: 'invalid'; readonly why: string }
  | { readonly kind: 'header'; readonly version: 1 | 2; readonly client: ProxyClient; readonly length: number };

const MORE: ProxyParse = { kind: 'more' };
const invalid = (why: string): ProxyParse => ({ kind: 'invalid', why });

/** Reads a PROXY header at the start of `buf` (what the connection sent so far). */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  if (buf.length === 0) return MORE;
  if (buf[0] === 0x0d) return parseV2(buf);
  if (buf[0] === 0x50) return parseV1(buf); // "P"
  return invalid('not a PROXY protocol header');
}

function parseV1(buf: Buffer): ProxyParse {
  const prefix = 'PROXY ';
  for (let i = 0; i < Math.min(buf.length, prefix.length); i++) if (buf[i] !== prefix.charCodeAt(i)) return invalid('not a PROXY protocol header');
  const lf = buf.indexOf(0x0a);
  if (lf < 0) return buf.length >= V1_MAX ? invalid(`version 1 header longer than ${V1_MAX} bytes`) : MORE;
  if (lf + 1 > V1_MAX) return invalid(`version 1 header longer than ${V1_MAX} bytes`);
  if (buf[lf - 1] !== 0x0d) return invalid('version 1 header does not end in CRLF');
  const line = buf.toString('latin1', 0, lf - 1);
  const f = line.split(' ');
  const length = lf + 1;
  if (f[1] === 'UNKNOWN') return { kind: 'header', version: 1, client: null, length };
  if (f.length !== 6) return invalid('version 1 header needs protocol, two addresses and two ports');
  const [, proto, src, dst, sport, dport] = f as [string, string, string, string, string, string];
  const isFamily = proto === 'TCP4' ? isIPv4 : proto === 'TCP6' ? isIPv6 : null;
  if (!isFamily) return invalid(`version 1 protocol "${proto}" is not TCP4, TCP6 or UNKNOWN`);
  if (!isFamily(src) || !isFamily(dst)) return invalid(`version 1 addresses are not ${proto} addresses`);
  const port = v1Port(sport);
  if (port === null || v1Port(dport) === null) return invalid('version 1 ports must be decimal numbers from 0 to 65535');
  return { kind: 'header', version: 1, client: { address: src.toLowerCase(), port }, length };
}

function v1Port(s: string): number | null {
  if (!/^(0|[1-9]\d{0,4})$/.test(s)) return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

function parseV2(buf: Buffer): ProxyParse {
  const have = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  if (buf.compare(PROXY_V2_SIGNATURE, 0, have, 0, have) !== 0) return invalid('not a PROXY protocol header');
  if (buf.length < 16) return MORE;
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return invalid(`version 2 signature with version ${verCmd >> 4}`);
  const command = verCmd & 0x0f;
  if (command !== 0 && command !== 1) return invalid(`version 2 command ${command} is neither LOCAL nor PROXY`);
  const famProto = buf[13]!;
  const bodyLength = buf.readUInt16BE(14);
  if (bodyLength > PROXY_V2_MAX_BODY) return invalid(`version 2 header of ${bodyLength} bytes is above the ${PROXY_V2_MAX_BODY} this listener reads`);
  const length = 16 + bodyLength;
  if (buf.length < length) return MORE;
  if (command === 0 || famProto === 0x00) return { kind: 'header', version: 2, client: null, length };
  if (famProto === 0x11) {
    if (bodyLength < 12) return invalid('version 2 TCP over IPv4 with fewer than 12 address bytes');
    const address = `${buf[16]}.${buf[17]}.${buf[18]}.${buf[19]}`;
    return { kind: 'header', version: 2, client: { address, port: buf.readUInt16BE(24) }, length };
  }
  if (famProto === 0x21) {
    if (bodyLength < 36) return invalid('version 2 TCP over IPv6 with fewer than 36 address bytes');
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(16 + 2 * i).toString(16));
    // node's SocketAddress writes the canonical (RFC 5952) text, as inet_ntop does.
    const address = new SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
    return { kind: 'header', version: 2, client: { address, port: buf.readUInt16BE(48) }, length };
  }
  return invalid(`version 2 family/transport 0x${famProto.toString(16).padStart(2, '0')} is not TCP over IPv4 or IPv6`);
}
