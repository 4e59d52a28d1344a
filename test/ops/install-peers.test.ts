/**
 * scripts/install-peers.sh must be safe on a machine that is a mail server (issue 13.6): it installs no MTA
 * (Debian's MTAs conflict, so installing postfix removes an installed exim) and no package that brings a
 * service, and it replaces nothing already installed. Checked against the script itself and, where dpkg
 * and apt can answer, against the packages it names. The daemon programs the tests need are unpacked
 * under .peers/ instead; when they are there, each wrapper must exec the unpacked binary (so a test's PID
 * is the program's own).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from '../helpers/proc.js';

const SCRIPT = readFileSync(path.join(REPO, 'scripts/install-peers.sh'), 'utf8');
const installList = (): string[] => {
  const m = /^PACKAGES=\(([^)]*)\)/m.exec(SCRIPT);
  if (!m) throw new Error('PACKAGES=(...) not found in install-peers.sh');
  return m[1]!.trim().split(/\s+/);
};
const unpackList = (): string[] => [...SCRIPT.matchAll(/^unpack (\S+) /gm)].map((m) => m[1]!);
const hasApt = spawnSync('apt-cache', ['--version']).status === 0;

/** apt-cache show's fields of the candidate version. */
function aptFields(pkg: string): Record<string, string> {
  const r = spawnSync('apt-cache', ['show', '--no-all-versions', pkg], { encoding: 'utf8' });
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([A-Za-z-]+): (.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

describe('install-peers.sh installs nothing that runs as a service', () => {
  it('the daemon packages are unpacked, not installed', () => {
    const installs = installList();
    for (const daemon of ['postfix', 'postsrsd', 'haproxy', 'exim4-daemon-light', 'exim4', 'redis-server', 'prometheus']) expect(installs).not.toContain(daemon);
    expect(unpackList().sort()).toEqual(['exim4-daemon-light', 'haproxy', 'postfix', 'postsrsd', 'prometheus']);
  });

  it('every apt-get install goes through install_missing, with --no-upgrade and without recommends', () => {
    const calls = SCRIPT.split('\n').filter((l) => /apt-get install/.test(l) && !/^\s*(#|log )/.test(l));
    expect(calls).toEqual(['  apt-get install -y --no-install-recommends --no-upgrade "${need[@]}"']);
    expect(SCRIPT).not.toMatch(/systemctl (enable|start)|update-rc\.d|deb-systemd-helper/);
  });

  it.skipIf(!hasApt)('no package it installs is an MTA or carries a systemd unit or init script', () => {
    for (const pkg of installList()) {
      const f = aptFields(pkg);
      expect(f.Package, `apt knows ${pkg}`).toBe(pkg);
      expect(f.Provides ?? '', `${pkg} Provides`).not.toMatch(/mail-transport-agent/);
      const listed = spawnSync('dpkg', ['-L', pkg], { encoding: 'utf8' });
      if (listed.status === 0) { // installed here: look at its files
        expect(listed.stdout.split('\n').filter((p) => /^\/(lib|usr\/lib)\/systemd\/system\/[^/]+\.service$|^\/etc\/init\.d\//.test(p)), `${pkg}'s services`).toEqual([]);
      }
    }
  });

  it.skipIf(!existsSync(path.join(REPO, '.peers/bin')))('each .peers/bin wrapper execs its unpacked program', () => {
    for (const name of ['smtp-sink', 'smtp-source', 'postfix', 'postsrsd', 'exim4', 'haproxy', 'promtool']) {
      const text = readFileSync(path.join(REPO, '.peers/bin', name), 'utf8');
      const target = /exec "([^"]+)"/.exec(text)?.[1];
      expect(target, name).toBeDefined();
      expect(target!.startsWith(path.join(REPO, '.peers/')), `${name} -> ${target}`).toBe(true);
      expect(existsSync(target!), target).toBe(true);
    }
  });
});
