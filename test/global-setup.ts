/**
 * Once per `npm test`: clears the note of skipped peer suites before the run, and at its end prints every
 * suite that was skipped for a missing peer (exim, Mail::SRS, postsrsd, smtp-sink...) and why, loudly, so
 * a green run without them cannot pass for a full one. .ci/run sets BATV_REQUIRE_PEERS=1: nothing skips.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { PEER_SKIP_LOG } from './helpers/peers.js';

export function setup(): void {
  rmSync(PEER_SKIP_LOG, { force: true });
}

export function teardown(): void {
  if (!existsSync(PEER_SKIP_LOG)) return;
  const seen = new Map<string, string>();
  for (const line of readFileSync(PEER_SKIP_LOG, 'utf8').split('\n')) {
    if (!line) continue;
    const { name, reason } = JSON.parse(line) as { name: string; reason: string };
    seen.set(name, reason);
  }
  rmSync(PEER_SKIP_LOG, { force: true });
  if (seen.size === 0) return;
  const bar = '!'.repeat(100);
  process.stderr.write([
    '', bar,
    `!! ${seen.size} test suite(s) SKIPPED for a missing peer: this was not a full run.`,
    ...[...seen].map(([name, reason]) => `!!   ${name}: ${reason}`),
    '!! Install the peers with `bash scripts/install-peers.sh` (as root, Debian 12), or run with',
    '!! BATV_REQUIRE_PEERS=1 to make a missing peer fail (as .ci/run does).',
    bar, '',
  ].join('\n'));
}
