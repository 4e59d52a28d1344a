#!/usr/bin/env bash
# Installs the real programs the interop tests (test/interop/) compare our tag core with.
# For a Debian 12 machine, run as root (CI runs it before `npm test`). Idempotent: a second run only checks.
#
#   postfix           smtp-sink / smtp-source (no daemon is started or left running)
#   swaks             SMTP test client
#   libmail-srs-perl  Perl Mail::SRS 0.31 (Guarded)
#   postsrsd          postsrsd 1.10 (libsrs2 family, tcp_table); the tests start their own instances
#   faketime          libfaketime, to freeze the peers' clocks
#   exim              exim4-daemon-light is NOT installed (it conflicts with postfix): the .deb is
#                     downloaded into .peers/exim/ and unpacked with dpkg -x into .peers/exim/root/;
#                     its library dependencies are installed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXIM_DIR="${REPO_ROOT}/.peers/exim"
EXIM_ROOT="${EXIM_DIR}/root"
EXIM_BIN="${EXIM_ROOT}/usr/sbin/exim4"
# redis-tools holds the redis-server program without its service; chromium drives the status-page test.
PACKAGES=(postfix swaks libmail-srs-perl postsrsd faketime libidn12 redis-tools chromium)

log() { printf 'install-peers: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: must run as root (apt-get, useradd)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

installed() { # package... : all installed?
  local p status
  for p in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || return 1
  done
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

# Stops a daemon by the PID in its pid file (never by process name), if one is running.
stop_by_pidfile() { # pidfile expected-exe
  local pidfile="$1" exe="$2" pid
  [ -s "$pidfile" ] || return 0
  pid="$(tr -cd '0-9' < "$pidfile")"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null && [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null || true)" = "$exe" ]; then
    log "stopping $exe (pid $pid from $pidfile)"
    kill "$pid"
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
  fi
}

# Under systemd, a started unit's main PID (policy-rc.d should have prevented the start).
stop_systemd_unit_pid() { # unit
  local unit="$1" pid
  [ -d /run/systemd/system ] || return 0
  command -v systemctl >/dev/null || return 0
  pid="$(systemctl show -p MainPID --value "$unit" 2>/dev/null || echo 0)"
  if [ -n "$pid" ] && [ "$pid" != "0" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $unit (main pid $pid)"
    kill "$pid" || true
  fi
}

# --- Debian packages -----------------------------------------------------------------------------------
if installed "${PACKAGES[@]}"; then
  log "packages already installed: ${PACKAGES[*]}"
else
  apt_update_once
  # postfix: "No configuration" writes no main.cf, so its postinst has nothing to start.
  if command -v debconf-set-selections >/dev/null; then
    printf '%s\n' \
      'postfix postfix/main_mailer_type select No configuration' \
      'postfix postfix/mailname string localhost' \
      'postsrsd postsrsd/domain string localhost' | debconf-set-selections
  fi
  deny_daemon_starts
  log "apt-get install ${PACKAGES[*]}"
  apt-get install -y --no-install-recommends "${PACKAGES[@]}"
  restore_policy
fi

# Make sure no daemon from these packages was left running (Debian's postsrsd init script writes
# /run/postsrsd.pid; postfix's master writes /var/spool/postfix/pid/master.pid).
stop_by_pidfile /run/postsrsd.pid /usr/sbin/postsrsd
stop_by_pidfile /var/run/postsrsd.pid /usr/sbin/postsrsd
stop_by_pidfile /var/spool/postfix/pid/master.pid /usr/lib/postfix/sbin/master
stop_systemd_unit_pid postsrsd.service
stop_systemd_unit_pid postfix@-.service

# --- exim, unpacked but not installed ------------------------------------------------------------------
mkdir -p "$EXIM_DIR"
if [ ! -x "$EXIM_BIN" ]; then
  if ! ls "$EXIM_DIR"/exim4-daemon-light_*.deb >/dev/null 2>&1; then
    apt_update_once
    log "apt-get download exim4-daemon-light into $EXIM_DIR"
    # apt's _apt sandbox user may not be able to write here; as root the download still works.
    (cd "$EXIM_DIR" && apt-get download exim4-daemon-light)
  fi
  DEB="$(ls -1 "$EXIM_DIR"/exim4-daemon-light_*.deb | sort -V | tail -n 1)"
  log "dpkg -x $(basename "$DEB")"
  rm -rf "$EXIM_ROOT"
  dpkg -x "$DEB" "$EXIM_ROOT"
  # Not setuid: run by a non-root user, the loader would ignore LD_PRELOAD (libfaketime) on a setuid binary.
  chmod 0755 "$EXIM_BIN"
fi
DEB="$(ls -1 "$EXIM_DIR"/exim4-daemon-light_*.deb 2>/dev/null | sort -V | tail -n 1 || true)"

# exim's shared libraries: its Depends minus exim4-base and debconf (which would pull in the MTA).
if [ -n "$DEB" ]; then
  mapfile -t EXIM_LIBS < <(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' \
    | grep -v -e '^$' -e '^exim4' -e '^debconf')
  if ! installed "${EXIM_LIBS[@]}"; then
    apt_update_once
    log "apt-get install exim's libraries: ${EXIM_LIBS[*]}"
    deny_daemon_starts
    apt-get install -y --no-install-recommends "${EXIM_LIBS[@]}"
    restore_policy
  fi
fi

# exim has its user compiled in and refuses to run without it.
if ! getent passwd Debian-exim >/dev/null; then
  log "useradd Debian-exim"
  useradd --system --no-create-home --shell /usr/sbin/nologin Debian-exim
fi

# --- Check ---------------------------------------------------------------------------------------------
if ldd "$EXIM_BIN" | grep -q 'not found'; then
  echo "install-peers: exim is missing libraries:" >&2
  ldd "$EXIM_BIN" | grep 'not found' >&2
  exit 1
fi
CONF="$(mktemp)"
printf 'primary_hostname = test\n' > "$CONF"
GOT="$(TZ=UTC faketime -f '2026-01-01 12:00:00' "$EXIM_BIN" -C "$CONF" -be '${prvs{user@example.com}{secret}{5}}' 2>&1 || true)"
rm -f "$CONF"
if [ "$GOT" != 'prvs=5461cd18bc=user@example.com' ]; then
  echo "install-peers: exim self-test failed: got '$GOT'" >&2
  exit 1
fi
perl -MMail::SRS -e 1
/usr/sbin/postsrsd -v >/dev/null
log "ok: exim from $(basename "$DEB"), Mail::SRS $(perl -MMail::SRS -e 'print $Mail::SRS::VERSION'), postsrsd $(/usr/sbin/postsrsd -v)"
