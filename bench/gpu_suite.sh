#!/usr/bin/env bash
# The GPU suite in one call (bench/gpu_suite.py; README "GPU engines", BENCHMARKS.md "GPU engines").
#
#   bash bench/gpu_suite.sh                 # on the GPU machine: report in $OUT (or ./gpu_suite_out)
#   bash bench/gpu_suite.sh --smoke         # anywhere, on the CPU, in about a minute
#
# The checkout is too large to travel to the GPU machine as it is: `python bench/gpu_pack.py
# suite` prepares the call (BENCHMARKS.md, "How to run it"). bench/gpu_env.sh sets up srserve and
# the serving wheels there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
exec "$PY" "$ROOT/bench/gpu_suite.py" "$@"
