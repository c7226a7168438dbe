#!/usr/bin/env bash
# Builds the CPU image for real and runs it: a private Docker daemon (overlay2, or vfs where overlays
# cannot be mounted; no iptables, no bridge) under a temporary directory, a Debian bookworm base image made locally with debootstrap,
# wheels downloaded beforehand on the host, `docker build --network none`, then the container on
# host networking bound to 127.0.0.1, checked end to end by docker/check_container.py.
# Everything (containers, images, daemon, data root, netns mount) is removed on exit.
#
#   docker/test-image.sh            # as root (a private dockerd and debootstrap need it)
#
# Exit codes: 0 passed, 1 failed, 77 skipped (a tool is missing or dockerd cannot start here).
# Environment: SRSERVE_BASE_CACHE  tarball of the debootstrap root fs, reused between runs
#                                  (default ~/.cache/srserve-docker/py311-bookworm.tar; empty: no cache)
#              SRSERVE_KEEP_WHEELS set to 1 to keep ./wheels (the downloaded wheels) afterwards
#              PYTHON              interpreter that runs the checks (default .venv/bin/python)
#              SRSERVE_STORAGE_DRIVER  storage drivers to try, in order (default "overlay2 vfs")
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
BASE_TAG=local/py311-bookworm:1
IMAGE_TAG=srserve-test:cpu
CONTAINER=srserve-test
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_CACHE=${SRSERVE_BASE_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/srserve-docker/py311-bookworm.tar}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SKIP=77
START=$SECONDS

log() { printf '[test-image %4ds] %s\n' $((SECONDS - START)) "$*" >&2; }
skip() { log "SKIP: $*"; exit $SKIP; }
phase() { PHASE_NAME=$1; PHASE_START=$SECONDS; log "$1 ..."; }
phase_done() { TIMINGS+=("$(printf '%-22s %4ds' "$PHASE_NAME" $((SECONDS - PHASE_START)))"); }
TIMINGS=()

for tool in dockerd docker debootstrap; do
    command -v "$tool" >/dev/null || skip "$tool not found (install: apt-get install -y docker.io debootstrap, or docker/ci-tools.sh)"
done
[ "$(id -u)" = 0 ] || skip "needs root (a private dockerd and debootstrap)"
[ -x "$PYTHON" ] || skip "no Python for the checks at $PYTHON (set PYTHON=...)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/srserve-image.XXXXXX")
export DOCKER_HOST="unix://$WORK/docker.sock"
DOCKERD_PID=""
BG_PID=""

cleanup() {
    local rc=$?
    set +e
    [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        docker rm -f -v "$CONTAINER" >/dev/null 2>&1
        docker image rm -f "$IMAGE_TAG" "$BASE_TAG" >/dev/null 2>&1
        docker image prune -a -f >/dev/null 2>&1
        docker volume prune -f >/dev/null 2>&1
    fi
    stop_dockerd
    unmount_under "$WORK"
    rm -rf "$WORK"
    [ "${SRSERVE_KEEP_WHEELS:-0}" = 1 ] || rm -rf "$REPO/wheels"
    log "cleaned up (containers, images, daemon, data root $WORK)"
    if [ ${#TIMINGS[@]} -gt 0 ]; then
        log "timings:"; printf '    %s\n' "${TIMINGS[@]}" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Long steps run in the background and are waited for, so that SIGTERM/SIGINT reach the trap (and
# the cleanup) at once instead of after the step.
bg() { "$@" & BG_PID=$!; wait "$BG_PID"; }

start_dockerd() {  # $1: storage driver; returns non-zero when the daemon does not come up
    rm -rf "$WORK/data" "$WORK/exec"
    mkdir -p "$WORK/data" "$WORK/exec"
    echo '{}' > "$WORK/daemon.json"
    dockerd --config-file "$WORK/daemon.json" --storage-driver="$1" \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
        --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" \
        --pidfile "$WORK/docker.pid" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 100); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

stop_dockerd() {
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 1 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    fi
    DOCKERD_PID=""
    unmount_under "$WORK"  # also after a daemon that failed to start
}

unmount_under() {  # dockerd leaves a bind mount of the host netns (exec-root/netns/default), overlays, shm
    awk -v w="$1" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

import_base() {
    if [ -n "$BASE_CACHE" ] && [ -s "$BASE_CACHE" ]; then
        docker import - "$BASE_TAG" <"$BASE_CACHE" >/dev/null
        return
    fi
    bg debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -5 "$WORK/debootstrap.log" >&2; return 1; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives"/*.deb "$WORK/rootfs/var/lib/apt/lists"/*
    if [ -n "$BASE_CACHE" ]; then
        mkdir -p "$(dirname "$BASE_CACHE")"
        tar -C "$WORK/rootfs" -cf "$BASE_CACHE.tmp" . && mv "$BASE_CACHE.tmp" "$BASE_CACHE"
        docker import - "$BASE_TAG" <"$BASE_CACHE" >/dev/null
    else
        tar -C "$WORK/rootfs" -c . | docker import - "$BASE_TAG" >/dev/null
    fi
    rm -rf "$WORK/rootfs"
}

# overlay2 when the kernel lets this sandbox mount overlays (fast), else vfs (copies every layer).
phase "dockerd + base image"
DRIVER=""
for candidate in ${SRSERVE_STORAGE_DRIVER:-overlay2 vfs}; do
    if start_dockerd "$candidate" && import_base \
        && docker run --rm --network none "$BASE_TAG" python3 -c pass >/dev/null 2>&1; then
        DRIVER=$candidate
        break
    fi
    log "storage driver $candidate does not work here: $(tail -1 "$WORK/dockerd.log")"
    stop_dockerd
done
[ -n "$DRIVER" ] || skip "dockerd cannot start or run a container here (tried: ${SRSERVE_STORAGE_DRIVER:-overlay2 vfs})"
log "dockerd $(docker version -f '{{.Server.Version}}') with storage driver $DRIVER"
phase_done

phase "download wheels"
bg "$PYTHON" -m pip download --quiet --disable-pip-version-check -d "$REPO/wheels" \
    --only-binary=:all: --python-version 3.11 \
    -r docker/requirements-cpu.txt -r docker/requirements-build.txt
phase_done

phase "docker build"
bg env DOCKER_BUILDKIT=0 docker build --network none --quiet \
    --build-arg BASE="$BASE_TAG" --build-arg PIP_NO_INDEX=1 \
    --target cpu -t "$IMAGE_TAG" . >/dev/null
phase_done
log "image size: $(docker image inspect -f '{{.Size}}' "$IMAGE_TAG" | awk '{printf "%.0f MB", $1/1e6}')"

phase "run and check"
bg "$PYTHON" docker/check_container.py --image "$IMAGE_TAG" --name "$CONTAINER"
phase_done
log "PASSED"
