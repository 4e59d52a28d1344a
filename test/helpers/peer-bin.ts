/**
 * Where a peer program is: the copy scripts/install-peers.sh unpacked (its wrapper in .peers/bin, which
 * execs the real binary with its library path, so a spawned child's PID is the program's own), else the
 * machine's installed one. install-peers.sh installs no daemon package (no MTA, no service), so on a fresh
 * machine only the .peers copies exist; a developer's machine with Postfix installed works too.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PEERS_BIN = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), '.peers/bin');

/** `name` in .peers/bin, else `installed` (e.g. /usr/sbin/smtp-sink); the first that exists, else .peers/bin's path. */
export function peerBinary(name: string, installed: string): string {
  const own = join(PEERS_BIN, name);
  if (existsSync(own)) return own;
  return existsSync(installed) ? installed : own;
}
