#!/usr/bin/env bash
# The GPU suite in one call (bench/gpu_suite.py; README "GPU engines", BENCHMARKS.md "GPU engines").
#
#   bash bench/gpu_suite.sh                 # on the GPU machine: report in $OUT (or ./gpu_suite_out)
#   bash bench/gpu_suite.sh --smoke         # anywhere, on the CPU, in about a minute
#
# On the project's GPU machine srserve is not installed and nothing can be downloaded: this maps
# the checkout onto the srserve namespace (setup.py's package folders) with symlinks on
# PYTHONPATH, and installs the serving packages from .whl/ when that folder came along (made by
# bench/gpu_wheels.sh; name it in the device call's carry). Everything else is the image's own
# python3 (torch, triton, onnxruntime, numpy, pillow, safetensors, pyyaml, tqdm, httpx).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import srserve.models, srserve.export" >/dev/null 2>&1; then
  SHIM=$(mktemp -d)
  mkdir "$SHIM/srserve"
  for entry in "$ROOT"/srserve/*; do ln -s "$entry" "$SHIM/srserve/"; done
  for folder in models export service train; do ln -s "$ROOT/$folder" "$SHIM/srserve/$folder"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import fastapi, uvicorn, pydantic_settings, multipart" >/dev/null 2>&1 \
    && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_suite.sh: the wheels in .whl/ do not install here; the served path will be skipped" >&2
  fi
fi

exec "$PY" "$ROOT/bench/gpu_suite.py" "$@"
