#!/usr/bin/env bash
# Regenerates docker/requirements-common.txt (the image's pinned dependencies) from pyproject.toml:
# installs torch==2.13.0 and `.[serve,export]` into a throwaway venv and pins what pip resolved.
# requirements-cpu.txt / requirements-gpu.txt (per-target engines) are kept by hand.
# Run after changing a dependency; tests/test_deploy_static.py fails while the pins are stale.
#   docker/update-locks.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=$(mktemp -d "${TMPDIR:-/tmp}/srserve-lock.XXXXXX")
trap 'rm -rf "$VENV"' EXIT

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$REPO[serve,export]"

OUT="$REPO/docker/requirements-common.txt"
{
    sed -n '/^#/p' "$OUT"   # keep the header comment
    # torch and onnxruntime differ per target (requirements-cpu.txt / requirements-gpu.txt);
    # openvino (and openvino-telemetry) is the CPU engine, pinned in requirements-cpu.txt only.
    "$VENV/bin/pip" freeze --all --disable-pip-version-check \
        | grep -viE '^(srserve|pip|torch|onnxruntime|openvino|openvino-telemetry)( |=|@)' | LC_ALL=C sort -f
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "updated $OUT:"
git -C "$REPO" diff --stat -- docker/requirements-common.txt
