#!/usr/bin/env bash
# Trains the shipped default models one after another, each resuming from its last checkpoint,
# so the script can be killed and re-run at any time (also across machines' sessions).
# Usage: train/queue.sh [CONFIG.yaml ...]   (default: the DEFAULT_CONFIGS list below)
# Checkpoints go to $SR_RUNS (default ~/.cache/srserve/runs, outside the work tree).
set -u
cd "$(dirname "$0")/.."
export SR_RUNS=${SR_RUNS:-$HOME/.cache/srserve/runs}
export SR_DATASETS=${SR_DATASETS:-$(cd .. && pwd)/shared/datasets}
DEFAULT_CONFIGS=(edsr_x2 edsr_x4 edsr_x3 mdsr vdsr esrgan_psnr dasr)
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  for name in "${DEFAULT_CONFIGS[@]}"; do configs+=("train/configs/$name.yaml"); done
fi
for cfg in "${configs[@]}"; do
  [ -f "$cfg" ] || { echo "skip $cfg (missing)"; continue; }
  echo "== $(date -u +%FT%TZ) $cfg"
  .venv/bin/srserve train "$cfg" || echo "!! $cfg failed with $?"
done
