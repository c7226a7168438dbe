# Sourced by the scripts that run on the project's GPU machine (bench/gpu_suite.sh,
# train/gpu_call.sh): srserve is not installed there and nothing can be downloaded, so this maps
# the checkout onto the srserve namespace (setup.py's package folders) with symlinks on
# PYTHONPATH, and installs the serving packages from .whl/ when that folder came along (made by
# bench/gpu_wheels.sh; name it in the device call's carry). Everything else is the image's own
# python3 (torch, triton, onnxruntime, numpy, pillow, safetensors, pyyaml, tqdm, httpx).
# Sets ROOT (the checkout) and PY (the interpreter).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import srserve.models, srserve.export" >/dev/null 2>&1; then
  SHIM=$(mktemp -d)
  mkdir "$SHIM/srserve"
  for entry in "$ROOT"/srserve/*; do ln -s "$entry" "$SHIM/srserve/"; done
  for folder in models export service train; do ln -s "$ROOT/$folder" "$SHIM/srserve/$folder"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  # `python3 -m srserve` from the checkout would find its bare srserve/ folder (no models/, ...)
  # before the shim: keep the working directory off sys.path (Python >= 3.11)
  export PYTHONSAFEPATH=1
fi

if ! "$PY" -c "import fastapi, uvicorn, pydantic_settings, multipart" >/dev/null 2>&1 \
    && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_env.sh: the wheels in .whl/ do not install here; the served path needs them" >&2
  fi
fi
