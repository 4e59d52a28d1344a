/**
 * src/config.ts: the embedded defaults, the documented names (docs/config.md), one ConfigError naming every wrong field
 * (STYLE H12), JSON and YAML files, BATV_PROXY_* environment overrides over the file, and redaction.
 */
import fs from 'node:fs';
import os from 'node:os';
import { Resolver } from 'node:dns';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, DEFAULTS, parseConfig, type Config } from '../src/config.js';
import { loadConfig, redacted } from '../src/config/load.js';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'batv-config-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, text);
  return p;
}

/** The ConfigError a call throws (the test fails when it does not throw one). */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError, got a config');
}

async function configErrorAsync(p: Promise<unknown>): Promise<ConfigError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError, got a config');
}

const problems = (input: unknown): readonly string[] => configError(() => parseConfig(input)).problems;

/** The documented example config (README, Configuration), verbatim. */
const EXAMPLE_CONFIG = {
  domains: ['example.com'],
  srs: { domain: 'fwd.example.net', maxAgeDays: 21 },
  batv: { maxAgeDays: 7 },
  outbound: { listen: '127.0.0.1:2525', relay: 'smtp://127.0.0.1:2600', allowNetworks: ['127.0.0.0/8', '::1/128'] },
  inbound: { listen: '127.0.0.1:2526', mailbox: 'smtp://127.0.0.1:2601', untaggedBounces: 'reject' },
  keys: { dir: 'keys' },
  metrics: { listen: '127.0.0.1:9425' },
};

const LOOPBACK_NETS = ['127.0.0.0/8', '::1/128'];

describe('parseConfig() defaults', () => {
  it('parses an empty object into the embedded defaults (loopback listeners, capture, no relay)', () => {
    const c = parseConfig({});
    expect(c.domains).toEqual(['example.com']);
    expect(c.hostname).toBe(os.hostname());
    expect(c.srs).toEqual({ domain: 'srs.example.com', maxAgeDays: 21, separator: '=', hashLength: 4, hashMin: 4, alphabet: 'base64', alwaysRewrite: false });
    expect(c.batv).toEqual({ maxAgeDays: 7 });
    expect(c.keys).toEqual({ dir: 'keys' });
    expect({ listen: c.outbound.listen, relay: c.outbound.relay, captureDir: c.outbound.captureDir, allowNetworks: c.outbound.allowNetworks, usersFile: c.outbound.usersFile })
      .toEqual({ listen: '127.0.0.1:2525', relay: null, captureDir: 'mail/outbox', allowNetworks: LOOPBACK_NETS, usersFile: null });
    expect({ listen: c.inbound.listen, mailbox: c.inbound.mailbox, captureDir: c.inbound.captureDir, untaggedBounces: c.inbound.untaggedBounces, graceUntil: c.inbound.graceUntil })
      .toEqual({ listen: '127.0.0.1:2526', mailbox: null, captureDir: 'mail/inbox', untaggedBounces: 'classify', graceUntil: null });
    expect(c.tls).toEqual({ key: null, cert: null });
    expect(c.relayAuth).toBe(null);
    expect(c.timeouts).toEqual({ connectMs: 10_000, greetingMs: 30_000, commandMs: 60_000, dataMs: 600_000, clientIdleMs: 660_000, clientDataMs: 3_600_000, dataGraceMs: 60_000 });
    expect(c.metrics).toEqual({ listen: '127.0.0.1:9425', token: null, tokenFile: null, usersFile: null });
  });

  it('parses the documented example under its names', () => {
    const c = parseConfig(EXAMPLE_CONFIG);
    expect(c.domains).toEqual(['example.com']);
    expect(c.srs.domain).toBe('fwd.example.net');
    expect(c.srs.maxAgeDays).toBe(21);
    expect(c.batv.maxAgeDays).toBe(7);
    expect(c.outbound.listen).toBe('127.0.0.1:2525');
    expect(c.outbound.relay).toEqual({ url: 'smtp://127.0.0.1:2600', host: '127.0.0.1', port: 2600, secure: false });
    expect(c.outbound.allowNetworks).toEqual(LOOPBACK_NETS);
    expect(c.inbound.listen).toBe('127.0.0.1:2526');
    expect(c.inbound.mailbox).toEqual({ url: 'smtp://127.0.0.1:2601', host: '127.0.0.1', port: 2601, secure: false });
    expect(c.inbound.untaggedBounces).toBe('reject');
    expect(c.keys.dir).toBe('keys');
    expect(c.metrics.listen).toBe('127.0.0.1:9425');
  });

  it('reads next hops: smtp:// defaults to port 25, smtps:// to 465 with implicit TLS, IPv6 literals unbracketed', () => {
    const c = parseConfig({ outbound: { relay: 'smtps://relay.example' }, inbound: { mailbox: 'smtp://[::1]' } });
    expect(c.outbound.relay).toEqual({ url: 'smtps://relay.example', host: 'relay.example', port: 465, secure: true });
    expect(c.inbound.mailbox).toEqual({ url: 'smtp://[::1]', host: '::1', port: 25, secure: false });
  });
});

describe('parseConfig() refuses bad settings', () => {
  it('names every invalid field in one ConfigError', () => {
    const e = configError(() => parseConfig({
      foo: 1,
      domains: ['Example.com'],
      srs: { domain: 'EXAMPLE.COM', hashMin: 9 },
      outbound: { listen: 'localhost', relay: 'http://relay.example', allowNetworks: ['10.0.0.0/33', 'nope'] },
      batv: { maxAgeDays: -1 },
      limits: { maxClients: 1.5 },
      tls: { key: 'k.pem' },
      timeouts: { clientIdleMs: 600_000 },
    }));
    // Unknown settings first, then the settings in the schema's order (each section's rules after its
    // settings), then the rules across sections.
    const expected = [
      'foo: unknown setting',
      'srs.hashMin: 9 is above srs.hashLength (4)',
      'batv.maxAgeDays: must be a whole number from 0 to 100 (found -1)',
      'outbound.listen: "localhost" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525',
      'outbound.relay: "http://relay.example" must start with smtp:// or smtps://',
      'outbound.allowNetworks: "10.0.0.0/33" has a prefix length outside 0-32',
      'outbound.allowNetworks: "nope" is not an address or address/bits range',
      'tls: set both key and cert, or neither',
      'limits.maxClients: must be a whole number from 1 to 100000 (found 1.5)',
      'timeouts.clientIdleMs: 600000 must be above timeouts.dataMs (600000) so the next hop\'s answer reaches the client first',
      'srs.domain: "EXAMPLE.COM" is one of our domains; SRS needs a domain of its own (e.g. srs.EXAMPLE.COM)',
    ];
    expect(e.problems).toEqual(expected);
    expect(e.message).toBe(`Invalid configuration:\n${expected.map((p) => `  - ${p}`).join('\n')}`);
    expect(e.name).toBe('ConfigError');
  });

  it('takes postmaster as an address, defaulting to postmaster@ the first domain', () => {
    expect(parseConfig({ domains: ['a.example', 'b.example'] }).postmaster).toBe('postmaster@a.example');
    expect(parseConfig({ postmaster: 'hostmaster@a.example' }).postmaster).toBe('hostmaster@a.example');
    expect(problems({ postmaster: 'hostmaster' })).toEqual(['postmaster: "hostmaster" is not an address (write user@domain)']);
  });

  it('refuses timeouts.dataGraceMs at or above timeouts.clientDataMs', () => {
    expect(problems({ timeouts: { clientDataMs: 60_000, dataGraceMs: 60_000 } })).toEqual(['timeouts.dataGraceMs: 60000 must be below timeouts.clientDataMs (60000)']);
  });

  it('refuses hashMin above hashLength', () => {
    expect(problems({ srs: { hashLength: 6, hashMin: 7 } })).toEqual(['srs.hashMin: 7 is above srs.hashLength (6)']);
  });

  it('refuses an srs.domain equal to one of domains in a different case', () => {
    expect(problems({ domains: ['a.example', 'Mail.Example.ORG'], srs: { domain: 'mail.example.org' } }))
      .toEqual(['srs.domain: "mail.example.org" is one of our domains; SRS needs a domain of its own (e.g. srs.mail.example.org)']);
  });

  it('refuses a listen address that is not host:port', () => {
    expect(problems({ inbound: { listen: '127.0.0.1' } })).toEqual(['inbound.listen: "127.0.0.1" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525']);
    expect(problems({ inbound: { listen: '127.0.0.1:70000' } })).toEqual(['inbound.listen: "127.0.0.1:70000" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525']);
    expect(problems({ metrics: { listen: '::1:9425' } })).toEqual(['metrics.listen: "::1:9425" must be host:port, e.g. 127.0.0.1:2525 or [::1]:2525']);
  });

  it('refuses the same listen address for both listeners', () => {
    expect(problems({ inbound: { listen: '127.0.0.1:2525' } })).toEqual(['inbound.listen: "127.0.0.1:2525" is also outbound.listen']);
  });

  it('refuses a next hop that is not an smtp:// or smtps:// URL', () => {
    expect(problems({ outbound: { relay: 'http://relay.example:25' }, inbound: { mailbox: 'mx.internal' } })).toEqual([
      'outbound.relay: "http://relay.example:25" must start with smtp:// or smtps://',
      'inbound.mailbox: "mx.internal" is not a URL; write smtp://host:port',
    ]);
  });

  it('refuses an unknown top-level setting', () => {
    expect(problems({ domain: ['example.com'] })).toEqual(['domain: unknown setting (did you mean "domains"?)']);
    expect(problems({ colour: 'blue' })).toEqual(['colour: unknown setting']);
  });

  it('refuses an unknown setting inside a section (a typo is never silently ignored)', () => {
    expect(problems({ srs: { maxAgeDay: 5 } })).toEqual(['srs.maxAgeDay: unknown setting (did you mean "maxAgeDays"?)']);
  });

  it('refuses negative and fractional numbers', () => {
    expect(problems({ srs: { maxAgeDays: -3 }, limits: { maxRecipients: 2.5 }, inbound: { dnsbl: { timeoutMs: 1e9 } } })).toEqual([
      'srs.maxAgeDays: must be a whole number from 1 to 1000 (found -3)',
      'inbound.dnsbl.timeoutMs: must be a whole number from 50 to 60000 (found 1000000000)',
      'limits.maxRecipients: must be a whole number from 1 to 100000 (found 2.5)',
    ]);
    expect(problems({ batv: { maxAgeDays: '7' } })).toEqual(['batv.maxAgeDays: must be a whole number from 0 to 100 (found "7")']);
  });

  it('refuses a bad CIDR in allowNetworks', () => {
    expect(problems({ outbound: { allowNetworks: ['192.0.2.0/24', '192.0.2.0/x', '2001:db8::/129', '192.0.2.300'] } })).toEqual([
      'outbound.allowNetworks: "192.0.2.0/x" has a prefix length outside 0-32',
      'outbound.allowNetworks: "2001:db8::/129" has a prefix length outside 0-128',
      'outbound.allowNetworks: "192.0.2.300" is not an address or address/bits range',
    ]);
  });

  it('refuses a TLS key without a certificate, and a certificate without a key', () => {
    expect(problems({ tls: { key: 'tls/key.pem' } })).toEqual(['tls: set both key and cert, or neither']);
    expect(problems({ tls: { cert: 'tls/cert.pem' } })).toEqual(['tls: set both key and cert, or neither']);
    expect(parseConfig({ tls: { key: 'tls/key.pem', cert: 'tls/cert.pem' } }).tls).toEqual({ key: 'tls/key.pem', cert: 'tls/cert.pem' });
  });

  it('refuses clientIdleMs at or below dataMs', () => {
    expect(problems({ timeouts: { dataMs: 60_000, clientIdleMs: 60_000 } }))
      .toEqual(['timeouts.clientIdleMs: 60000 must be above timeouts.dataMs (60000) so the next hop\'s answer reaches the client first']);
    expect(problems({ timeouts: { dataMs: 60_000, clientIdleMs: 30_000 } }))
      .toEqual(['timeouts.clientIdleMs: 30000 must be above timeouts.dataMs (60000) so the next hop\'s answer reaches the client first']);
    expect(parseConfig({ timeouts: { dataMs: 60_000, clientIdleMs: 60_001 } }).timeouts.clientIdleMs).toBe(60_001);
  });

  it('refuses an empty domains list, a bad domain and an unknown untaggedBounces mode', () => {
    expect(problems({ domains: [] })).toEqual(['domains: list at least one domain of ours']);
    expect(problems({ domains: ['exa mple.com'], inbound: { untaggedBounces: 'drop' } })).toEqual([
      'domains: "exa mple.com" is not a domain name',
      'inbound.untaggedBounces: must be one of "reject", "classify", "tag", "accept" (found "drop")',
    ]);
  });

  it('refuses a relayAuth without both user and pass', () => {
    expect(problems({ relayAuth: { user: 'u' } })).toEqual(['relayAuth: must be null or { "user": "...", "pass": "..." }']);
  });
});

describe('parseConfig() checks values that used to fail only later', () => {
  it('takes hostname as a domain name or an address literal (a bad one made every next-hop connection throw)', () => {
    for (const ok of ['mx1.example.com', 'MX-1.Example.COM', 'localhost', '[192.0.2.1]', '[IPv6:2001:db8::1]', `${'a'.repeat(63)}.example`]) {
      expect(parseConfig({ hostname: ok }).hostname).toBe(ok);
    }
    const literalHint = '(write [192.0.2.1] or [IPv6:2001:db8::1])';
    const nameHint = 'is not a domain name (letters, digits, hyphens and dots, e.g. mx1.example.com) or an address literal ([192.0.2.1])';
    expect(problems({ hostname: 'mx_1.example.com' })).toEqual([`hostname: "mx_1.example.com" ${nameHint}`]);
    expect(problems({ hostname: 'mx1.example.com.' })).toEqual([`hostname: "mx1.example.com." ${nameHint}`]);
    expect(problems({ hostname: '-mx.example.com' })).toEqual([`hostname: "-mx.example.com" ${nameHint}`]);
    expect(problems({ hostname: 'mx1 example.com' })).toEqual([`hostname: "mx1 example.com" ${nameHint}`]);
    expect(problems({ hostname: '192.0.2.1' })).toEqual(['hostname: "192.0.2.1" is an IP address; write it as an address literal, [192.0.2.1]']);
    expect(problems({ hostname: '2001:db8::1' })).toEqual(['hostname: "2001:db8::1" is an IP address; write it as an address literal, [IPv6:2001:db8::1]']);
    expect(problems({ hostname: '[192.0.2.300]' })).toEqual([`hostname: "[192.0.2.300]" is not an address literal ${literalHint}`]);
    expect(problems({ hostname: '[2001:db8::1]' })).toEqual([`hostname: "[2001:db8::1]" is not an address literal ${literalHint}`]);
    expect(problems({ hostname: `${'a'.repeat(64)}.example` })).toEqual([`hostname: "${'a'.repeat(57)}..." has a label longer than 63 characters`]);
    expect(problems({ hostname: Array(64).fill('abc').join('.') })).toEqual([`hostname: "${'abc.'.repeat(14)}a..." is longer than 253 characters`]);
    expect(problems({ hostname: '' })).toEqual(['hostname: must be a non-empty string (found "")']);
  });

  it('defaults hostname to this machine\'s name, which parses', () => {
    expect(DEFAULTS.hostname).toBe(os.hostname());
    expect(parseConfig({}).hostname).toBe(os.hostname());
  });

  it('takes inbound.dnsbl.servers in the forms dns.Resolver#setServers takes, with a port from 1 to 65535', () => {
    const servers = ['192.0.2.53', '192.0.2.53:5353', '2001:db8::53', '[2001:db8::53]', '[2001:db8::53]:53'];
    const c = parseConfig({ inbound: { dnsbl: { servers } } });
    expect(c.inbound.dnsbl.servers).toEqual(servers);
    expect(() => new Resolver().setServers([...c.inbound.dnsbl.servers])).not.toThrow();
    const form = 'is not an IP address, optionally with a port (e.g. 192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)';
    expect(problems({ inbound: { dnsbl: { servers: ['dns.example', '192.0.2.300', '[192.0.2.53]:53', '192.0.2.53:', '192.0.2.53:0', '[2001:db8::53]:65536'] } } })).toEqual([
      `inbound.dnsbl.servers: "dns.example" ${form}`,
      `inbound.dnsbl.servers: "192.0.2.300" ${form}`,
      `inbound.dnsbl.servers: "[192.0.2.53]:53" ${form}`,
      `inbound.dnsbl.servers: "192.0.2.53:" ${form}`,
      'inbound.dnsbl.servers: "192.0.2.53:0" has a port outside 1-65535',
      'inbound.dnsbl.servers: "[2001:db8::53]:65536" has a port outside 1-65535',
    ]);
  });

  it('takes inbound.dnsbl.zone as a domain name', () => {
    expect(parseConfig({ inbound: { dnsbl: { zone: 'bl.example.net' } } }).inbound.dnsbl.zone).toBe('bl.example.net');
    expect(problems({ inbound: { dnsbl: { zone: 'bl..example.net' } } })).toEqual(['inbound.dnsbl.zone: "bl..example.net" is not a domain name']);
    expect(problems({ inbound: { dnsbl: { zone: 'ips.backscatterer.org.' } } })).toEqual(['inbound.dnsbl.zone: "ips.backscatterer.org." is not a domain name']);
  });

  it('takes outbound.exemptSenders and exemptRecipients entries as addresses or domains (example.com or @example.com)', () => {
    const c = parseConfig({ outbound: { exemptSenders: ['noreply@example.com', 'Lists.Example.NET', '@example.org'], exemptRecipients: ['"list owner"@example.org', 'lists.example.net'] } });
    expect([c.outbound.exemptSenders, c.outbound.exemptRecipients]).toEqual([['noreply@example.com', 'Lists.Example.NET', '@example.org'], ['"list owner"@example.org', 'lists.example.net']]);
    const nor = 'is neither an address (local@domain) nor a domain (example.com or @example.com)';
    expect(problems({ outbound: { exemptSenders: ['noreply@', '@', '@@example.com', '<noreply@example.com>'], exemptRecipients: ['lists example', 'lists.example.net.', 5] } })).toEqual([
      `outbound.exemptSenders: "noreply@" ${nor}`,
      `outbound.exemptSenders: "@" ${nor}`,
      `outbound.exemptSenders: "@@example.com" ${nor}`,
      `outbound.exemptSenders: "<noreply@example.com>" ${nor}`,
      `outbound.exemptRecipients: "lists example" ${nor}`,
      `outbound.exemptRecipients: "lists.example.net." ${nor}`,
      'outbound.exemptRecipients: must be a list of non-empty strings; 5 is not one',
    ]);
  });

  it('keeps clientIdleMs above every next-hop wait (connect, greeting, command, data), naming the longest', () => {
    const idle = (wait: string, ms: number) => `timeouts.clientIdleMs: 660000 must be above timeouts.${wait} (${ms}) so the next hop's answer reaches the client first`;
    expect(problems({ timeouts: { commandMs: 700_000 } })).toEqual([idle('commandMs', 700_000)]);
    expect(problems({ timeouts: { commandMs: 660_000 } })).toEqual([idle('commandMs', 660_000)]);
    expect(problems({ timeouts: { connectMs: 600_000, greetingMs: 600_000, dataMs: 100_000, clientIdleMs: 600_000 } }))
      .toEqual(['timeouts.clientIdleMs: 600000 must be above timeouts.greetingMs (600000) so the next hop\'s answer reaches the client first']);
    expect(problems({ timeouts: { connectMs: 600_000, dataMs: 100_000, clientIdleMs: 500_000 } }))
      .toEqual(['timeouts.clientIdleMs: 500000 must be above timeouts.connectMs (600000) so the next hop\'s answer reaches the client first']);
    expect(problems({ timeouts: { commandMs: 900_000, dataMs: 800_000 } })).toEqual([idle('commandMs', 900_000)]);
    // A wait that is itself wrong is reported once, and not compared.
    expect(problems({ timeouts: { commandMs: 'long', dataMs: 800_000 } })).toEqual([
      'timeouts.commandMs: must be a whole number from 100 to 3600000 (found "long")',
      idle('dataMs', 800_000),
    ]);
    expect(parseConfig({ timeouts: { connectMs: 600_000, greetingMs: 600_000, commandMs: 3_000_000, dataMs: 3_000_000, clientIdleMs: 3_000_001 } }).timeouts.clientIdleMs).toBe(3_000_001);
  });

  it('suggests the nearest setting for an unknown one when it is close (case, "_" and "-" aside)', () => {
    expect(problems({ outbound: { rely: 'smtp://relay.example' } })).toEqual(['outbound.rely: unknown setting (did you mean "relay"?)']);
    expect(problems({ tsl: {} })).toEqual(['tsl: unknown setting (did you mean "tls"?)']);
    expect(problems({ srs: { max_age_days: 5 } })).toEqual(['srs.max_age_days: unknown setting (did you mean "maxAgeDays"?)']);
    expect(problems({ inbound: { dnsbl: { Zone: 'x.example' } } })).toEqual(['inbound.dnsbl.Zone: unknown setting (did you mean "zone"?)']);
    expect(problems({ relayAuth: { user: 'u', pass: 'p', passwd: 'p' } })).toEqual(['relayAuth.passwd: unknown setting (did you mean "pass"?)']);
    expect(problems({ outbound: { relayHost: 'x' }, foo: 1 })).toEqual(['outbound.relayHost: unknown setting', 'foo: unknown setting']);
  });

  it('refuses a section that is not an object of settings', () => {
    expect(problems({ srs: 5, timeouts: [], log: null })).toEqual([
      'timeouts: must be an object of settings (found a list)',
      'srs: must be an object of settings (found 5)',
      'log: must be an object of settings (found null)',
    ]);
  });

  it('exports the embedded defaults as the schema holds them (network lists as text, postmaster unset)', () => {
    expect(DEFAULTS.outbound.allowNetworks).toEqual(['127.0.0.0/8', '::1/128']);
    expect(DEFAULTS.limits.bareLineEndsExempt).toEqual([]);
    expect([DEFAULTS.postmaster, DEFAULTS.outbound.relay, DEFAULTS.relayAuth, DEFAULTS.timeouts.clientIdleMs]).toEqual([null, null, null, 660_000]);
    expect(Object.isFrozen(DEFAULTS.outbound.allowNetworks)).toBe(true);
  });
});

describe('loadConfig() files', () => {
  const YAML = [
    'domains:',
    '  - example.com',
    '  - example.org',
    'srs:',
    '  domain: fwd.example.net',
    '  separator: "+"',
    'outbound:',
    '  relay: smtp://relay.example:2600',
    'inbound:',
    '  untaggedBounces: classify',
    '',
  ].join('\n');
  const JSON_TEXT = JSON.stringify({
    domains: ['example.com', 'example.org'],
    srs: { domain: 'fwd.example.net', separator: '+' },
    outbound: { relay: 'smtp://relay.example:2600' },
    inbound: { untaggedBounces: 'classify' },
  }, null, 2);

  it('loads YAML and JSON files to the same config', async () => {
    const fromYaml = await loadConfig(write('c.yaml', YAML));
    const fromJson = await loadConfig(write('c.json', JSON_TEXT));
    expect(fromYaml).toEqual(fromJson);
    expect(fromYaml.domains).toEqual(['example.com', 'example.org']);
    expect(fromYaml.srs.separator).toBe('+');
    expect(fromYaml.outbound.relay).toEqual({ url: 'smtp://relay.example:2600', host: 'relay.example', port: 2600, secure: false });
    expect(fromYaml.inbound.untaggedBounces).toBe('classify');
  });

  it('loads a JSON file indented with tabs', async () => {
    const c = await loadConfig(write('tabs.json', '{\n\t"domains": ["a.example"],\n\t"srs": {\n\t\t"domain": "fwd.example.net"\n\t}\n}\n'));
    expect([c.domains, c.srs.domain]).toEqual([['a.example'], 'fwd.example.net']);
  });

  it('treats an empty file as no settings', async () => {
    expect((await loadConfig(write('empty.yaml', ''))).domains).toEqual(['example.com']);
  });

  it('names the file when it cannot be read', async () => {
    const missing = path.join(tmp, 'missing.yaml');
    const e = await configErrorAsync(loadConfig(missing));
    expect(e.problems).toEqual([`cannot read ${missing}: ENOENT: no such file or directory, open '${missing}'`]);
    expect(e.message).toBe(`Invalid configuration ${missing}:\n  - cannot read ${missing}: ENOENT: no such file or directory, open '${missing}'`);
    const e2 = await configErrorAsync(loadConfig(tmp));
    expect(e2.problems).toEqual([`cannot read ${tmp}: EISDIR: illegal operation on a directory, read`]);
  });

  it('names the file, the line and the column when it cannot be parsed (the yaml library\'s first line, not the text)', async () => {
    const cases = [
      ['bad.yaml', 'domains: [a.example\n', '2:1: Flow sequence in block collection must be sufficiently indented and end with a ]'],
      ['bad.json', '{"domains": ["a.example"],,}', '1:27: Unexpected , in flow map'],
      ['nested.yaml', 'srs:\n  domain: a: b\n', '2:11: Nested mappings are not allowed in compact mappings'],
    ] as const;
    for (const [name, text, where] of cases) {
      const file = write(name, text);
      const e = await configErrorAsync(loadConfig(file));
      expect(e.problems).toEqual([`cannot parse ${file}:${where}`]);
      expect(e.message).toBe(`Invalid configuration ${file}:\n  - cannot parse ${file}:${where}`);
    }
  });

  it('refuses a file that does not hold an object of settings', async () => {
    const file = write('list.yaml', '- a\n- b\n');
    expect((await configErrorAsync(loadConfig(file))).problems).toEqual([`${file} must hold an object of settings`]);
  });

  it('names the file together with every bad field in it', async () => {
    const file = write('bad-fields.json', JSON.stringify({ batv: { maxAgeDays: 500 }, outbound: { relay: 'ftp://x' } }));
    const e = await configErrorAsync(loadConfig(file));
    expect(e.problems).toEqual(['batv.maxAgeDays: must be a whole number from 0 to 100 (found 500)', 'outbound.relay: "ftp://x" must start with smtp:// or smtps://']);
    expect(e.message).toBe(`Invalid configuration ${file}:\n  - batv.maxAgeDays: must be a whole number from 0 to 100 (found 500)\n  - outbound.relay: "ftp://x" must start with smtp:// or smtps://`);
  });
});

describe('loadConfig() environment overrides', () => {
  it('BATV_PROXY_OUTBOUND__RELAY, BATV_PROXY_DOMAINS and BATV_PROXY_INBOUND__UNTAGGED_BOUNCES apply over the file', async () => {
    const file = write('env.json', JSON.stringify({ domains: ['file.example'], outbound: { relay: 'smtp://file-relay.example:25' }, inbound: { untaggedBounces: 'reject' }, srs: { domain: 'fwd.example.net' } }));
    const c = await loadConfig(file, {
      BATV_PROXY_OUTBOUND__RELAY: 'smtp://mx.internal:2525',
      BATV_PROXY_DOMAINS: 'a.example,b.example',
      BATV_PROXY_INBOUND__UNTAGGED_BOUNCES: 'classify',
    });
    expect(c.outbound.relay).toEqual({ url: 'smtp://mx.internal:2525', host: 'mx.internal', port: 2525, secure: false });
    expect(c.domains).toEqual(['a.example', 'b.example']);
    expect(c.inbound.untaggedBounces).toBe('classify');
    expect(c.srs.domain).toBe('fwd.example.net');
  });

  it('applies over the defaults without a file, converting numbers, booleans and null', async () => {
    const c = await loadConfig(null, {
      BATV_PROXY_DOMAINS: 'solo.example',
      BATV_PROXY_BATV__MAX_AGE_DAYS: '10',
      BATV_PROXY_SRS__ALWAYS_REWRITE: 'true',
      BATV_PROXY_SRS__DOMAIN: 'null',
      BATV_PROXY_OUTBOUND__ALLOW_NETWORKS: '10.0.0.0/8, 192.0.2.7',
      BATV_PROXY_CONFIG: '/not/read/here.yaml',
      PATH: '/usr/bin',
    });
    expect(c.domains).toEqual(['solo.example']);
    expect(c.batv.maxAgeDays).toBe(10);
    expect(c.srs.alwaysRewrite).toBe(true);
    expect(c.srs.domain).toBe(null);
    expect(c.outbound.allowNetworks).toEqual(['10.0.0.0/8', '192.0.2.7']);
  });

  it('names a bad value that came from the environment', async () => {
    const e = await configErrorAsync(loadConfig(null, { BATV_PROXY_INBOUND__UNTAGGED_BOUNCES: 'sometimes' }));
    expect(e.problems).toEqual(['BATV_PROXY_INBOUND__UNTAGGED_BOUNCES (inbound.untaggedBounces): must be one of "reject", "classify", "tag", "accept" (found "sometimes")']);
  });

  it('names the variable a bad value came from', async () => {
    const e = await configErrorAsync(loadConfig(null, { BATV_PROXY_OUTBOUND__RELAY: 'foo', BATV_PROXY_TIMEOUTS__COMMAND_MS: 'slow' }));
    expect(e.problems).toEqual([
      'BATV_PROXY_OUTBOUND__RELAY (outbound.relay): "foo" is not a URL; write smtp://host:port',
      'BATV_PROXY_TIMEOUTS__COMMAND_MS (timeouts.commandMs): must be a whole number from 100 to 3600000 (found "slow")',
    ]);
    const half = await configErrorAsync(loadConfig(null, { BATV_PROXY_RELAY_AUTH__USER: 'relay-user' }));
    expect(half.problems).toEqual(['BATV_PROXY_RELAY_AUTH__USER (relayAuth): must be null or { "user": "...", "pass": "..." }']);
  });

  it('refuses a variable naming no setting, with the nearest variable that does, together with the file\'s problems', async () => {
    const file = write('env-typos.json', JSON.stringify({ batv: { maxAgeDays: 500 } }));
    const e = await configErrorAsync(loadConfig(file, {
      BATV_PROXY_OUTBOUND__RELY: 'smtp://relay.example',
      BATV_PROXY_TIMEOUTS__DATAMS: '5000',
      BATV_PROXY_COLOUR: 'blue',
      BATV_PROXY_DOMAINS__PRIMARY: 'example.com',
      BATV_PROXY_SRS__DOMAIN: 'srs.example.net',
    }));
    expect(e.problems).toEqual([
      'BATV_PROXY_OUTBOUND__RELY: no setting outbound.rely (did you mean BATV_PROXY_OUTBOUND__RELAY?)',
      'BATV_PROXY_TIMEOUTS__DATAMS: no setting timeouts.datams (did you mean BATV_PROXY_TIMEOUTS__DATA_MS?)',
      'BATV_PROXY_COLOUR: no setting colour',
      'BATV_PROXY_DOMAINS__PRIMARY: no setting domains.primary',
      'batv.maxAgeDays: must be a whole number from 0 to 100 (found 500)',
    ]);
    expect(e.message.split('\n')[0]).toBe(`Invalid configuration ${file}:`);
  });

  it('keeps a relay password made of digits a string', async () => {
    const c = await loadConfig(null, { BATV_PROXY_RELAY_AUTH__USER: 'relay-user', BATV_PROXY_RELAY_AUTH__PASS: '20261122' });
    expect(c.relayAuth).toEqual({ user: 'relay-user', pass: '20261122' });
  });

  it('splits every list setting at commas, inbound.dnsbl.servers included', async () => {
    const c = await loadConfig(null, { BATV_PROXY_INBOUND__DNSBL__SERVERS: '192.0.2.53,192.0.2.54' });
    expect(c.inbound.dnsbl.servers).toEqual(['192.0.2.53', '192.0.2.54']);
  });
});

describe('redacted()', () => {
  const withAuth = (): Config => parseConfig({ ...EXAMPLE_CONFIG, relayAuth: { user: 'relay-user', pass: 'hunter2-pass' } });

  it('hides the relay password and keeps the user', () => {
    const r = redacted(withAuth()) as { relayAuth: unknown };
    expect(r.relayAuth).toEqual({ user: 'relay-user', pass: '***' });
    expect(JSON.stringify(r).includes('hunter2-pass')).toBe(false);
  });

  it('prints networks as the text that was configured', () => {
    const r = redacted(withAuth()) as { outbound: { allowNetworks: unknown } };
    expect(r.outbound.allowNetworks).toEqual(['127.0.0.0/8', '::1/128']);
  });

  it('keeps relayAuth null when there is none', () => {
    expect((redacted(parseConfig({})) as { relayAuth: unknown }).relayAuth).toBe(null);
  });

  it('hides a password written into a next-hop URL', () => {
    let c: Config | ConfigError;
    try {
      c = parseConfig({ outbound: { relay: 'smtp://relay-user:hunter2-pass@relay.example:587' } });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      c = e; // refusing credentials in the URL is fine too, as long as the error does not print them
    }
    const shown = c instanceof ConfigError ? c.message : JSON.stringify(redacted(c));
    expect(shown.includes('hunter2-pass')).toBe(false);
  });
});
