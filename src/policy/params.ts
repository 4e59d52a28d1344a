/**
 * MAIL and RCPT parameters: which ones the proxy relays, and how (docs/architecture.md). Only parameters
 * the proxy understands pass, each only to a next hop that advertised its extension, so a mailbox host
 * that trusts the proxy never sees a parameter the proxy did not check (an AUTH= from a stranger, an
 * X-ANYTHING=1 its own software might act on).
 *
 * @example
 *   clientParams('MAIL', ['SIZE=10', 'AUTH=<boss@example.com>'], false) // ['SIZE=10', 'AUTH=<>']
 *   clientParams('MAIL', ['X-ANYTHING=1'], false)                       // throws 555 5.5.4 Unsupported parameter X-ANYTHING
 *   forNextHop(['SIZE=10', 'ENVID=x'], new Map([['SIZE', '']]))           // ['SIZE=10']
 */
import { replies } from './replies.js';

/** Each parameter the proxy relays, with the EHLO keyword the next hop must have advertised for it. */
const MAIL_PARAMS: Readonly<Record<string, string>> = { SIZE: 'SIZE', BODY: '8BITMIME', SMTPUTF8: 'SMTPUTF8', RET: 'DSN', ENVID: 'DSN', AUTH: 'AUTH' };
const RCPT_PARAMS: Readonly<Record<string, string>> = { NOTIFY: 'DSN', ORCPT: 'DSN' };

const keyOf = (p: string): string => {
  const eq = p.indexOf('=');
  return (eq < 0 ? p : p.slice(0, eq)).toUpperCase();
};

/**
 * The client's parameters as the proxy will relay them: an unknown one is refused (555 5.5.4; so is
 * BODY= other than 7BIT or 8BITMIME, as the proxy offers no BINARYMIME), and AUTH= from a client that did
 * not authenticate to us becomes AUTH=<> (RFC 4954 §5: the identity is not vouched for).
 * @throws SmtpReply 555 5.5.4 naming the parameter.
 */
export function clientParams(kind: 'MAIL' | 'RCPT', params: readonly string[], authenticated: boolean): readonly string[] {
  const known = kind === 'MAIL' ? MAIL_PARAMS : RCPT_PARAMS;
  let out: string[] | null = null;
  for (let i = 0; i < params.length; i++) {
    const p = params[i]!;
    const key = keyOf(p);
    if (!Object.hasOwn(known, key)) throw replies.unknownParameter(key);
    if (key === 'BODY' && !/^BODY=(7BIT|8BITMIME)$/i.test(p)) throw replies.unknownParameter(p);
    if (key === 'AUTH' && !authenticated && p !== 'AUTH=<>') {
      out ??= params.slice(0, i);
      out.push('AUTH=<>');
      continue;
    }
    out?.push(p);
  }
  return out ?? params;
}

/** The parameters whose extension the next hop advertised (an EHLO keyword map, upper-case keys). */
export function forNextHop(params: readonly string[], extensions: ReadonlyMap<string, string>): readonly string[] {
  if (params.length === 0) return params;
  return params.filter((p) => {
    const key = keyOf(p);
    const ext = MAIL_PARAMS[key] ?? RCPT_PARAMS[key];
    return ext !== undefined && extensions.has(ext);
  });
}
