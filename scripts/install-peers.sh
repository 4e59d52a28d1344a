#!/usr/bin/env bash
# Installs the real programs the tests run beside the proxy (test/interop/, test/e2e/, test/inbound/,
# test/status/). For a DEVELOPMENT or CI machine running Debian 12, as root; CI runs it before `npm test`.
# Idempotent: a second run only checks.
#
# Safe on a machine that is a mail server: it installs no MTA and no daemon package, so it never removes or
# replaces an installed MTA (Debian's MTAs conflict with each other) and never enables a service at boot.
# The programs that come in daemon packages are downloaded and unpacked with `dpkg -x` under .peers/, with
# only their shared libraries installed; the tests start them with their own configs and stop them by PID.
#
#   installed  swaks              SMTP test client
#              libmail-srs-perl   Perl Mail::SRS 0.31 (Guarded)
#              faketime           libfaketime, to freeze the peers' clocks
#              redis-tools        holds the redis-server program without the redis-server service
#              chromium           drives the status-page test
#   unpacked   postfix            .peers/postfix/root: smtp-sink, smtp-source, and a whole Postfix for
#                                 instances with their own config directory (test/helpers/postfix-mta.ts)
#              postsrsd           .peers/postsrsd/root: postsrsd 1.10 (libsrs2 family, tcp_table)
#              exim4-daemon-light .peers/exim/root: exim 4.96 (made non-setuid, so libfaketime preloads)
#              haproxy            .peers/haproxy/root: HAProxy 2.6 in front of several proxies
#              prometheus         .peers/prometheus/root: only its promtool, to check contrib/'s alert rules
#   .peers/bin/  one small wrapper per program (smtp-sink, smtp-source, postfix, postsrsd, exim4, haproxy,
#                promtool)
#                that execs the unpacked binary with its library path; the PID a test holds is the program's.
#   users      Debian-exim (compiled into exim), postfix and group postdrop (Postfix's mail_owner and
#              setgid_group), made as system users without a home when missing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${REPO_ROOT}/.peers"
EXIM_DIR="${PEERS}/exim"
EXIM_ROOT="${EXIM_DIR}/root"
EXIM_BIN="${EXIM_ROOT}/usr/sbin/exim4"
PACKAGES=(swaks libmail-srs-perl faketime libidn12 redis-tools chromium)

log() { printf 'install-peers: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: must run as root (apt-get, useradd)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

missing() { # package... : prints the ones not installed, one per line
  local p status
  for p in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || echo "$p"
  done
}

# Installs the packages not yet installed, and nothing else: --no-upgrade, so an installed library (libssl3,
# libsystemd0) is never replaced by a newer one; if a new package needs a newer version, apt fails loudly.
install_missing() { # package...
  local need
  mapfile -t need < <(missing "$@")
  if [ "${#need[@]}" -eq 0 ]; then log "already installed: $*"; return 0; fi
  apt_update_once
  deny_daemon_starts
  log "apt-get install ${need[*]}"
  apt-get install -y --no-install-recommends --no-upgrade "${need[@]}"
  restore_policy
}

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
}

# --- Keep package installs from starting daemons -------------------------------------------------------
# invoke-rc.d and deb-systemd-invoke both ask /usr/sbin/policy-rc.d; exit 101 means "do not start".
# If the machine already has one (Docker images do), it is left alone.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
deny_daemon_starts() {
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from batv-proxy scripts/install-peers.sh\nexit 101\n' > "$POLICY"
    chmod 0755 "$POLICY"
    OWN_POLICY=1
  fi
}
restore_policy() {
  if [ "$OWN_POLICY" -eq 1 ]; then rm -f "$POLICY"; OWN_POLICY=0; fi
}
trap restore_policy EXIT

# --- Debian packages without a service -----------------------------------------------------------------
install_missing "${PACKAGES[@]}"

# --- Daemon packages, unpacked but not installed ---------------------------------------------------------
# unpack PACKAGE DIR: downloads PACKAGE's .deb into DIR (once) and extracts it into DIR/root with dpkg -x (no
# maintainer scripts, no users, no units, nothing in dpkg's database), then installs the shared libraries
# it depends on (the lib* packages of its Depends; never the MTA, debconf or adduser parts).
unpack() {
  local pkg="$1" dir="$2" deb stamp
  mkdir -p "$dir"
  if ! ls "$dir/${pkg}"_*.deb >/dev/null 2>&1; then
    apt_update_once
    log "apt-get download $pkg into $dir"
    # apt's _apt sandbox user may not be able to write here; as root the download still works.
    (cd "$dir" && apt-get download "$pkg")
  fi
  deb="$(ls -1 "$dir/${pkg}"_*.deb | sort -V | tail -n 1)"
  stamp="$dir/root/.unpacked-$(basename "$deb")"
  if [ ! -e "$stamp" ]; then
    log "dpkg -x $(basename "$deb")"
    rm -rf "$dir/root"
    dpkg -x "$deb" "$dir/root"
    touch "$stamp"
  fi
  local libs
  mapfile -t libs < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' \
    -e 's/[[:space:]]//g' | grep '^lib' | grep -v '^libjs-' || true) # libjs-*: prometheus's web UI, not needed
  [ "${#libs[@]}" -eq 0 ] || install_missing "${libs[@]}"
}

unpack exim4-daemon-light "$EXIM_DIR"
# Not setuid: run by a non-root user, the loader would ignore LD_PRELOAD (libfaketime) on a setuid binary.
chmod 0755 "$EXIM_BIN"
unpack postfix "${PEERS}/postfix"
unpack postsrsd "${PEERS}/postsrsd"
unpack haproxy "${PEERS}/haproxy"
unpack prometheus "${PEERS}/prometheus" # for promtool (checks contrib/'s alert rules); the server is not run

# Wrappers in .peers/bin: `exec`, so the process keeps the wrapper's PID. Postfix's programs look for their
# own libraries in /usr/lib/postfix (their RUNPATH); LD_LIBRARY_PATH, searched first, points them here.
mkdir -p "${PEERS}/bin"
wrap() { # name binary [library-dir]
  local name="$1" bin="$2" libdir="${3:-}" out="${PEERS}/bin/$1"
  {
    echo '#!/bin/sh'
    echo "# from scripts/install-peers.sh: runs the unpacked $name"
    if [ -n "$libdir" ]; then
      echo "LD_LIBRARY_PATH=\"$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" exec \"$bin\" \"\$@\""
    else
      echo "exec \"$bin\" \"\$@\""
    fi
  } > "$out"
  chmod 0755 "$out"
}
PF="${PEERS}/postfix/root"
wrap smtp-sink "$PF/usr/sbin/smtp-sink" "$PF/usr/lib/postfix"
wrap smtp-source "$PF/usr/sbin/smtp-source" "$PF/usr/lib/postfix"
wrap postfix "$PF/usr/sbin/postfix" "$PF/usr/lib/postfix"
wrap postsrsd "${PEERS}/postsrsd/root/usr/sbin/postsrsd"
wrap exim4 "$EXIM_BIN"
wrap haproxy "${PEERS}/haproxy/root/usr/sbin/haproxy"
wrap promtool "${PEERS}/prometheus/root/usr/bin/promtool"

# exim has its user compiled in and refuses to run without it; a Postfix instance needs its mail_owner
# and setgid_group (test/helpers/postfix-mta.ts uses these names).
if ! getent passwd Debian-exim >/dev/null; then
  log "useradd Debian-exim"
  useradd --system --no-create-home --shell /usr/sbin/nologin Debian-exim
fi
if ! getent group postdrop >/dev/null; then
  log "groupadd postdrop"
  groupadd --system postdrop
fi
if ! getent passwd postfix >/dev/null; then
  log "useradd postfix"
  if getent group postfix >/dev/null; then
    useradd --system --no-create-home --shell /usr/sbin/nologin -g postfix postfix
  else
    useradd --system --no-create-home --shell /usr/sbin/nologin --user-group postfix
  fi
fi

# --- Check ---------------------------------------------------------------------------------------------
for prog in exim4 smtp-sink smtp-source postfix postsrsd haproxy promtool; do
  real="$(sed -n 's/.*exec "\([^"]*\)".*/\1/p' "${PEERS}/bin/$prog")"
  missing="$(LD_LIBRARY_PATH="${PF}/usr/lib/postfix" ldd "$real" 2>&1 | grep 'not found' || true)"
  if [ -n "$missing" ]; then
    echo "install-peers: $prog ($real) is missing libraries:" >&2
    echo "$missing" >&2
    exit 1
  fi
done
CONF="$(mktemp)"
printf 'primary_hostname = test\n' > "$CONF"
GOT="$(TZ=UTC faketime -f '2026-01-01 12:00:00' "$EXIM_BIN" -C "$CONF" -be '${prvs{user@example.com}{secret}{5}}' 2>&1 || true)"
rm -f "$CONF"
if [ "$GOT" != 'prvs=5461cd18bc=user@example.com' ]; then
  echo "install-peers: exim self-test failed: got '$GOT'" >&2
  exit 1
fi
perl -MMail::SRS -e 1
log "ok: $(cd "$PEERS" && ls -1 ./*/root/.unpacked-* | sed 's|.*/.unpacked-||' | tr '\n' ' ')"
log "ok: Mail::SRS $(perl -MMail::SRS -e 'print $Mail::SRS::VERSION'), postsrsd $("${PEERS}/bin/postsrsd" -v), $("${PEERS}/bin/haproxy" -v | head -n 1)"
log "nothing was installed as a service; the programs are in ${PEERS}/bin"
