/**
 * The inbound role: the company's MX. Each recipient gets its verdict at RCPT time (policy/verify):
 * valid tags are unwrapped and delivered, forged or stale ones refused with a 550 that says why, SRS
 * bounces reversed and relayed back out. Nothing is accepted that the next hop has not accepted, and the
 * proxy never generates a bounce.
 *
 * One transaction, one next hop and one verdict class (the verdict header describes the whole message):
 * a recipient that would need another gets 452 4.5.3 and comes in a later transaction.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { SMTPServerAddress, SMTPServerDataStream } from 'smtp-server';
import type { DataOptions, RelayContext, Transaction } from './transaction.js';
import { checkRecipientLimit, connections, newTransaction, relayData, relayMail, relayRcpt } from './transaction.js';
import { decideRecipient, isNullSender, type RcptDecision } from './policy/verify.js';
import { replies } from './policy/replies.js';
import { createListener, hook, type Listener } from './smtp/listener.js';
import { rawOf } from './smtp/internals.js';
import { SmtpReply } from './reply.js';
import { utcDay } from './clock.js';
import { createBounceClassifier, type BounceClassifier } from './inbound/classify.js';

interface InboundTxn extends Transaction {
  /** route + verdict of the first accepted recipient. */
  cls: string | null;
  verdict: Extract<RcptDecision, { kind: 'deliver' }> | null;
  mailFailure: SmtpReply | null;
}

/** Bytes of a classified bounce held back from the mailbox host until the classifier decides. */
const HOLD_BYTES = 256 * 1024;

/** A pass-through tap that feeds the classifier. */
class ClassifierTap extends Transform {
  constructor(readonly classifier: BounceClassifier) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.classifier.write(chunk);
    cb(null, chunk);
  }
}

function verdictHeaderValue(d: Extract<RcptDecision, { kind: 'deliver' }>, host: string): string {
  const parts: string[] = [d.verdict];
  if (d.keyNum !== undefined) parts.push(`key=${d.keyNum}`);
  if (d.ageDays !== undefined) parts.push(`age=${d.ageDays}d`);
  parts.push(`by=${host}`);
  return parts.join('; ');
}

export function createInbound(ctx: RelayContext): Listener {
  const conns = connections<InboundTxn>(ctx, 'inbound');
  const conn = conns.get;
  const unexpected = conns.unexpected;

  async function refuse(txn: InboundTxn, ip: string, rcpt: string, reply: SmtpReply, reason: string): Promise<never> { // issue 12: limits are async
    ctx.metrics.verdicts.inc({ result: 'refused', reason });
    txn.rcpts.push({ rcpt, to: rcpt, verdict: reason, reply: reply.line });
    const tipped = isNullSender(txn.sender) && txn.rt.limits.noteRefused(ip);
    if (tipped === true || (tipped !== false && await tipped)) {
      ctx.log.warn({ client: ip, role: 'inbound' }, 'client cooled off after too many refused bounces');
      ctx.metrics.rateLimited.inc({ kind: 'client' });
    }
    throw reply;
  }

  return createListener(ctx.runtime().listeners.inbound, {
    async onConnect(session, cb) { // issue 12: limits are async
      const cooling = ctx.runtime().limits.isCoolingOff(session.remoteAddress);
      if (cooling === true || (cooling !== false && await cooling)) {
        ctx.metrics.rateLimited.inc({ kind: 'client' });
        return cb(replies.coolingOff(session.remoteAddress));
      }
      cb();
    },

    onMailFrom(address: SMTPServerAddress, session, cb) {
      hook(async () => {
        const c = conn(session);
        conns.reset(c);
        // The snapshot this transaction keeps to its end (src/runtime.ts).
        const rt = ctx.runtime();
        const ip = session.remoteAddress;
        const cooling = rt.limits.isCoolingOff(ip);
        if (cooling === true || (cooling !== false && await cooling)) throw replies.coolingOff(ip);
        const { raw, rawParams } = rawOf(address);
        const { config, dnsbl } = rt;
        if (dnsbl && dnsbl.applies(raw)) {
          const r = await dnsbl.lookup(ip);
          if ('error' in r) ctx.metrics.dnsbl.inc({ result: r.error === 'timeout' ? 'timeout' : 'error' });
          else {
            ctx.metrics.dnsbl.inc({ result: r.listed ? 'listed' : 'clean' });
            if (r.listed) {
              ctx.log.info({ role: 'inbound', client: ip, sender: raw, dnsbl: config.inbound.dnsbl.zone, code: r.code }, 'bounce from a listed client refused');
              throw replies.dnsblListed(ip, config.inbound.dnsbl.zone);
            }
          }
        }
        // The next hop is chosen by the first accepted recipient, so MAIL goes out at that RCPT.
        c.txn = { ...newTransaction(ctx, rt, session, 'inbound', raw, rawParams), cls: null, verdict: null, mailFailure: null };
      }, cb, unexpected);
    },

    onRcptTo(address: SMTPServerAddress, session, cb) {
      hook(async () => {
        const c = conn(session);
        const txn = c.txn;
        if (!txn) throw replies.needMail();
        const { rt } = txn;
        const ip = session.remoteAddress;
        const cooling = rt.limits.isCoolingOff(ip);
        if (cooling === true || (cooling !== false && await cooling)) throw replies.coolingOff(ip);
        checkRecipientLimit(txn);
        const { raw, rawParams } = rawOf(address);
        const d = decideRecipient(raw, txn.sender, rt.verify, rt.keyring, ctx.clock.now());
        if (d.kind === 'refuse') return await refuse(txn, ip, raw, d.reply, d.reason);
        if (d.verdict === 'untagged-bounce-grace') ctx.metrics.wouldRefuse.inc({ reason: 'untagged-bounce' });
        const taken = (d.verdict === 'batv-valid' || d.verdict === 'srs-valid') && isNullSender(txn.sender) ? rt.limits.takeTag(tagIdentity(d, ctx.clock.now())) : true;
        if (taken === false || (taken !== true && !(await taken))) {
          ctx.metrics.rateLimited.inc({ kind: 'tag' });
          txn.rcpts.push({ rcpt: raw, to: d.to, verdict: 'tag-replayed', reply: '450' });
          throw replies.tagReplayed(raw);
        }
        const cls = `${d.route}:${d.verdict}`;
        if (txn.cls !== null && txn.cls !== cls) throw replies.separateTransaction(raw);
        if (txn.mailFailure) throw txn.mailFailure;
        if (txn.cls === null) {
          txn.cls = cls;
          txn.verdict = d;
          txn.fields.verdict = d.verdict;
          if (d.keyNum !== undefined) txn.fields.key = d.keyNum;
          try {
            await relayMail(ctx, c.link, txn, d.route === 'mailbox' ? rt.hops.mailbox : rt.hops.outbound);
          } catch (e) {
            if (e instanceof SmtpReply) txn.mailFailure = e;
            throw e;
          }
        }
        // A bounce held for the classifier is counted once, at DATA, as what it turned out to be.
        if (d.verdict !== 'untagged-bounce-classify') ctx.metrics.verdicts.inc({ result: 'accepted', reason: d.verdict });
        await relayRcpt(ctx, c.link, txn, raw, d.to, rawParams, d.verdict);
      }, cb, unexpected);
    },

    onData(stream: SMTPServerDataStream, session, cb) {
      hook(async () => {
        const c = conn(session);
        const txn = c.txn;
        c.txn = null;
        if (!txn || !txn.verdict) throw replies.needRcpt();
        const { config, graceUntilMs } = txn.rt;
        const header = config.inbound.verdictHeader;
        const d = txn.verdict;
        const extra = `${header}: ${verdictHeaderValue(d, config.hostname)}\r\n`;
        let taps: Transform[] = [];
        let holdBack: DataOptions['holdBack'];
        if (d.verdict === 'untagged-bounce-classify') {
          const tap = new ClassifierTap(createBounceClassifier());
          taps = [tap];
          // The mailbox host never sees a message we refuse: its DATA waits until the classifier has
          // decided. It keeps at most the header block and 64 KiB of body (under HOLD_BYTES), so its
          // verdict at HOLD_BYTES is the verdict for the whole message.
          holdBack = {
            bytes: HOLD_BYTES,
            decide: () => {
              const k = tap.classifier.finish();
              txn.fields.classified = `${k.kind}: ${k.reason}`;
              const n = txn.accepted;
              if (k.kind !== 'dsn') {
                ctx.metrics.verdicts.inc({ result: 'accepted', reason: d.verdict }, n);
                return null;
              }
              const grace = graceUntilMs !== null && ctx.clock.now() < graceUntilMs;
              if (grace) {
                ctx.metrics.wouldRefuse.inc({ reason: 'untagged-dsn' });
                ctx.metrics.verdicts.inc({ result: 'accepted', reason: d.verdict }, n);
                txn.fields.would_refuse = true;
                return null;
              }
              ctx.metrics.verdicts.inc({ result: 'refused', reason: 'untagged-dsn' }, n);
              return replies.untaggedDsn(k.reason);
            },
          };
        }
        return relayData(ctx, c.link, txn, stream, session, {
          extraHeaders: extra,
          strip: new Set([header.toLowerCase()]),
          taps,
          ...(holdBack ? { holdBack } : {}),
        });
      }, cb, unexpected);
    },

    onClose(session) {
      conns.close(session);
    },
  }, (kind) => ctx.metrics.refusals.inc({ role: 'inbound', reason: kind }));
}

/**
 * The replay cap's key for a verified tag: what the tag stands for, not how it was spelt, so separator
 * (=, +, -) and case variants of one harvested address share one allowance. BATV: the untagged address,
 * key number and signing day; SRS: the decoded address with its day (the hash binds both).
 */
export function tagIdentity(d: Extract<RcptDecision, { kind: 'deliver' }>, nowMs: number): string {
  const day = d.ageDays === undefined ? '' : String(utcDay(nowMs) - d.ageDays);
  return d.verdict === 'batv-valid' ? `batv:${d.to.toLowerCase()}:${d.keyNum ?? ''}:${day}` : `srs:${d.to.toLowerCase()}:${day}`;
}
