/**
 * The outbound role: the company MTA relays through us; we rewrite MAIL FROM (BATV for our domains, SRS
 * for forwarded mail) and relay each command live to the next hop, answering with its replies.
 *
 *   client ─▶ listener ─MAIL─▶ policy/sign ─▶ relay MAIL <rewritten> ─▶ next hop
 *                      ─RCPT─────────────────▶ relay RCPT (its reply, per recipient, at RCPT time)
 *                      ─DATA─▶ Received: + body ─▶ relay DATA (250 only after the next hop's 250)
 */
import type { SMTPServerAddress, SMTPServerDataStream } from 'smtp-server';
import type { Conn, RelayContext } from './transaction.js';
import { checkRecipientLimit, connections, newTransaction, relayData, relayMail, relayRcpt, type Transaction } from './transaction.js';
import { matchesEntry, signSender, type SignDecision } from './policy/sign.js';
import { replies } from './policy/replies.js';
import { parseMailbox } from './tags/address.js';
import { createListener, hook, type Listener } from './smtp/listener.js';
import { rawOf } from './smtp/internals.js';
import { SmtpReply } from './reply.js';

interface OutboundTxn extends Transaction {
  decision: SignDecision | null;
  /** With recipient exemptions, MAIL goes out at the first RCPT (the first recipient decides). */
  deferredMail: { params: readonly string[] } | null;
  mailFailure: SmtpReply | null;
  exemptClass: boolean | null;
}

export function createOutbound(ctx: RelayContext): Listener {
  const conns = connections<OutboundTxn>(ctx, 'outbound');
  const conn = conns.get;
  const unexpected = conns.unexpected;

  async function mailCommand(c: Conn<OutboundTxn>, txn: OutboundTxn, firstRecipient: string | undefined): Promise<void> {
    const { keyring, sign } = txn.rt;
    const d = signSender(txn.sender, firstRecipient, sign, keyring, ctx.clock.now());
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
    await relayMail(ctx, c.link, txn, txn.rt.hops.outbound);
  }

  return createListener(ctx.runtime().listeners.outbound, {
    onAuth(auth, session, cb) {
      ctx.runtime().auth.check(auth, session.remoteAddress).then(
        (user) => (user ? cb(null, { user }) : cb(replies.authInvalid())),
        (e: unknown) => { unexpected(e); cb(replies.authTemporary()); },
      );
    },

    onMailFrom(address: SMTPServerAddress, session, cb) {
      hook(async () => {
        const c = conn(session);
        conns.reset(c);
        // The snapshot this transaction keeps to its end (src/runtime.ts).
        const rt = ctx.runtime();
        const { config } = rt;
        const ip = session.remoteAddress;
        const user = typeof session.user === 'string' ? session.user : undefined;
        if (!user && !rt.relayNetworks.has(ip)) {
          throw rt.auth.enabled ? replies.authRequired() : replies.relayDenied(ip);
        }
        const { raw, rawParams } = rawOf(address);
        if (raw !== '') {
          const parsed = parseMailbox(raw);
          if (!parsed.ok) throw replies.badSender(raw, parsed.message);
        }
        if (user && !rt.auth.maySend(user, raw)) throw replies.senderNotOwned(raw, user);
        const txn: OutboundTxn = {
          ...newTransaction(ctx, rt, session, 'outbound', raw, rawParams),
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
        if (!txn) throw replies.needMail();
        checkRecipientLimit(txn);
        const { raw, rawParams } = rawOf(address);
        const { config } = txn.rt;
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
        if (!txn) throw replies.needMail();
        return relayData(ctx, c.link, txn, stream, session, { extraHeaders: '', strip: new Set() });
      }, cb, unexpected);
    },

    onClose(session) {
      conns.close(session);
    },
  }, (kind) => ctx.metrics.refusals.inc({ role: 'outbound', reason: kind }));
}
