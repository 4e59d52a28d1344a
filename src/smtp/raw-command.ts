/**
 * The MAIL/RCPT address and parameters exactly as the client sent them.
 *
 * smtp-server hands hooks a normalised address: it converts A-label domains to Unicode
 * (user@xn--bcher-kva.example arrives as user@bücher.example), normalises IPv6 literals, and
 * xtext-decodes parameter values. A tag must be computed over the bytes the next hop and the eventual
 * bounce will carry, and parameters must pass through unchanged, so the relay needs the raw text.
 * smtp-server exposes its connection class (`smtp-server/lib/smtp-connection.js`); this wraps its address
 * parser once so that every parsed address also carries `raw` (address as sent, source route removed)
 * and `rawParams` (each parameter token as sent). test/smtp/raw-command.test.ts pins the behaviour, so an
 * upgrade of smtp-server that renames the method fails loudly rather than silently signing wrong bytes.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

export interface RawAddress {
  /** The address between the angle brackets, as sent, without a source route ('' for <>). */
  readonly raw: string;
  /** The parameter tokens after the path, as sent (e.g. ["SIZE=1234", "BODY=8BITMIME"]). */
  readonly rawParams: readonly string[];
}

const RAW = Symbol.for('batv-proxy.raw-command');

/** Splits "MAIL FROM:<addr> P1 P2" the same way smtp-server does, keeping the original text. */
export function splitAddressCommand(command: string): RawAddress | null {
  const colon = command.indexOf(':');
  if (colon < 0) return null;
  const rest = command.slice(colon + 1).trim();
  const tokens = rest.split(/\s+/);
  const path = tokens.shift() ?? '';
  if (!/^<[^<>]*>$/.test(path)) return null;
  const raw = path.slice(1, -1).replace(/^@[^\s,:@]+(?:,@[^\s,:@]+)*:/, '');
  return { raw, rawParams: tokens.filter((t) => t !== '') };
}

type Parser = (this: unknown, name: string, command: unknown) => unknown;

/** Installs the capture (idempotent). @throws Error when smtp-server no longer has the method. */
export function installRawCommandCapture(): void {
  const proto = (SMTPConnection as unknown as { prototype: Record<string | symbol, unknown> }).prototype;
  if (proto[RAW]) return;
  const original = proto._parseAddressCommand as Parser | undefined;
  if (typeof original !== 'function') {
    throw new Error('smtp-server has no _parseAddressCommand; this version is not supported (raw addresses cannot be captured)');
  }
  proto._parseAddressCommand = function (this: unknown, name: string, command: unknown): unknown {
    const parsed = original.call(this, name, command);
    if (parsed && typeof parsed === 'object') {
      const split = splitAddressCommand(String(command ?? ''));
      if (split) Object.defineProperty(parsed, RAW, { value: split, enumerable: false });
    }
    return parsed;
  };
  proto[RAW] = true;
}

/** The raw form of an address object handed to onMailFrom/onRcptTo (falls back to the parsed one). */
export function rawOf(parsed: { address: string }): RawAddress {
  const r = (parsed as unknown as Record<symbol, RawAddress | undefined>)[RAW];
  return r ?? { raw: parsed.address, rawParams: [] };
}
