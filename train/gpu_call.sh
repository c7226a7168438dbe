#!/usr/bin/env bash
# One device call of GPU training, prepared by `python bench/gpu_pack.py train MINUTES NAME ...`
# (which copies the models those configs continue and the data they read into .gpu/train/ and
# prints the call). On the GPU machine it trains the named train/configs/gpu/ configs side by
# side for MINUTES (train/gpu_run.sh), then writes the published weights that changed, their
# model.json and cards, and the logs as tar files to $OUT (at most 8 files of 15 MiB: the device
# tool's limits), for `python bench/gpu_pack.py unpack FOLDER` here.
#
#   bash train/gpu_call.sh 5 realesrnet
#   SR_TRAIN_DEVICE=cpu OUT=/tmp/out bash train/gpu_call.sh 0.3 realesrnet   # try it on a CPU
set -euo pipefail
minutes=${1:?usage: train/gpu_call.sh MINUTES NAME ...}
shift
[ $# -gt 0 ] || { echo "usage: train/gpu_call.sh MINUTES NAME ..." >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../bench/gpu_env.sh"
PACK="$ROOT/.gpu/train"
[ -f "$PACK/manifest.json" ] || { echo "gpu_call.sh: no $PACK/manifest.json (run bench/gpu_pack.py train here first and carry .gpu/train)" >&2; exit 2; }
if [ "${SR_TRAIN_DEVICE:-cuda}" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_call.sh: no CUDA device here (SR_TRAIN_DEVICE=cpu to try the script on a CPU)" >&2
  exit 2
fi
export SR_REPOSITORY="$PACK/model_repository" SR_DATASETS="$PACK/datasets" PYTHON="$PY"
export SR_RUNS=${SR_RUNS:-$(mktemp -d)}
OUT=${OUT:-$ROOT/gpu_train_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$SR_RUNS/logs.gpu" || true
mkdir -p "$SR_RUNS/logs"
if [ "${SR_TRAIN_DEVICE:-cuda}" = cuda ]; then  # seconds: does the degradation pipeline keep up with the GPU?
  "$PY" "$ROOT/bench/degradation.py" --device cuda --amp bf16 --shapes 32x192 --repeats 5 \
    --config "$ROOT/train/configs/gpu/realesrnet.yaml" 2>&1 | tee "$SR_RUNS/logs/degradation_gpu.md" || true
fi
bash "$ROOT/train/gpu_run.sh" "$minutes" "$@"
for name in "$@"; do  # what each run saw, for the log tar
  cp "$SR_RUNS/$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$ROOT/train/configs/gpu/$name.yaml")/log.csv" \
     "$SR_RUNS/logs/$name.csv" 2>/dev/null || true
done
"$PY" "$ROOT/bench/gpu_pack.py" results "$PACK" "$SR_RUNS/logs" "$OUT"
