#!/usr/bin/env bash
# Install the real servers the integration and end-to-end tests start on loopback:
# Redis, PostgreSQL and wrk, from Debian's archive, plus docker-compose (1.29, Python) which
# validates compose.yaml offline: with --no-install-recommends it brings no Docker engine.
# Prometheus, Alertmanager and Jaeger are not Debian's: scripts/build-prometheus.sh and
# scripts/build-jaeger.sh build the releases compose.yaml ships (`make tools`).
#
# Idempotent: when every binary is already present it does nothing (and says so), so `make test`
# can call it every time. Runs unattended as root (CI); as another user it uses sudo if available.
#
# The test harness never talks to the distro's own service instances (it starts private ones on
# free ports), but Debian starts them on install and they would hold well-known ports. Earlier
# versions of this script installed Debian's Prometheus and Alertmanager (2.42, 0.25): a machine
# that still has them gets those services stopped, so 9090, 9093 and 9100 stay free for a local
# `make run` and compose.
set -euo pipefail

PACKAGES=(redis-server postgresql wrk docker-compose)
# Services of Debian packages (installed here before) whose ports we want free for local use.
SERVICES_TO_STOP=(prometheus prometheus-alertmanager prometheus-node-exporter)

log() { printf 'install-system-deps: %s\n' "$*"; }

# Run a command as root: directly when we are root, else through sudo (non-interactive).
as_root() {
  if [[ ${EUID} -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    log "need root to run: $*" >&2
    exit 1
  fi
}

missing=()
for bin in redis-server wrk docker-compose; do
  command -v "${bin}" >/dev/null 2>&1 || missing+=("${bin}")
done
# Debian keeps the PostgreSQL server binaries out of PATH, under a versioned directory.
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
  || ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
  missing+=(postgres)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  log "all present (redis-server, postgres, wrk, docker-compose); nothing to install"
else
  log "missing: ${missing[*]}; installing ${PACKAGES[*]}"
  # policy-rc.d exiting 101 is Debian's documented switch that stops maintainer scripts from
  # starting services during this install. Only add it if the machine has none, and remove it after.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e ${policy} ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > ${policy} && chmod 755 ${policy}"
    trap 'as_root rm -f '"${policy}" EXIT
    log "temporarily added ${policy} so the packages do not start services"
  fi
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"
  log "installed ${PACKAGES[*]}"
fi

# Stop (and keep from starting at boot) distro services that a previous install may have started.
for svc in "${SERVICES_TO_STOP[@]}"; do
  [[ -e /etc/init.d/${svc} || -d /run/systemd/system ]] || continue
  if service "${svc}" status >/dev/null 2>&1; then
    as_root service "${svc}" stop || true
    log "stopped distro service ${svc}"
  fi
  if [[ -d /run/systemd/system ]]; then
    as_root systemctl disable --quiet "${svc}" 2>/dev/null || true
  elif command -v update-rc.d >/dev/null 2>&1 && [[ -e /etc/init.d/${svc} ]]; then
    as_root update-rc.d "${svc}" disable >/dev/null 2>&1 || true
  fi
done

log "done"
