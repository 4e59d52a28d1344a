/**
 * Inbound verdicts per recipient (docs/architecture.md, "Inbound verdicts"), decided at RCPT time:
 *
 *   recipient                null sender <> (a bounce)               ordinary sender
 *   valid BATV tag           deliver untagged to the mailbox host    deliver untagged
 *   invalid/expired BATV     550 5.7.1 naming the reason             550 5.7.1
 *   valid SRS address        reverse; relay via the outbound hop     550 5.7.1 (bounces only)
 *   invalid/expired SRS      550 5.7.1 naming the reason             550 5.7.1
 *   untagged address of ours per untaggedBounces                     deliver
 *   postmaster@ours          deliver (RFC 5321 §4.5.1)               deliver
 *   ours with "%" or "!"     550 5.7.1 (routing in the local part)   550 5.7.1
 *   anything else            550 5.7.1 relaying denied
 *
 * Pure: keys, policy and time are arguments. The role (src/inbound.ts) adds rate limits and DNSBL.
 */
import type { SmtpReply } from '../reply.js';
import { lowerAscii, sameDomain } from '../tags/address.js';
import { batvVerify } from '../tags/batv.js';
import type { TagKeyring } from '../tags/keyring.js';
import { srsReverse, type SrsOptions } from '../tags/srs.js';
import type { UntaggedBounces } from '../config.js';
import { replies } from './replies.js';

export interface VerifyPolicy {
  readonly domains: readonly string[];
  readonly srs: SrsOptions | null;
  readonly batvMaxAgeDays: number;
  readonly untaggedBounces: UntaggedBounces;
  /** Until then (epoch ms), untagged-bounce refusals are only "would refuse". */
  readonly graceUntilMs: number | null;
  /** Where RCPT TO:<postmaster> (no domain; RFC 5321 4.1.1.3 requires it be accepted) is delivered. */
  readonly postmaster: string;
}

export type Verdict =
  | 'batv-valid' | 'srs-valid' | 'untagged' | 'postmaster'
  | 'untagged-bounce-accept' | 'untagged-bounce-tag' | 'untagged-bounce-classify' | 'untagged-bounce-grace';

export type RcptDecision =
  | { kind: 'deliver'; to: string; route: 'mailbox' | 'outbound'; verdict: Verdict; keyNum?: number; ageDays?: number }
  | { kind: 'refuse'; reply: SmtpReply; reason: string };

export function isNullSender(sender: string): boolean {
  return sender === '' || sender === '<>';
}

/**
 * The verdict for one recipient.
 *
 * @example
 *   decideRecipient('prvs=0461cd18bc=user@example.com', '', policy, ring, now);
 *   // { kind: 'deliver', to: 'user@example.com', route: 'mailbox', verdict: 'batv-valid', keyNum: 0, ageDays: 3 }
 */
export function decideRecipient(rcpt: string, sender: string, policy: VerifyPolicy, keyring: TagKeyring | null, nowMs: number): RcptDecision {
  const at = rcpt.lastIndexOf('@');
  const local = at < 0 ? rcpt : rcpt.slice(0, at);
  const domain = at < 0 ? '' : rcpt.slice(at + 1);
  const bounce = isNullSender(sender);

  if (at < 0 && lowerAscii(rcpt) === 'postmaster') return { kind: 'deliver', to: policy.postmaster, route: 'mailbox', verdict: 'postmaster' };
  if (policy.srs && sameDomain(domain, policy.srs.domain)) {
    if (!/^SRS[01][=+-]/i.test(local)) return { kind: 'refuse', reply: replies.srsNotTagged(rcpt), reason: 'srs-not-tagged' };
    if (!keyring) return { kind: 'refuse', reply: replies.cannotSign('no key loaded to verify'), reason: 'no-key' };
    const r = srsReverse(rcpt, keyring, policy.srs, nowMs);
    if (r.kind === 'invalid') return { kind: 'refuse', reply: replies.srsInvalid(rcpt, r.reason), reason: `srs-${r.reason}` };
    if (r.kind !== 'valid') return { kind: 'refuse', reply: replies.srsNotTagged(rcpt), reason: 'srs-not-tagged' };
    if (!bounce) return { kind: 'refuse', reply: replies.srsNotBounce(rcpt), reason: 'srs-not-bounce' };
    return { kind: 'deliver', to: r.original, route: 'outbound', verdict: 'srs-valid', keyNum: r.keyNum, ...(r.ageDays !== undefined ? { ageDays: r.ageDays } : {}) };
  }

  if (!policy.domains.some((d) => sameDomain(d, domain))) {
    return { kind: 'refuse', reply: replies.notOurDomain(rcpt), reason: 'not-our-domain' };
  }
  // Nothing with "%" or "!" routing goes to our mailbox host (tagged or not): a host that still honours
  // the percent hack or bang paths, and trusts the proxy, would otherwise relay it onwards.
  if (/[%!]/.test(local)) return { kind: 'refuse', reply: replies.routingLocalPart(rcpt), reason: 'routing-local-part' };
  if (/^prvs=/i.test(local)) {
    if (!keyring) return { kind: 'refuse', reply: replies.cannotSign('no key loaded to verify'), reason: 'no-key' };
    const r = batvVerify(rcpt, keyring, nowMs, policy.batvMaxAgeDays);
    if (r.kind === 'valid') return { kind: 'deliver', to: r.original, route: 'mailbox', verdict: 'batv-valid', keyNum: r.keyNum, ageDays: r.ageDays };
    const reason = r.kind === 'invalid' ? r.reason : 'malformed';
    return { kind: 'refuse', reply: replies.batvInvalid(rcpt, reason), reason: `batv-${reason}` };
  }
  if (lowerAscii(local) === 'postmaster') return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'postmaster' };
  if (!bounce) return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'untagged' };

  switch (policy.untaggedBounces) {
    case 'accept':
      return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'untagged-bounce-accept' };
    case 'tag':
      return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'untagged-bounce-tag' };
    case 'classify':
      return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'untagged-bounce-classify' };
    case 'reject':
      if (policy.graceUntilMs !== null && nowMs < policy.graceUntilMs) {
        return { kind: 'deliver', to: rcpt, route: 'mailbox', verdict: 'untagged-bounce-grace' };
      }
      return { kind: 'refuse', reply: replies.untaggedBounce(rcpt), reason: 'untagged-bounce' };
  }
}
