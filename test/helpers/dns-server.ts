/**
 * A tiny authoritative DNS server for tests: UDP on 127.0.0.1, port chosen by the OS. It answers A and TXT
 * queries from a table with chosen TTLs, NXDOMAIN for names it does not know, NOERROR/no data for a known
 * name without the asked type, SERVFAIL for names marked so, and never answers names marked as stalled.
 * Every query received is recorded, so tests can count them.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';

/** Records of one name. */
export interface DnsRecords {
  a?: string[];
  txt?: string[];
  /** TTL in seconds for every record of this name (default 300). */
  ttl?: number;
}

/** One query as received. */
export interface ReceivedQuery {
  /** Lowercased query name without the trailing dot. */
  name: string;
  /** 'A', 'TXT', 'AAAA' or 'TYPE<n>'. */
  type: string;
}

export interface TestDnsServer {
  /** `127.0.0.1:<port>`, ready for `Resolver#setServers`. */
  readonly address: string;
  readonly port: number;
  /** Every query received, in order. */
  readonly queries: ReceivedQuery[];
  /** How many queries were received, optionally only for one name and/or type. */
  count(name?: string, type?: string): number;
  /** Adds or replaces the records of a name. */
  set(name: string, records: DnsRecords): void;
  /** Removes a name (it becomes NXDOMAIN). */
  remove(name: string): void;
  /** Never answer queries for this name (only of this type, e.g. 'TXT', when given) until `unstall`. */
  stall(name: string, type?: string): void;
  unstall(name: string): void;
  /** Answer SERVFAIL for this name. */
  servfail(name: string): void;
  close(): Promise<void>;
}

const TYPES: Record<number, string> = { 1: 'A', 16: 'TXT', 28: 'AAAA' };

function norm(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Reads the question's name, returning it and the offset just after it (no compression in questions). */
function readName(msg: Buffer, offset: number): { name: string; end: number } | null {
  const labels: string[] = [];
  let i = offset;
  for (;;) {
    const len = msg[i];
    if (len === undefined || len > 63) return null;
    i += 1;
    if (len === 0) break;
    if (i + len > msg.length) return null;
    labels.push(msg.toString('latin1', i, i + len));
    i += len;
  }
  return { name: labels.join('.'), end: i };
}

function rr(type: number, ttl: number, rdata: Buffer): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(0xc00c, 0); // pointer to the question name
  head.writeUInt16BE(type, 2);
  head.writeUInt16BE(1, 4); // IN
  head.writeUInt32BE(ttl >>> 0, 6);
  head.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([head, rdata]);
}

function txtRdata(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const parts: Buffer[] = [];
  for (let i = 0; i < bytes.length || parts.length === 0; i += 255) {
    const chunk = bytes.subarray(i, i + 255);
    parts.push(Buffer.from([chunk.length]), chunk);
  }
  return Buffer.concat(parts);
}

/** Starts the server; close it in `afterAll`/`afterEach`. */
export async function startDnsServer(initial: Record<string, DnsRecords> = {}): Promise<TestDnsServer> {
  const table = new Map<string, DnsRecords>();
  for (const [k, v] of Object.entries(initial)) table.set(norm(k), v);
  const stalled = new Set<string>();
  const failing = new Set<string>();
  const queries: ReceivedQuery[] = [];
  const sock: Socket = createSocket('udp4');

  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    if (msg.length < 12) return;
    const q = readName(msg, 12);
    if (!q || q.end + 4 > msg.length) return;
    const qtype = msg.readUInt16BE(q.end);
    const name = norm(q.name);
    queries.push({ name, type: TYPES[qtype] ?? `TYPE${qtype}` });
    if (stalled.has(name) || stalled.has(`${name}/${TYPES[qtype] ?? ''}`)) return;

    const rec = table.get(name);
    const answers: Buffer[] = [];
    let rcode = 0;
    if (failing.has(name)) rcode = 2;
    else if (!rec) rcode = 3;
    else {
      const ttl = rec.ttl ?? 300;
      if (qtype === 1) {
        for (const a of rec.a ?? []) answers.push(rr(1, ttl, Buffer.from(a.split('.').map(Number))));
      } else if (qtype === 16) {
        for (const t of rec.txt ?? []) answers.push(rr(16, ttl, txtRdata(t)));
      }
    }
    const head = Buffer.alloc(12);
    msg.copy(head, 0, 0, 2); // id
    const rd = (msg[2] ?? 0) & 0x01;
    head[2] = 0x80 | 0x04 | rd; // QR, AA, RD echoed
    head[3] = 0x80 | rcode; // RA
    head.writeUInt16BE(1, 4);
    head.writeUInt16BE(answers.length, 6);
    const question = msg.subarray(12, q.end + 4);
    sock.send(Buffer.concat([head, question, ...answers]), rinfo.port, rinfo.address);
  });

  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      sock.off('error', reject);
      resolve();
    });
  });
  const port = sock.address().port;

  return {
    address: `127.0.0.1:${port}`,
    port,
    queries,
    count: (name?: string, type?: string) =>
      queries.filter((q) => (name === undefined || q.name === norm(name)) && (type === undefined || q.type === type))
        .length,
    set: (name, records) => void table.set(norm(name), records),
    remove: (name) => void table.delete(norm(name)),
    stall: (name, type) => void stalled.add(type ? `${norm(name)}/${type}` : norm(name)),
    unstall: (name) => {
      for (const k of [...stalled]) if (k === norm(name) || k.startsWith(`${norm(name)}/`)) stalled.delete(k);
    },
    servfail: (name) => void failing.add(norm(name)),
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}
