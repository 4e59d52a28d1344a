/**
 * Outbound signing policy (docs/architecture.md, "Outbound signing"): what MAIL FROM the next hop gets.
 *
 *   <>                                  unchanged (our own bounces stay null)
 *   sender or first recipient exempt    unchanged
 *   sender already prvs-tagged          unchanged (never tagged twice)
 *   sender in one of our domains        BATV tag with the signing key
 *   sender in the SRS domain            unchanged
 *   sender in a foreign domain          SRS0 (SRS1 if it already is SRS) under srs.domain
 *
 * Fails closed: with no usable key the answer is a 451, never an unsigned relay. Pure: keys, config and
 * time come in as arguments.
 */
import type { SmtpReply } from '../reply.js';
import { batvSign } from '../tags/batv.js';
import { lowerAscii, MAX_LOCAL_OCTETS, octets, sameDomain } from '../tags/address.js';
import type { TagKeyring } from '../tags/keyring.js';
import { srsForward, type SrsOptions } from '../tags/srs.js';
import { replies } from './replies.js';

export interface SignPolicy {
  readonly domains: readonly string[];
  /** null: SRS is off and foreign senders pass unchanged. */
  readonly srs: SrsOptions | null;
  readonly exemptSenders: readonly string[];
  readonly exemptRecipients: readonly string[];
  readonly overlong: 'sign' | 'skip';
}

export type UnchangedReason =
  | 'null-sender' | 'exempt-sender' | 'exempt-recipient' | 'already-tagged' | 'srs-domain' | 'srs-off'
  | 'overlong' | 'quoted-local-part' | 'unsignable';

export type SignDecision =
  | { kind: 'rewritten'; address: string; scheme: 'batv' | 'srs0' | 'srs1'; keyNum: number; overlong: boolean }
  | { kind: 'unchanged'; address: string; reason: UnchangedReason }
  | { kind: 'refused'; reply: SmtpReply };

/**
 * Does `address` match an entry: a whole address, or a domain ("example.com" or "@example.com", matching
 * the domain part exactly, not its subdomains)? Case-insensitive. The one matcher for address lists:
 * outbound exemptions here, a user's allowed senders in src/auth.ts (entries checked by
 * src/config/text.ts addressEntryProblem).
 *
 * @example
 *   matchesEntry('Alice@Example.com', ['@example.com']); // true
 *   matchesEntry('alice@sub.example.com', ['example.com']); // false
 */
export function matchesEntry(address: string, entries: readonly string[]): boolean {
  if (entries.length === 0) return false;
  const at = address.lastIndexOf('@');
  const domain = at < 0 ? '' : address.slice(at + 1);
  const lower = lowerAscii(address);
  return entries.some((e) => (e.startsWith('@') ? sameDomain(e.slice(1), domain) : e.includes('@') ? lowerAscii(e) === lower : sameDomain(e, domain)));
}

function isOurs(domain: string, domains: readonly string[]): boolean {
  return domains.some((d) => sameDomain(d, domain));
}

/**
 * Decides the sender the next hop gets. `firstRecipient` is known only when recipient exemptions are
 * configured (the relay then sends MAIL at the first RCPT).
 *
 * @example
 *   signSender('alice@example.com', undefined, policy, ring, now);
 *   // { kind: 'rewritten', address: 'prvs=0461....=alice@example.com', scheme: 'batv', keyNum: 0, overlong: false }
 */
export function signSender(
  sender: string,
  firstRecipient: string | undefined,
  policy: SignPolicy,
  keyring: TagKeyring | null,
  nowMs: number,
): SignDecision {
  if (sender === '') return { kind: 'unchanged', address: sender, reason: 'null-sender' };
  if (matchesEntry(sender, policy.exemptSenders)) return { kind: 'unchanged', address: sender, reason: 'exempt-sender' };
  if (firstRecipient !== undefined && matchesEntry(firstRecipient, policy.exemptRecipients)) {
    return { kind: 'unchanged', address: sender, reason: 'exempt-recipient' };
  }
  const at = sender.lastIndexOf('@');
  if (at <= 0) return { kind: 'unchanged', address: sender, reason: 'unsignable' };
  const local = sender.slice(0, at);
  const domain = sender.slice(at + 1);
  // A tag in front of a quoted local part is not valid RFC 5321 syntax (exim writes it anyway); the next
  // hop would refuse the MAIL command, so such senders pass unsigned.
  if (local.startsWith('"')) return { kind: 'unchanged', address: sender, reason: 'quoted-local-part' };

  if (isOurs(domain, policy.domains)) {
    if (!keyring) return { kind: 'refused', reply: replies.cannotSign('no signing key loaded') };
    // "prvs=" + K DDD SSSSSS + "=" is 16 octets in front of the local part.
    const overlong = octets(local) + 16 > MAX_LOCAL_OCTETS;
    if (overlong && policy.overlong === 'skip') return { kind: 'unchanged', address: sender, reason: 'overlong' };
    const r = batvSign(sender, keyring.signingAt(nowMs), nowMs);
    if (r.kind === 'already-tagged') return { kind: 'unchanged', address: sender, reason: 'already-tagged' };
    if (r.kind === 'refused') return { kind: 'unchanged', address: sender, reason: 'unsignable' };
    return { kind: 'rewritten', address: r.address, scheme: 'batv', keyNum: r.keyNum, overlong };
  }
  if (!policy.srs) return { kind: 'unchanged', address: sender, reason: 'srs-off' };
  if (!keyring) return { kind: 'refused', reply: replies.cannotSign('no signing key loaded') };
  const r = srsForward(sender, keyring, policy.srs, nowMs);
  if (r.kind === 'unchanged') return { kind: 'unchanged', address: sender, reason: 'srs-domain' };
  if (r.kind === 'refused') return { kind: 'unchanged', address: sender, reason: 'unsignable' };
  const newLocal = r.address.slice(0, r.address.lastIndexOf('@'));
  const overlong = octets(newLocal) > MAX_LOCAL_OCTETS;
  if (overlong && policy.overlong === 'skip') return { kind: 'unchanged', address: sender, reason: 'overlong' };
  return { kind: 'rewritten', address: r.address, scheme: r.scheme === 'SRS0' ? 'srs0' : 'srs1', keyNum: keyring.signingAt(nowMs).num, overlong };
}
