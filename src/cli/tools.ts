/**
 * Small helpers for administrators: `hash-password` (a users-file line for SMTP AUTH) and `send-test`
 * (sends one test message through a listener with nodemailer, the client used wherever a whole message
 * is sent).
 */
import nodemailer from 'nodemailer';
import { hashPassword } from '../auth.js';
import { parseListen } from '../config.js';
import { EXIT_OK, EXIT_REFUSED, hostOf, UsageError, type Io, type Verb } from './args.js';

async function readStdin(io: Io): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of hostOf(io, 'hash-password').stdin) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

export const hashPasswordVerb: Verb = {
  name: 'hash-password',
  synopsis: 'batv-proxy hash-password USER < password',
  help: 'Reads a password on standard input and prints a users-file line "USER:$scrypt$..." for outbound.usersFile.\nAppend ":sender@example.com,@example.org" to limit the sender addresses the user may use.',
  options: {},
  positionals: { min: 1, max: 1 },
  async run(_v, [user], io: Io) {
    if (!/^[^:\s]+$/.test(user!)) throw new UsageError(`USER: "${user}" may not contain ":" or spaces`);
    const pw = await readStdin(io);
    if (!pw) { io.err('hash-password: no password on standard input\n'); return EXIT_REFUSED; }
    io.out(`${user}:${await hashPassword(pw)}\n`);
    return EXIT_OK;
  },
};

export const sendTestVerb: Verb = {
  name: 'send-test',
  synopsis: 'batv-proxy send-test --from ADDR --to ADDR [--server HOST:PORT] [--subject S] [--user U --pass P]',
  help: 'Sends one small test message through a listener (default the outbound one, 127.0.0.1:2525) and prints\nthe server\'s answer. Use --from "" for a bounce (null sender), e.g. to the inbound listener.',
  options: {
    from: { type: 'string' }, to: { type: 'string', multiple: true }, server: { type: 'string' },
    subject: { type: 'string' }, user: { type: 'string' }, pass: { type: 'string' },
  },
  positionals: { min: 0, max: 0 },
  async run(values, _p, io: Io) {
    const from = values.from as string | undefined;
    const to = (values.to as string[] | undefined) ?? [];
    if (from === undefined) throw new UsageError('--from: required ("" for the null sender)');
    if (to.length === 0) throw new UsageError('--to: required');
    const server = parseListen((values.server as string | undefined) ?? '127.0.0.1:2525');
    if (typeof server === 'string') throw new UsageError(`--server: ${server}`);
    const transport = nodemailer.createTransport({
      host: server.host, port: server.port, secure: false, ignoreTLS: false,
      ...(values.user ? { auth: { user: String(values.user), pass: String(values.pass ?? '') } } : {}),
      tls: { rejectUnauthorized: false },
    });
    try {
      const info = await transport.sendMail({
        envelope: { from: from === '' ? '' : from, to },
        from: from || 'MAILER-DAEMON@localhost',
        to,
        subject: (values.subject as string | undefined) ?? 'batv-proxy test message',
        text: `Sent by "batv-proxy send-test" at ${new Date(io.now()).toISOString()}.\n`,
      });
      io.out(`${info.response}\n`);
      return EXIT_OK;
    } catch (e) {
      const err = e as { response?: string; message: string };
      io.err(`send-test: ${err.response ?? err.message}\n`);
      return EXIT_REFUSED;
    } finally {
      transport.close();
    }
  },
};
