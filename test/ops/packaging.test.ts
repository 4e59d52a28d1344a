/**
 * Packaging for production (issue 13.8): what `npm pack` ships and that the package installs globally and
 * runs; the systemd unit in contrib/systemd (its directives, `systemd-analyze verify` and `security` when
 * systemd-analyze is on the machine); the Prometheus rules in contrib/prometheus (`promtool check rules`,
 * `promtool test rules` with the unit-test file beside them, and every metric they read is one the proxy
 * exports); the Grafana dashboard in contrib/grafana (JSON, its PromQL parses, its metrics exist, ids and
 * uids are unique, no two panels overlap).
 *
 * The names the proxy exports are read from a real proxy's /metrics (the `# TYPE` lines, so a counter that
 * has not been counted yet is there too; a histogram's _bucket/_sum/_count count as its name).
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { cleanEnv, ensureBuilt, freePort, REPO, run, type RunResult } from '../helpers/proc.js';
import { peerBinary } from '../helpers/peer-bin.js';
import { shouldRun } from '../helpers/peers.js';
import { startTestProxy } from '../helpers/proxy.js';
import { closeTestProxy } from '../helpers/test-proxy-cleanup.js';
import { talk } from '../helpers/talk.js';
import { DEFAULTS } from '../../src/config.js';
import { loadConfig } from '../../src/config/load.js';

const CONTRIB = path.join(REPO, 'contrib');
const UNIT = path.join(CONTRIB, 'systemd', 'batv-proxy.service');
const EXAMPLE_CONFIG = path.join(CONTRIB, 'systemd', 'config.yaml');
const RULES = path.join(CONTRIB, 'prometheus', 'batv-proxy-rules.yml');
const RULES_TEST = path.join(CONTRIB, 'prometheus', 'batv-proxy-rules.test.yml');
const DASHBOARD = path.join(CONTRIB, 'grafana', 'batv-proxy-dashboard.json');

/** The environment for npm: no BATV_PROXY_*, and none of the npm_* variables `npm test`/npx set for us. */
const npmEnv = (): Record<string, string> => Object.fromEntries(Object.entries(cleanEnv()).filter(([k]) => !/^npm_/i.test(k)));
const npm = (args: readonly string[], timeoutMs = 120_000, cwd = REPO): Promise<RunResult> => run('npm', args, { cwd, env: npmEnv(), timeoutMs });

// ---------------------------------------------------------------------------------------------------------
// What the proxy exports

/** Metric names in a /metrics text: every `# TYPE` family, and a histogram's _bucket, _sum and _count. */
function namesIn(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]!);
    if (m[2] === 'histogram' || m[2] === 'summary') for (const s of ['_bucket', '_sum', '_count']) names.add(`${m[1]!}${s}`);
  }
  return names;
}

let exported: Set<string> | undefined;
/** The names a real proxy's /metrics lists (in-process proxy, metrics listener on a free loopback port). */
async function exportedNames(): Promise<Set<string>> {
  if (exported) return exported;
  const { proxy } = await startTestProxy({ metrics: { listen: '127.0.0.1:0' } });
  try {
    const a = proxy.metricsAddress!;
    const r = await fetch(`http://${a.host}:${a.port}/metrics`);
    expect(r.status).toBe(200);
    exported = namesIn(await r.text());
  } finally {
    await closeTestProxy(proxy);
  }
  return exported;
}

/** Series Prometheus adds itself for every target (not the proxy's). */
const PROMETHEUS_SERIES = new Set(['up']);
const PROMQL_WORDS = new Set(['and', 'or', 'unless', 'offset', 'bool', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects: string literals, label matchers `{...}`, ranges `[...]`
 * and grouping lists `by (...)` removed, then every identifier that is not a function (followed by "("),
 * a keyword or a number.
 */
function metricNamesIn(expr: string): string[] {
  let e = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/\{[^}]*\}/g, ' ').replace(/\[[^\]]*\]/g, ' ');
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of e.matchAll(/(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?/g)) {
    if (m[2] || PROMQL_WORDS.has(m[1]!.toLowerCase())) continue;
    names.add(m[1]!);
  }
  return [...names];
}

describe('metricNamesIn (the extraction the rule and dashboard checks rely on)', () => {
  it('finds the selected metrics and nothing else', () => {
    expect(metricNamesIn('histogram_quantile(0.99, sum by (le, role) (rate(batv_proxy_stage_seconds_bucket{instance=~"$instance", x="a{b}"}[$__rate_interval])))'))
      .toEqual(['batv_proxy_stage_seconds_bucket']);
    expect(metricNamesIn('rec:a:rate5m > 0.1 and rec:a:rate5m > 5 * avg_over_time(rec:a:rate5m[1d] offset 1h) or up{job="x"} == 0'))
      .toEqual(['rec:a:rate5m', 'up']);
    expect(metricNamesIn('sum(rate(foo_total[5m])) by (instance) / ignoring(x) bar')).toEqual(['foo_total', 'bar']);
  });
});

// ---------------------------------------------------------------------------------------------------------
// npm pack

interface PackFile { path: string; mode: number }

describe('npm pack: what the package contains', () => {
  let files: PackFile[];
  beforeAll(async () => {
    ensureBuilt();
    // --ignore-scripts: dist/ is built above (prepare would run the same tsc again).
    const r = await npm(['pack', '--dry-run', '--json', '--ignore-scripts']);
    expect(r.code, r.stderr).toBe(0);
    files = (JSON.parse(r.stdout) as Array<{ files: PackFile[] }>)[0]!.files;
  }, 150_000);

  it('has exactly bin/, dist/, docs/, contrib/, README.md and package.json at the top', () => {
    const top = [...new Set(files.map((f) => f.path.split('/')[0]!))].sort();
    expect(top).toEqual(['README.md', 'bin', 'contrib', 'dist', 'docs', 'package.json']);
    expect(files.filter((f) => /(^|\/)(src|test|keys|mail|\.peers|node_modules)\//.test(f.path) || f.path.endsWith('.ts'))).toEqual([]);
  });

  it('ships the bin package.json names, and dist/ holds exactly one .js and its .map per source file (nothing stale)', () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string>; files: string[] };
    expect(pkg.bin).toEqual({ 'batv-proxy': 'bin/batv-proxy.js' });
    expect(files.map((f) => f.path)).toContain('bin/batv-proxy.js');
    expect(readFileSync(path.join(REPO, 'bin/batv-proxy.js'), 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
    const sources: string[] = [];
    const walk = (dir: string, rel: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(path.join(dir, e.name), `${rel}${e.name}/`);
        else if (e.name.endsWith('.ts')) sources.push(`${rel}${e.name.slice(0, -3)}`);
      }
    };
    walk(path.join(REPO, 'src'), '');
    const want = sources.flatMap((s) => [`dist/${s}.js`, `dist/${s}.js.map`]).sort();
    // tsc never deletes: a file left from a source that is gone would be packed too (rm -rf dist && npm run build).
    expect(files.map((f) => f.path).filter((p) => p.startsWith('dist/')).sort(), 'dist/ is not exactly the build of src/').toEqual(want);
    // The maps are kept because every .js names its map (node --enable-source-maps turns stack traces into src/ lines).
    for (const s of sources) expect(readFileSync(path.join(REPO, 'dist', `${s}.js`), 'utf8')).toContain(`//# sourceMappingURL=${path.basename(s)}.js.map`);
  });

  it('ships the docs and everything in contrib/', () => {
    const paths = files.map((f) => f.path);
    for (const f of ['docs/production.md', 'docs/config.md', 'contrib/systemd/batv-proxy.service', 'contrib/systemd/config.yaml',
      'contrib/prometheus/batv-proxy-rules.yml', 'contrib/prometheus/batv-proxy-rules.test.yml', 'contrib/grafana/batv-proxy-dashboard.json']) {
      expect(paths).toContain(f);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// npm install -g from the tarball, then run it

interface Running {
  readonly pid: number;
  readonly lines: Array<Record<string, unknown>>;
  waitFor(match: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

/**
 * `file ...args` with its JSON log lines collected. (test/helpers/proc.ts startServe runs the repo's
 * bin/batv-proxy.js only; this runs the installed copy.)
 */
function spawnLogged(file: string, args: readonly string[], cwd: string): Running {
  const child = spawn(file, [...args], { cwd, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`cannot spawn ${file}`);
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  let err = '';
  let gone = false;
  const wake = new Set<() => void>();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => {
    gone = true;
    resolve({ code, signal });
    for (const w of wake) w();
  }));
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try { lines.push(JSON.parse(line) as Record<string, unknown>); } catch { lines.push({ unparsed: line }); }
    }
    for (const w of wake) w();
  });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString('utf8'); });
  const waitFor = (match: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => { wake.delete(check); reject(new Error(`no such log line in ${timeoutMs} ms: ${JSON.stringify(lines)} ${err}`)); }, timeoutMs);
    function check(): void {
      const l = lines.find(match);
      if (!l && !gone) return;
      wake.delete(check);
      clearTimeout(timer);
      if (l) resolve(l);
      else reject(new Error(`process exited without the log line: ${JSON.stringify(lines)} ${err}`));
    }
    wake.add(check);
    check();
  });
  return { pid: child.pid, lines, waitFor, exited, stderr: () => err };
}

describe('npm install -g of the packed tarball', () => {
  let tmp: string;
  let prefix: string;
  let installed: string; // <prefix>/lib/node_modules/batv-proxy
  let proxy: Running | undefined;

  beforeAll(async () => {
    ensureBuilt();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'batv-pack-'));
    prefix = path.join(tmp, 'prefix');
    const packed = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', tmp]);
    expect(packed.code, packed.stderr).toBe(0);
    const tgz = path.join(tmp, (JSON.parse(packed.stdout) as Array<{ filename: string }>)[0]!.filename);
    // The dependencies come from npm's cache (npm ci filled it); the registry only for what is missing.
    const r = await npm(['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel', 'error', tgz], 240_000, tmp);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    installed = path.join(prefix, 'lib', 'node_modules', 'batv-proxy');
  }, 300_000);

  afterAll(async () => {
    if (proxy) {
      try { process.kill(proxy.pid, 'SIGKILL'); } catch { /* exited */ }
      await proxy.exited;
    }
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('installs the package where the systemd unit expects it (relative to the prefix) with its runtime dependencies only', () => {
    const unit = readFileSync(UNIT, 'utf8');
    const exec = /^ExecStart=(\S+) (\S+) /m.exec(unit)!;
    expect(exec[2]).toBe('/usr/lib/node_modules/batv-proxy/bin/batv-proxy.js');
    expect(existsSync(path.join(prefix, path.relative('/usr', exec[2]!)))).toBe(true);
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    for (const d of Object.keys(pkg.dependencies)) expect(existsSync(path.join(installed, 'node_modules', d, 'package.json')), d).toBe(true);
    for (const d of ['typescript', 'vitest', 'tsx']) expect(existsSync(path.join(installed, 'node_modules', d)), d).toBe(false);
    expect(existsSync(path.join(installed, 'src'))).toBe(false);
  });

  it('<prefix>/bin/batv-proxy --help lists the verbs and exits 0', async () => {
    const r = await run(path.join(prefix, 'bin', 'batv-proxy'), ['--help'], { cwd: tmp });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe('Usage: batv-proxy <verb> [options]');
    expect(r.stdout).toContain('  batv-proxy serve [--config FILE]\n');
    expect(r.stdout).toContain('  batv-proxy keys init|list|rotate|retire|import [--dir DIR] [options]\n');
  });

  it('keys init, then serve (node <package>/bin/batv-proxy.js, as the unit runs it): signs a sender, serves /metrics and the status page assets, reloads on SIGHUP and exits 0 on SIGTERM', async () => {
    const keys = path.join(tmp, 'keys');
    const init = await run(path.join(prefix, 'bin', 'batv-proxy'), ['keys', 'init', '--dir', keys], { cwd: tmp });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toMatch(new RegExp(`^Created ${keys.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/keyring\\.json with signing key 0 \\(\\S+\\)\\n$`));
    expect(statSync(path.join(keys, 'keyring.json')).mode & 0o777).toBe(0o600);

    const ports: number[] = [];
    for (let i = 0; i < 3; i++) ports.push(await freePort(ports));
    const [out, inn, met] = ports as [number, number, number];
    const config = path.join(tmp, 'config.yaml');
    writeFileSync(config, [
      'domains: [example.com]', 'hostname: mx.example.com', 'srs: { domain: srs.example.com }',
      `keys: { dir: ${keys} }`,
      `outbound: { listen: "127.0.0.1:${out}", captureDir: ${path.join(tmp, 'mail', 'outbox')} }`,
      `inbound: { listen: "127.0.0.1:${inn}", captureDir: ${path.join(tmp, 'mail', 'inbox')} }`,
      `metrics: { listen: "127.0.0.1:${met}" }`, 'log: { level: info }', '',
    ].join('\n'));
    proxy = spawnLogged(process.execPath, [path.join(installed, 'bin', 'batv-proxy.js'), 'serve', '--config', config], tmp);
    expect((await proxy.waitFor((l) => l.msg === 'outbound listening')).outbound).toBe(`127.0.0.1:${out}`);
    expect((await proxy.waitFor((l) => l.msg === 'inbound listening')).inbound).toBe(`127.0.0.1:${inn}`);

    const t = talk(out);
    expect(await t.greeting).toMatch(/^220 /);
    expect(await t.cmd('EHLO client.test')).toMatch(/^250[ -]/);
    expect(await t.cmd('MAIL FROM:<alice@example.com>')).toBe('250 Accepted');
    expect(await t.cmd('RCPT TO:<bob@example.net>')).toBe('250 Accepted');
    const end = (await t.data('Subject: packaged\r\n\r\nHello.\r\n')).end;
    await t.quit();
    const outbox = path.join(tmp, 'mail', 'outbox');
    const emls = readdirSync(outbox).filter((f) => f.endsWith('.eml'));
    expect(emls).toHaveLength(1);
    expect(end).toBe(`250 2.6.0 Ok: captured as ${emls[0]!}`);
    const sender = /^Return-Path: <([^>]*)>\r\n/.exec(readFileSync(path.join(outbox, emls[0]!), 'latin1'))![1]!;
    expect(sender).toMatch(/^prvs=0\d{3}[0-9a-f]{6}=alice@example\.com$/);
    const verified = await run(path.join(prefix, 'bin', 'batv-proxy'), ['verify', sender, '--dir', keys], { cwd: tmp });
    expect(verified.code, verified.stderr).toBe(0);

    const metrics = await fetch(`http://127.0.0.1:${met}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain('batv_proxy_outbound_senders_total{result="signed",scheme="batv"} 1\n');
    // uPlot is found in the installed package's own node_modules.
    expect((await fetch(`http://127.0.0.1:${met}/assets/uplot/uPlot.iife.min.js`)).status).toBe(200);

    // ExecReload's SIGHUP, then KillSignal's SIGTERM, both to the PID systemd would call $MAINPID.
    const beforeHup = proxy.lines.length;
    process.kill(proxy.pid, 'SIGHUP');
    expect(await proxy.waitFor((l) => proxy!.lines.indexOf(l) >= beforeHup && l.msg === 'reload done')).toMatchObject({ why: 'SIGHUP', changed: [] });
    const from = proxy.lines.length;
    process.kill(proxy.pid, 'SIGTERM');
    await proxy.waitFor((l) => proxy!.lines.indexOf(l) >= from && l.msg === 'stopped');
    expect(await proxy.exited).toEqual({ code: 0, signal: null });
  }, 90_000);
});

// ---------------------------------------------------------------------------------------------------------
// systemd

/** The unit's directives per section, each key with all its values in order (a unit may repeat a key). */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let section: Record<string, string[]> | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) { section = out[s[1]!] = {}; continue; }
    const kv = /^(\w+)=(.*)$/.exec(line);
    if (!kv || !section) throw new Error(`not a unit line: ${raw}`);
    (section[kv[1]!] ??= []).push(kv[2]!);
  }
  return out;
}

const systemdAnalyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));

describe('contrib/systemd/batv-proxy.service', () => {
  const unit = parseUnit(readFileSync(UNIT, 'utf8'));
  const svc = unit.Service!;
  const one = (k: string): string => { expect(svc[k], k).toHaveLength(1); return svc[k]![0]!; };

  it('runs node itself on the installed package (signals reach the proxy) and reloads with SIGHUP', () => {
    expect(one('ExecStart')).toBe('/usr/bin/node /usr/lib/node_modules/batv-proxy/bin/batv-proxy.js serve --config /etc/batv-proxy/config.yaml');
    expect(one('Type')).toBe('exec');
    expect(one('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one('KillSignal')).toBe('SIGTERM');
    expect(one('KillMode')).toBe('mixed');
    expect(unit.Install).toEqual({ WantedBy: ['multi-user.target'] });
  });

  it('waits for the drain (timeouts.commandMs, which serve gives running transactions) before SIGKILL', () => {
    const stopSec = Number(one('TimeoutStopSec'));
    expect(stopSec).toBeGreaterThan(DEFAULTS.timeouts.commandMs / 1000);
    expect(readFileSync(path.join(REPO, 'src/cli/serve.ts'), 'utf8')).toContain('proxy.close(config.timeouts.commandMs)');
  });

  it('runs as batv-proxy with only CAP_NET_BIND_SERVICE and the usual hardening', () => {
    expect([one('User'), one('Group')]).toEqual(['batv-proxy', 'batv-proxy']);
    expect(one('AmbientCapabilities')).toBe('CAP_NET_BIND_SERVICE');
    expect(one('CapabilityBoundingSet')).toBe('CAP_NET_BIND_SERVICE');
    for (const [k, v] of Object.entries({
      NoNewPrivileges: 'yes', ProtectSystem: 'strict', ProtectHome: 'yes', PrivateTmp: 'yes', PrivateDevices: 'yes', PrivateMounts: 'yes',
      ProtectKernelTunables: 'yes', ProtectKernelModules: 'yes', ProtectControlGroups: 'yes', RestrictNamespaces: 'yes',
      RestrictSUIDSGID: 'yes', LockPersonality: 'yes', SystemCallArchitectures: 'native', RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX',
    })) expect(one(k), k).toBe(v);
    expect(svc.SystemCallFilter).toEqual(['@system-service', '~@privileged @resources']);
    expect(svc.MemoryDenyWriteExecute).toBeUndefined(); // V8's JIT needs it off
  });

  it('the example config loads, and its keys and capture folders are inside ReadWritePaths', async () => {
    const rw = one('ReadWritePaths').split(/\s+/);
    const c = await loadConfig(EXAMPLE_CONFIG, {});
    const inside = (p: string) => rw.some((d) => p === d || p.startsWith(`${d}/`));
    for (const p of [c.keys.dir, c.outbound.captureDir, c.inbound.captureDir]) expect(inside(p), `${p} in ${rw.join(' ')}`).toBe(true);
    expect(c.inbound.listen).toBe('0.0.0.0:25'); // hence CAP_NET_BIND_SERVICE
    expect(c.timeouts.commandMs / 1000).toBeLessThan(Number(one('TimeoutStopSec')));
    expect(one('ExecStart')).toContain(' --config /etc/batv-proxy/config.yaml');
  });

  describe.skipIf(!systemdAnalyze)('systemd-analyze (skipped when it is not installed)', () => {
    let dir: string;
    beforeAll(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'batv-unit-')); });
    afterAll(() => { rmSync(dir, { recursive: true, force: true }); });
    /** A copy of the unit whose ExecStart runs this node on this repo's bin (the installed paths need not exist here). */
    const localCopy = (edit: (t: string) => string = (t) => t): string => {
      const file = path.join(dir, 'batv-proxy.service');
      writeFileSync(file, edit(readFileSync(UNIT, 'utf8').replace(/^ExecStart=\S+ \S+/m, `ExecStart=${process.execPath} ${path.join(REPO, 'bin', 'batv-proxy.js')}`)));
      return file;
    };

    it('verify: no error and no warning', async () => {
      const r = await run(systemdAnalyze!, ['verify', localCopy()], { cwd: dir });
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: '', stderr: '' });
      // ... and it would say so: a misspelt directive is reported.
      const bad = await run(systemdAnalyze!, ['verify', localCopy((t) => t.replace('ProtectHome=yes', 'ProtectHomme=yes'))], { cwd: dir });
      expect(bad.stderr).toContain("Unknown key 'ProtectHomme' in section [Service], ignoring.");
    });

    it('security --offline: exposure 2.0 or lower ("OK")', async () => {
      const r = await run(systemdAnalyze!, ['security', '--offline=true', '--no-pager', localCopy()], { cwd: dir });
      const m = /Overall exposure level for batv-proxy\.service: (\d+\.\d+) (\w+)/.exec(r.stdout);
      expect(m, r.stdout + r.stderr).not.toBeNull();
      expect(Number(m![1])).toBeLessThanOrEqual(2.0);
      expect(m![2]).toBe('OK');
    });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Prometheus rules

const promtool = peerBinary('promtool', '/usr/bin/promtool');
const havePromtool = existsSync(promtool) && shouldRun('promtool (contrib/prometheus rules)', existsSync(promtool)
  ? { available: true, reason: promtool } : { available: false, reason: `${promtool} not found` });

interface Rule { record?: string; alert?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
const rules = (parseYaml(readFileSync(RULES, 'utf8')) as { groups: Array<{ name: string; rules: Rule[] }> }).groups.flatMap((g) => g.rules);
const alerts = rules.filter((r) => r.alert);

describe('contrib/prometheus/batv-proxy-rules.yml', () => {
  it('alerts on key age, refusal spikes, next-hop failures, shared-state fallback and the proxy being down, each with for, severity, summary and description', () => {
    expect(alerts.map((a) => a.alert)).toEqual(['BatvProxyDown', 'BatvProxySigningKeyOld', 'BatvProxyRefusalSpike', 'BatvProxyNextHopFailures', 'BatvProxySharedStateFallback', 'BatvProxyDnsblFailing']);
    for (const a of alerts) {
      expect(a.for, a.alert).toMatch(/^\d+[mh]$/);
      expect(['warning', 'critical'], a.alert).toContain(a.labels?.severity);
      expect(Object.keys(a.annotations ?? {}).sort(), a.alert).toEqual(['description', 'summary']);
    }
    expect(alerts.find((a) => a.alert === 'BatvProxySigningKeyOld')!.expr).toContain('batv_proxy_key_age_days{status="active"}');
    expect(alerts.find((a) => a.alert === 'BatvProxySharedStateFallback')!).toMatchObject({ expr: 'max by (job, instance) (batv_proxy_shared_state_fallback) == 1', for: '5m' });
  });

  it('reads only metrics the proxy exports (or up, or its own recording rules), and reads every alerting family it names', async () => {
    const names = await exportedNames();
    const recorded = new Set(rules.flatMap((r) => (r.record ? [r.record] : [])));
    const used = new Set(rules.flatMap((r) => metricNamesIn(r.expr)));
    expect([...used].filter((n) => !names.has(n) && !PROMETHEUS_SERIES.has(n) && !recorded.has(n))).toEqual([]);
    for (const n of ['batv_proxy_key_age_days', 'batv_proxy_refusals_total', 'batv_proxy_nexthop_failures_total', 'batv_proxy_shared_state_fallback', 'up']) {
      expect(used.has(n), n).toBe(true);
    }
  });

  describe.skipIf(!havePromtool)('promtool (skipped when scripts/install-peers.sh has not unpacked it)', () => {
    it('check rules: valid', async () => {
      const r = await run(promtool, ['check', 'rules', RULES], { cwd: path.dirname(RULES) });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
    });

    it('test rules: every alert fires when it should and not otherwise (batv-proxy-rules.test.yml)', async () => {
      const r = await run(promtool, ['test', 'rules', path.basename(RULES_TEST)], { cwd: path.dirname(RULES_TEST), timeoutMs: 60_000 });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain('SUCCESS');
      const tested = new Set((parseYaml(readFileSync(RULES_TEST, 'utf8')) as { tests: Array<{ alert_rule_test?: Array<{ alertname: string }> }> })
        .tests.flatMap((t) => (t.alert_rule_test ?? []).map((a) => a.alertname)));
      expect([...tested].sort()).toEqual(alerts.map((a) => a.alert!).sort());
    });

    it('test rules fails when a rule is wrong (the unit tests can fail)', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-rules-'));
      try {
        writeFileSync(path.join(dir, 'batv-proxy-rules.yml'), readFileSync(RULES, 'utf8').replace('{status="active"}) > 90', '{status="active"}) > 900'));
        copyFileSync(RULES_TEST, path.join(dir, 'batv-proxy-rules.test.yml'));
        const r = await run(promtool, ['test', 'rules', 'batv-proxy-rules.test.yml'], { cwd: dir, timeoutMs: 60_000 });
        expect(r.code).not.toBe(0);
        expect(r.stdout + r.stderr).toContain('alertname: BatvProxySigningKeyOld');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Grafana dashboard

interface Panel { id: number; type: string; title: string; gridPos: { x: number; y: number; w: number; h: number }; datasource?: { type: string; uid: string }; targets?: Array<{ expr: string; refId: string; datasource?: { uid: string } }> }
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
  uid: string; schemaVersion: number; title: string; panels: Panel[];
  __inputs: Array<{ name: string; type: string; pluginId: string }>;
  templating: { list: Array<{ name: string; query: { query: string } }> };
};
const targets = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p, ...t })));
/** Grafana's variables replaced the way Grafana would before the query reaches Prometheus. */
const grafanaToPromql = (e: string): string => e.replaceAll('$__rate_interval', '5m').replaceAll('$__range', '1h').replaceAll('$instance', '.*');

describe('contrib/grafana/batv-proxy-dashboard.json', () => {
  it('is a schema 39 dashboard with a Prometheus datasource input, unique uid, panel ids and refIds, and no overlapping panels', () => {
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.uid).toBe('batv-proxy');
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dashboard.panels) {
      if (p.type === 'row') continue;
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      const refs = (p.targets ?? []).map((t) => t.refId);
      expect(refs.length, p.title).toBeGreaterThan(0);
      expect(new Set(refs).size, p.title).toBe(refs.length);
      for (const t of p.targets!) expect(t.datasource?.uid, p.title).toBe('${DS_PROMETHEUS}');
    }
    const boxes = dashboard.panels.map((p) => p.gridPos);
    for (const b of boxes) expect(b.x + b.w).toBeLessThanOrEqual(24);
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i]!; const b = boxes[j]!;
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        expect(overlap, `${dashboard.panels[i]!.title} / ${dashboard.panels[j]!.title}`).toBe(false);
      }
    }
  });

  it('has the panels the issue asks for', () => {
    const titles = dashboard.panels.map((p) => p.title);
    for (const t of ['Senders by result and scheme', 'Inbound verdicts', 'Refusals by reason', 'Would refuse (grace period)', 'Next-hop failures',
      'Next-hop latency p99', 'Active connections', 'Signing key age', 'Shared state']) expect(titles).toContain(t);
    const p99 = targets.find((t) => t.panel.title === 'Next-hop latency p99')!;
    expect(p99.expr).toMatch(/^histogram_quantile\(0\.99, sum by \(le, role, stage\) \(rate\(batv_proxy_stage_seconds_bucket\{/);
  });

  it('queries only metrics the proxy exports (or up), and every batv_proxy_ family appears in some panel', async () => {
    const names = await exportedNames();
    // The instance variable is Grafana's label_values(METRIC, LABEL), not PromQL: its METRIC counts.
    const variables = dashboard.templating.list.map((v) => /^label_values\(([a-z_]+), instance\)$/.exec(v.query.query)![1]!);
    const used = new Set([...targets.flatMap((t) => metricNamesIn(grafanaToPromql(t.expr))), ...variables]);
    expect([...used].filter((n) => !names.has(n) && !PROMETHEUS_SERIES.has(n))).toEqual([]);
    const families = [...names].filter((n) => n.startsWith('batv_proxy_') && ![...names].some((h) => n !== h && /_(bucket|sum|count)$/.test(n) && n.startsWith(h)));
    const covered = (f: string) => [...used].some((u) => u === f || u === `${f}_bucket`);
    expect(families.filter((f) => !covered(f))).toEqual([]);
  });

  it.skipIf(!havePromtool)('every panel query parses as PromQL (promtool check rules on them as recording rules)', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'batv-dash-'));
    try {
      const file = path.join(dir, 'dashboard-queries.yml');
      const group = { name: 'dashboard', rules: targets.map((t, i) => ({ record: `dashboard:query_${i}`, expr: grafanaToPromql(t.expr) })) };
      writeFileSync(file, JSON.stringify({ groups: [group] }, null, 2)); // JSON is YAML
      const r = await run(promtool, ['check', 'rules', file], { cwd: dir });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`SUCCESS: ${targets.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// docs/production.md against the files it describes

describe('docs/production.md agrees with contrib/', () => {
  const doc = readFileSync(path.join(REPO, 'docs', 'production.md'), 'utf8');
  const sh = [...doc.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!).join('');
  const svc = parseUnit(readFileSync(UNIT, 'utf8')).Service!;

  it('creates the unit\'s user, and every ReadWritePaths directory owned by it', () => {
    expect(sh).toMatch(new RegExp(`^sudo useradd --system .* ${svc.User![0]}$`, 'm'));
    const dirs = /^sudo install -d -o (\S+) -g (\S+) -m 0700 (.*)$/m.exec(sh)!;
    expect([dirs[1], dirs[2]]).toEqual([svc.User![0], svc.Group![0]]);
    for (const d of svc.ReadWritePaths![0]!.split(/\s+/)) expect(dirs[3]!.split(' '), d).toContain(d);
    expect(dirs[3]!.split(' ')).toContain(svc.WorkingDirectory![0]);
  });

  it('installs the example config where ExecStart reads it, and the unit from contrib/', () => {
    const config = / --config (\S+)$/.exec(svc.ExecStart![0]!)![1]!;
    expect(sh).toContain(`/usr/lib/node_modules/batv-proxy/contrib/systemd/config.yaml ${config}\n`);
    expect(sh).toContain('/usr/lib/node_modules/batv-proxy/contrib/systemd/batv-proxy.service /etc/systemd/system/batv-proxy.service\n');
    expect(sh).toContain(`sudo -u ${svc.User![0]} batv-proxy keys init --config ${config}\n`);
  });

  it('quotes the unit\'s values and lists every alert of the rules file', () => {
    for (const k of ['ExecStart', 'TimeoutStopSec', 'LimitNOFILE', 'ReadWritePaths']) expect(doc.replace(/\n\s+/g, ' '), k).toContain(`${k}=${svc[k]![0]}`);
    const listed = [...doc.matchAll(/^\| `(BatvProxy\w+)` \|/gm)].map((m) => m[1]);
    expect(listed).toEqual(alerts.map((a) => a.alert));
    expect(sh).toContain('promtool check rules batv-proxy-rules.yml\npromtool test rules batv-proxy-rules.test.yml\n');
  });
});
