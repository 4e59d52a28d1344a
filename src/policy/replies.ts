/**
 * The one table of the proxy's own SMTP replies. Every refusal the proxy itself gives is built here,
 * so the codes, enhanced codes and words stay consistent and tests can assert exact lines.
 * (Replies of the next hop are passed through as they came; transport failures are mapped in
 * src/smtp/client.ts.) Pure.
 */
import { replyTable, SmtpReply, transportReplies } from '../reply.js';
import { BATV_INVALID_WORDS, type BatvInvalidReason } from '../tags/batv.js';
import { SRS_INVALID_WORDS, type SrsInvalidReason } from '../tags/srs.js';

export const replies = replyTable({
  /** Outbound: the client may not relay through us. */
  relayDenied: (ip: string) => new SmtpReply(554, '5.7.1', `Relay access denied for ${ip}`),
  /** Outbound: the client could relay if it authenticated. */
  authRequired: () => new SmtpReply(530, '5.7.0', 'Authentication required to relay'),
  /** Outbound: an authenticated user sending as someone else. */
  senderNotOwned: (sender: string, user: string) => new SmtpReply(553, '5.7.1', `<${sender}>: sender address not allowed for user ${user}`),
  /** Outbound: signing cannot happen (no usable key): never relay unsigned by accident. */
  cannotSign: (why: string) => new SmtpReply(451, '4.3.0', `Cannot sign the sender now (${why}); try again later`),
  badSender: (sender: string, why: string) => new SmtpReply(553, '5.1.7', `<${sender}>: ${why}`),
  /** One transaction, one next hop (and one verdict class): the client retries this one separately. */
  separateTransaction: (rcpt: string) => new SmtpReply(452, '4.5.3', `<${rcpt}>: send this recipient in a separate transaction`),
  /** Inbound: not a domain of ours. */
  notOurDomain: (rcpt: string) => new SmtpReply(550, '5.7.1', `<${rcpt}>: relaying denied`),
  batvInvalid: (rcpt: string, reason: BatvInvalidReason) => new SmtpReply(550, '5.7.1', `<${rcpt}>: ${BATV_INVALID_WORDS[reason]}`),
  srsInvalid: (rcpt: string, reason: SrsInvalidReason) => new SmtpReply(550, '5.7.1', `<${rcpt}>: ${SRS_INVALID_WORDS[reason]}`),
  /** Inbound: "%" or "!" routing in a local part, which a mailbox host might still honour (percent hack, bang paths). */
  routingLocalPart: (rcpt: string) => new SmtpReply(550, '5.7.1', `<${rcpt}>: routing characters (% or !) in the local part are not accepted`),
  /** Inbound: an address in the SRS domain that is not an SRS address. */
  srsNotTagged: (rcpt: string) => new SmtpReply(550, '5.1.1', `<${rcpt}>: no such address (the SRS domain receives only SRS addresses)`),
  /** Inbound: SRS addresses take bounces only, so they are no open forwarder. */
  srsNotBounce: (rcpt: string) => new SmtpReply(550, '5.7.1', `<${rcpt}>: SRS addresses accept only bounces (null sender)`),
  /** Inbound: a bounce to an address we never signed. */
  untaggedBounce: (rcpt: string) => new SmtpReply(550, '5.7.1', `<${rcpt}>: bounce to an address we never sent from (no BATV tag); backscatter refused`),
  /** Inbound, classify mode, end of DATA. */
  untaggedDsn: (why: string) => new SmtpReply(550, '5.7.1', `Delivery status report to an untagged address refused as backscatter (${why})`),
  dnsblListed: (ip: string, zone: string) => new SmtpReply(554, '5.7.1', `Bounce from ${ip} refused: listed in ${zone}`),
  /** Abuse limit: too many refused bounces from one client. */
  coolingOff: (ip: string) => new SmtpReply(421, '4.7.0', `Too many refused bounces from ${ip}; try again later`),
  /** Abuse limit: a valid tag replayed too often. */
  tagReplayed: (rcpt: string) => new SmtpReply(450, '4.7.1', `<${rcpt}>: too many bounces to this tagged address; try again later`),
  /** limits.bareLineEnds "reject": a line end other than CRLF, or a NUL, in DATA (SMTP smuggling, docs/smuggling.md). */
  bareLineEnd: () => new SmtpReply(550, '5.5.2', 'Message refused: bare CR or LF (or NUL) in the message; every line must end in CRLF (RFC 5321 2.3.8)'),
  /** One client address holds limits.maxClientsPerIp connections already. */
  tooManyFromClient: (ip: string) => new SmtpReply(421, '4.7.0', `Too many connections from ${ip}; try again later`),
  /** The DATA phase took longer than timeouts.clientDataMs, or ran below limits.minDataRate after its grace. */
  dataTooSlow: (why: string) => new SmtpReply(421, '4.4.2', `Message transfer too slow (${why}); closing connection`),
  /** A MAIL/RCPT parameter the proxy does not relay. */
  unknownParameter: (param: string) => new SmtpReply(555, '5.5.4', `Unsupported parameter ${param}`),
  /** RCPT or DATA before MAIL. */
  needMail: () => new SmtpReply(503, '5.5.1', 'Need MAIL command first'),
  /** DATA before an accepted RCPT. */
  needRcpt: () => new SmtpReply(503, '5.5.1', 'Need RCPT command first'),
  /** Outbound AUTH: wrong user name or password. */
  authInvalid: () => new SmtpReply(535, '5.7.8', 'Authentication credentials invalid'),
  /** Outbound AUTH: the check itself failed (the client may retry). */
  authTemporary: () => new SmtpReply(454, '4.7.0', 'Temporary authentication failure'),
  ...transportReplies,
  tooManyRecipients: () => new SmtpReply(452, '4.5.3', 'Too many recipients'),
  shuttingDown: () => new SmtpReply(421, '4.3.2', 'Service shutting down; try again later'),
} as const, { dnsblListed: 'dnsbl' });
