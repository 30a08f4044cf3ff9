#!/usr/bin/env bash
# On a lent GPU machine (the device tool runs this in a copy of the checkout): install what its image lacks from
# the carried wheels, run the resumable GPU batch (`python -m nin_bench gpu-session`) under a time budget, and
# tar every results/gpu-* folder (their .cache/ included: run state and the checkpoint of an unfinished training
# run) into $OUT/gpu-results.tgz. Prepare the carried paths first with scripts/gpu_prepare.sh (README, "GPU").
# Exit code: that of gpu-session (0 all done, 3 budget spent: call again with the folders carried back, 2 no CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-480}   # the device kills a command at 600 s: leave room for the install and the tar
OUT=${OUT:-.}

[ -f .gpu-state.tgz ] && tar xzf .gpu-state.tgz  # the .cache/ of each results/gpu-* folder (gpu_prepare.sh)
python3 -m pip install -q --no-index --find-links .wheels pydantic fvcore \
  && python3 -m pip install -q --no-deps -e . || { echo "install failed" >&2; exit 1; }
export NIN_BENCH_DATA=${NIN_BENCH_DATA:-$PWD/.gpu-data}
export NIN_BENCH_CACHE=${NIN_BENCH_CACHE:-$PWD/.gpu-data/cache}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

timeout -s KILL $((BUDGET_S + 90)) python3 -m nin_bench gpu-session --budget-s "$BUDGET_S"
rc=$?
shopt -s nullglob
folders=(results/gpu-*)
[ ${#folders[@]} -gt 0 ] && tar czf "$OUT/gpu-results.tgz" "${folders[@]}"
echo "gpu-session exit code $rc; ${#folders[@]} folders in $OUT/gpu-results.tgz"
exit $rc
