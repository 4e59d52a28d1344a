/**
 * The embedded capture next hop used when no relay or mailbox host is configured: a loopback SMTP
 * server that writes each message it receives as an .eml file, its envelope recorded the way a local
 * delivery agent records it (Return-Path: for the sender, X-Envelope-To: for each recipient), so a
 * newcomer sees the signed envelope without running a mail server.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs, createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { SMTPServer } from 'smtp-server';
import type { AddressInfo } from 'node:net';
import type { Clock } from './clock.js';

/** Tells this process's files from another's writing to the same folder (as a PID would). */
const RUN = randomBytes(4).toString('hex');

export interface Capture {
  readonly url: string;
  readonly dir: string;
  close(): Promise<void>;
}

export async function startCapture(dir: string, clock: Clock, onFile?: (file: string, envelope: { from: string; to: string[] }) => void): Promise<Capture> {
  await fs.mkdir(dir, { recursive: true });
  let seq = 0;
  const server = new SMTPServer({
    logger: false,
    disableReverseLookup: true,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    hideENHANCEDSTATUSCODES: false,
    onData(stream, session, cb) {
      const id = `${new Date(clock.now()).toISOString().replace(/[:.]/g, '-')}-${RUN}-${++seq}`;
      const file = path.join(dir, `${id}.eml`);
      const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      const to = session.envelope.rcptTo.map((r) => r.address);
      const head = `Return-Path: <${from}>\r\n${to.map((t) => `X-Envelope-To: <${t}>\r\n`).join('')}`;
      // Written as .eml.tmp and renamed when the message is complete. A message cut short (smtp-server
      // destroys the stream when the client leaves mid-DATA, which is how the proxy abandons a body) or a
      // failed write leaves no file behind.
      const tmp = `${file}.tmp`;
      const out = createWriteStream(tmp, { mode: 0o640 });
      out.write(head);
      pipeline(stream, out)
        .then(() => fs.rename(tmp, file))
        .then(() => { onFile?.(file, { from, to }); cb(null, `Ok: captured as ${path.basename(file)}`); })
        .catch(async (e: Error) => {
          await fs.rm(tmp, { force: true }).catch(() => undefined);
          cb(Object.assign(new Error(`Capture failed: ${e.message}`), { responseCode: 451 }));
        });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.server.address() as AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    dir,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
