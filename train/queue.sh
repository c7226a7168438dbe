#!/usr/bin/env bash
# Trains the reduced CPU configs (train/configs/*.yaml, published as NAME-cpu) one after another. Each run continues where it stopped: from
# its checkpoint in $SR_RUNS, or, on a machine without it, from the weights it published into
# model_repository/ (which travel with git). So the script can be killed and re-run at any time.
# Usage: train/queue.sh [NAME[:MINUTES] ...]   e.g. train/queue.sh edsr_x2:30 mdsr:60
#   NAME is a config in train/configs/; MINUTES caps this call's training time for it.
#   Default: every config of DEFAULT_CONFIGS, each to its end. SR_TRAIN_THREADS sets CPU threads.
# Checkpoints go to $SR_RUNS (default ~/.cache/srserve/runs, outside the work tree).
set -u
cd "$(dirname "$0")/.."
export SR_RUNS=${SR_RUNS:-$HOME/.cache/srserve/runs}
export SR_DATASETS=${SR_DATASETS:-$(cd .. && pwd)/shared/datasets}
DEFAULT_CONFIGS=(edsr_x2 edsr_x4 edsr_x3 mdsr vdsr esrgan_psnr dasr)
plan=("$@")
[ ${#plan[@]} -eq 0 ] && plan=("${DEFAULT_CONFIGS[@]}")
for item in "${plan[@]}"; do
  name=${item%%:*}
  cfg=train/configs/$name.yaml
  [ -f "$cfg" ] || { echo "skip $cfg (missing)"; continue; }
  args=()
  [[ $item == *:* ]] && args+=(--minutes "${item#*:}")
  [ -n "${SR_TRAIN_THREADS:-}" ] && args+=(--threads "$SR_TRAIN_THREADS")
  echo "== $(date -u +%FT%TZ) $cfg ${args[*]}"
  .venv/bin/srserve train "$cfg" "${args[@]}" || echo "!! $cfg failed with $?"
done
echo "== $(date -u +%FT%TZ) done"
