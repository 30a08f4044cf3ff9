#!/usr/bin/env bash
# On a lent GPU machine, inside one device-tool call (README, "GPU"; prepare with scripts/gpu_prepare.sh first):
# install the carried wheels offline, run the GPU batch (`python -m nin_bench gpu-session`) under a budget that
# leaves time to pack, and put into $OUT what comes back: log.txt (the whole output, written as it goes, so a killed
# call still returns it) and gpu-results.tgz (records, manifest, summary, resolved config, self-check, packing and
# maps of the folders this call changed; never checkpoints or .cache/). Unpack here with scripts/gpu_unpack.sh.
#
# Time: the device kills a command at timeout_s = 600 s. This script ends by itself within GPU_CALL_S (590 s):
#   budget = GPU_CALL_S - install time (measured, a few s) - PACK_S (20 s: diff, tar, checks)
#            - KILL_S (60 s: the batch checks its deadline between timing settings and epochs, so it can overrun
#              by one; past budget + KILL_S it gets SIGTERM, SIGKILL 10 s later) - 10 s
# about 495 s of batch per call. GPU_REHEARSE=1 (scripts/gpu_rehearse.sh, on a CPU) passes --rehearse and
# defaults GPU_CALL_S to 300 and KILL_S to 30. Arguments are passed on to gpu-session (e.g. --steps a,b).
# Exit code: gpu-session's (0 every step complete, 3 budget spent: prepare and call again, 2 no CUDA or a user
# error), 124/137 when it was killed at its margin, 1 when the install or the packing failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
REHEARSE=${GPU_REHEARSE:-0}
if [ "$REHEARSE" = 1 ]; then  # on the CPU the shrunk units take seconds: a 30 s kill margin is plenty
  CALL_S=${GPU_CALL_S:-300} KILL_S=${GPU_KILL_S:-30}
else
  CALL_S=${GPU_CALL_S:-590} KILL_S=${GPU_KILL_S:-60}
fi
PACK_S=${GPU_PACK_S:-20}
TERM_GRACE_S=10
SITE=${GPU_SITE:-/tmp/nin_bench_site}

install() {  # offline: no index, no build isolation, no install of nin_bench itself (it runs from $PWD)
  local flags=(-q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1  # the device runs commands as root
  if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    python3 -m pip install "${flags[@]}" .gpu/wheels/*.whl || return 1
    export PYTHONPATH=$PWD:$SITE
  else  # a rehearsal on another Python: the same install for the device's cp312, checked but not imported
    python3 -m pip install "${flags[@]}" --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --platform manylinux2014_x86_64 .gpu/wheels/*.whl || return 1
    echo "install: $(python3 -V) is not the device's 3.12: wheels installed for cp312 into $SITE as a check;" \
         "this Python's own packages are used"
    export PYTHONPATH=$PWD
  fi
  echo "install: $(ls "$SITE" | grep -c dist-info) packages into $SITE in $SECONDS s"
}

main() {
  echo "gpu_session.sh: $(date -u +%FT%TZ) on $(hostname), call limit ${CALL_S} s, rehearse=${REHEARSE}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  install || { echo "gpu_session.sh: offline install failed"; return 1; }
  export NIN_BENCH_DATA=$PWD/.gpu/data NIN_BENCH_CACHE=${NIN_BENCH_CACHE:-/tmp/nin_bench_cache} PYTHONUNBUFFERED=1
  local budget=$((CALL_S - SECONDS - PACK_S - KILL_S - TERM_GRACE_S)) snap
  snap=$(mktemp)
  python3 -m nin_bench.run.gpu_call snapshot results > "$snap" || return 1
  local flags=(--budget-s "$budget")
  [ "$REHEARSE" = 1 ] && flags+=(--rehearse)
  echo "gpu_session.sh: python -m nin_bench gpu-session ${flags[*]} $* (killed after $((budget + KILL_S)) s)"
  timeout -k "$TERM_GRACE_S" $((budget + KILL_S)) python3 -m nin_bench gpu-session "${flags[@]}" "$@"
  local rc=$?
  case $rc in 124|137) echo "gpu_session.sh: gpu-session was killed at its margin ($((budget + KILL_S)) s): the" \
                            "unit in progress is lost, finished units are recorded";; esac
  python3 -m nin_bench.run.gpu_call pack results "$snap" "$OUT" || rc=1
  python3 -m nin_bench.run.gpu_call check-returned "$OUT" || rc=1
  echo "gpu_session.sh: exit code $rc after $SECONDS s"
  return $rc
}

main "$@" 2>&1 | tee -a "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
