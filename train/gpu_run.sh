#!/usr/bin/env bash
# Trains every GPU configuration (train/configs/gpu/) side by side on one GPU for a wall-time
# budget: a lent GPU is held for minutes, so each run anneals its lr over the budget
# (optim.anneal_to) and publishes its best weights into model_repository/ as it goes.
# EDSR x2 trains for the first 45 % of the budget, then x3 and x4 start from it. Names (configs in
# train/configs/gpu/ without .yaml) train only those, each for the whole budget.
# Usage: train/gpu_run.sh MINUTES [NAME ...]    (PYTHON: interpreter with srserve installed, default .venv/bin/python;
#        SR_DATASETS and SR_RUNS as for queue.sh; logs go to $SR_RUNS/logs/NAME.log;
#        SR_TRAIN_DEVICE=cpu only to try the script)
set -u
cd "$(dirname "$0")/.."
minutes=${1:?usage: train/gpu_run.sh MINUTES [NAME ...]}
shift
py=${PYTHON:-.venv/bin/python}
export SR_RUNS=${SR_RUNS:-$HOME/.cache/srserve/runs}
export SR_DATASETS=${SR_DATASETS:-$(cd .. && pwd)/shared/datasets}
mkdir -p "$SR_RUNS/logs"

run() {  # CONFIG MINUTES
  local log="$SR_RUNS/logs/$(basename "$1" .yaml).log"
  echo "== $(date -u +%FT%TZ) $1 for $2 min" | tee -a "$log"
  "$py" -m srserve train "train/configs/gpu/$1.yaml" --device "${SR_TRAIN_DEVICE:-cuda}" --minutes "$2" >> "$log" 2>&1 \
    || echo "!! $1 failed with $? (see $log)"
}

if [ $# -gt 0 ]; then
  for name in "$@"; do
    [ -f "train/configs/gpu/$name.yaml" ] || { echo "no train/configs/gpu/$name.yaml" >&2; exit 2; }
  done
  for name in "$@"; do
    run "$name" "$minutes" &
  done
else
  read -r edsr_x2_minutes rest < <("$py" -c "x2 = round($minutes * 0.45, 2); print(x2, round($minutes - x2, 2))")
  (run edsr_x2 "$edsr_x2_minutes"; run edsr_x3 "$rest" & run edsr_x4 "$rest" & wait) &
  for name in mdsr vdsr esrgan_psnr dasr realesrnet; do
    run "$name" "$minutes" &
  done
fi
wait
echo "== $(date -u +%FT%TZ) done"
