#!/usr/bin/env bash
# Sets up a container engine on a machine without an image registry:
#   1. installs Debian's docker.io, docker-compose and debootstrap (if missing),
#   2. starts dockerd with the vfs storage driver, no iptables and no bridge
#      (every container runs on the host network),
#   3. builds a Debian bookworm base image with python3.11 + venv by debootstrap and
#      `docker import`s it as $BASE_IMAGE (default plantpulse/bookworm-python:3.11).
# Idempotent: each step is skipped when its result is already there.
# Usage: scripts/container-engine.sh [install|start|base|all|stop]   (default: all)
set -euo pipefail

STATE_DIR=${PLANTPULSE_STATE_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.plantpulse}
ENGINE_DIR=${PLANTPULSE_DOCKER_DIR:-$STATE_DIR/docker}
BASE_IMAGE=${BASE_IMAGE:-plantpulse/bookworm-python:3.11}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

log() { echo "container-engine: $*" >&2; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

engine_up() { docker info >/dev/null 2>&1; }

start_engine() {
  if engine_up; then log "dockerd already answers"; return; fi
  mkdir -p "$ENGINE_DIR"
  log "starting dockerd (vfs, no iptables, no bridge), log in $ENGINE_DIR/dockerd.log"
  # setsid: dockerd outlives this script and is not killed with its process group.
  $SUDO setsid dockerd --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
    --data-root "$ENGINE_DIR/root" --exec-root "$ENGINE_DIR/exec" \
    --pidfile "$ENGINE_DIR/dockerd.pid" >"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_up && { log "dockerd is up"; return; }
    sleep 1
  done
  log "dockerd did not answer in 60 s; last log lines:"; tail -20 "$ENGINE_DIR/dockerd.log" >&2
  exit 1
}

stop_engine() {
  if [ -f "$ENGINE_DIR/dockerd.pid" ]; then
    $SUDO kill "$(cat "$ENGINE_DIR/dockerd.pid")" 2>/dev/null || true
    log "dockerd stopped"
  fi
}

build_base() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE exists"; return
  fi
  local root="$ENGINE_DIR/bookworm-rootfs"
  if [ ! -x "$root/usr/bin/python3.11" ]; then
    log "debootstrap bookworm into $root (a few minutes)"
    $SUDO rm -rf "$root"
    $SUDO debootstrap --variant=minbase \
      --include=python3.11,python3.11-venv,python3-pip,ca-certificates,libgomp1,curl \
      bookworm "$root" "$DEBIAN_MIRROR"
    # Make python3.11 the image's `python`, as in the public python:3.11-slim image.
    $SUDO ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
    $SUDO ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
    $SUDO rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  fi
  # Trust what this host trusts (a site CA for TLS to the package index, if there is one).
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    $SUDO cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  log "docker import -> $BASE_IMAGE"
  $SUDO tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE"
}

case "${1:-all}" in
  install) install_packages ;;
  start) install_packages; start_engine ;;
  base) build_base ;;
  stop) stop_engine ;;
  all) install_packages; start_engine; build_base ;;
  *) echo "usage: $0 [install|start|base|all|stop]" >&2; exit 2 ;;
esac
