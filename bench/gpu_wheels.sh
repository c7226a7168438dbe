#!/usr/bin/env bash
# Downloads, here, the wheels the served part of bench/gpu_suite.sh needs on the GPU machine
# (Python 3.12, x86-64, no package index there) into .whl/ (git-ignored; carry it in the device
# call). Versions are the ones this checkout's .venv runs, so the server there is the one tested
# here; pip resolves their dependencies for the target Python (the image already has some of them,
# which then come along in the same versions as here).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_PY=${VENV_PY:-$ROOT/.venv/bin/python}
PACKAGES=(fastapi uvicorn pydantic-settings python-multipart pypng)
pins=$("$VENV_PY" - "${PACKAGES[@]}" <<'PY'
import importlib.metadata as m, sys
print(" ".join(f"{name}=={m.version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf "$ROOT/.whl"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$ROOT/.whl" $pins
ls "$ROOT/.whl"
du -sh "$ROOT/.whl"
