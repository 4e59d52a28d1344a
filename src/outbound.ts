/**
 * The outbound role: the company MTA relays through us; we rewrite MAIL FROM (BATV for our domains, SRS
 * for forwarded mail) and relay each command live to the next hop, answering with its replies.
 *
 *   client ─▶ listener ─MAIL─▶ policy/sign ─▶ relay MAIL <rewritten> ─▶ next hop
 *                      ─RCPT─────────────────▶ relay RCPT (its reply, per recipient, at RCPT time)
 *                      ─DATA─▶ Received: + body ─▶ relay DATA (250 only after the next hop's 250)
 */
import type { SMTPServer, SMTPServerAddress, SMTPServerDataStream } from 'smtp-server';
import type { Conn, RoleContext } from './role.js';
import { checkRecipientLimit, connections, newTransaction, relayData, relayMail, relayRcpt, type Transaction } from './role.js';
import { matchesEntry, signSender, type SignDecision } from './policy/sign.js';
import { replies } from './policy/replies.js';
import { parseMailbox } from './tags/address.js';
import { inNetworks } from './net/cidr.js';
import { createListener, hook } from './smtp/listener.js';
import { rawOf } from './smtp/internals.js';
import { SmtpReply } from './reply.js';

interface OutboundTxn extends Transaction {
  decision: SignDecision | null;
  /** With recipient exemptions, MAIL goes out at the first RCPT (the first recipient decides). */
  deferredMail: { params: readonly string[] } | null;
  mailFailure: SmtpReply | null;
  exemptClass: boolean | null;
}

export function createOutbound(ctx: RoleContext): SMTPServer {
  const conns = connections<OutboundTxn>(ctx, 'outbound');
  const conn = conns.get;
  const unexpected = conns.unexpected;

  async function mailCommand(c: Conn<OutboundTxn>, txn: OutboundTxn, firstRecipient: string | undefined): Promise<void> {
    const { keyring } = ctx.state();
    const d = signSender(txn.sender, firstRecipient, ctx.signPolicy(), keyring, ctx.clock.now());
    txn.decision = d;
    if (d.kind === 'refused') {
      ctx.metrics.senders.inc({ result: 'refused', scheme: 'none' });
      throw d.reply;
    }
    txn.rewritten = d.address;
    txn.fields.sender_rewritten = d.address;
    txn.fields.sign = d.kind === 'rewritten' ? d.scheme : `unchanged:${d.reason}`;
    if (d.kind === 'rewritten') {
      txn.fields.key = d.keyNum;
      if (d.overlong) ctx.metrics.overlong.inc();
    }
    ctx.metrics.senders.inc(d.kind === 'rewritten' ? { result: 'signed', scheme: d.scheme } : { result: d.reason === 'exempt-sender' || d.reason === 'exempt-recipient' ? 'exempt' : 'unchanged', scheme: 'none' });
    await relayMail(ctx, c.link, txn, ctx.outboundHop());
  }

  return createListener(ctx.listenerOptions('outbound'), {
    onAuth(auth, session, cb) {
      ctx.auth.check(auth, session.remoteAddress).then(
        (user) => (user ? cb(null, { user }) : cb(new SmtpReply(535, '5.7.8', 'Authentication credentials invalid'))),
        (e: unknown) => { unexpected(e); cb(new SmtpReply(454, '4.7.0', 'Temporary authentication failure')); },
      );
    },

    onMailFrom(address: SMTPServerAddress, session, cb) {
      hook(async () => {
        const c = conn(session);
        conns.reset(c);
        const { config } = ctx.state();
        const ip = session.remoteAddress;
        const user = typeof session.user === 'string' ? session.user : undefined;
        if (!user && !inNetworks(ip, config.outbound.allowNetworks)) {
          ctx.metrics.refusals.inc({ role: 'outbound', reason: 'relay-denied' });
          throw ctx.auth.enabled ? replies.authRequired() : replies.relayDenied(ip);
        }
        const { raw, rawParams } = rawOf(address);
        if (raw !== '') {
          const parsed = parseMailbox(raw);
          if (!parsed.ok) throw replies.badSender(raw, parsed.message);
        }
        if (user && !ctx.auth.maySend(user, raw)) throw replies.senderNotOwned(raw, user);
        const txn: OutboundTxn = {
          ...newTransaction(ctx, session, 'outbound', raw, rawParams),
          decision: null,
          deferredMail: null,
          mailFailure: null,
          exemptClass: null,
        };
        c.txn = txn;
        if (config.outbound.exemptRecipients.length > 0) {
          txn.deferredMail = { params: rawParams };
          return;
        }
        await mailCommand(c, txn, undefined);
      }, cb, unexpected);
    },

    onRcptTo(address: SMTPServerAddress, session, cb) {
      hook(async () => {
        const c = conn(session);
        const txn = c.txn;
        if (!txn) throw new SmtpReply(503, '5.5.1', 'Need MAIL command first');
        checkRecipientLimit(ctx, txn);
        const { raw, rawParams } = rawOf(address);
        const { config } = ctx.state();
        if (txn.deferredMail) {
          const exempt = matchesEntry(raw, config.outbound.exemptRecipients);
          if (txn.exemptClass === null) {
            txn.exemptClass = exempt;
            try {
              await mailCommand(c, txn, raw);
            } catch (e) {
              txn.mailFailure = e instanceof SmtpReply ? e : null;
              throw e;
            }
          } else if (txn.mailFailure) {
            throw txn.mailFailure;
          } else if (exempt !== txn.exemptClass) {
            throw replies.separateTransaction(raw);
          }
        }
        await relayRcpt(ctx, c.link, txn, raw, raw, rawParams);
      }, cb, unexpected);
    },

    onData(stream: SMTPServerDataStream, session, cb) {
      hook(async () => {
        const c = conn(session);
        const txn = c.txn;
        c.txn = null;
        if (!txn) throw new SmtpReply(503, '5.5.1', 'Need MAIL command first');
        return relayData(ctx, c.link, txn, stream, session, { extraHeaders: '', strip: new Set() });
      }, cb, unexpected);
    },

    onClose(session) {
      conns.close(session);
    },
  });
}
