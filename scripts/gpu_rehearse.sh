#!/usr/bin/env bash
# Play one GPU call's whole protocol on this CPU machine, nothing faked but the GPU (README, "GPU"):
#  1. prepare here (scripts/gpu_prepare.sh: .gpu/, the size check) and make the copy that would travel
#     (tracked + untracked-not-ignored + shared/ + .gpu/, no .git) in a temp folder;
#  2. call 1: `bash scripts/gpu_session.sh` there in rehearsal mode (GPU_REHEARSE=1: --rehearse), a 180 s call
#     (cut short on purpose, so that call 2 has units left), offline install with no index, its own $OUT and a
#     fresh data cache; check the returned files;
#  3. a scratch clone of this repo's HEAD with the travelled tree committed over it (this session's uncommitted
#     code included), the returned files unpacked (scripts/gpu_unpack.sh) and committed;
#  4. call 2 (300 s) from a fresh copy of that clone (its committed results travel, no ignored state), prepared
#     the same way; it must redo no unit that call 1 finished (records compared by (variant, stage, seed)).
# Prints carry_bytes=N, returned_files=N, largest_returned_bytes=N, second_call_redone_units=N and exits non-zero
# when a limit is broken. Temp files stay in the printed folder (delete it when done).
# Env: GPU_REHEARSE_CALL1_S / GPU_REHEARSE_CALL2_S (the calls' limits, 180 and 300 s), SHARED (../shared).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ] && . .venv/bin/activate
python3 -c 'import torch, pydantic, fvcore' 2>/dev/null || {
  echo "gpu_rehearse.sh: python3 ($(command -v python3)) lacks torch, pydantic or fvcore: activate .venv" >&2; exit 2; }
SHARED=$(realpath "${SHARED:-../shared}")
export SHARED GPU_REHEARSE=1
unset PYTHONPATH
WORK=$(mktemp -d /tmp/gpu-rehearse.XXXXXX)
echo "rehearsal in $WORK"
fail=0
broken() { echo "LIMIT BROKEN: $*"; fail=1; }
figure() { grep -so "^$1=[0-9]*" "$2" | tail -1 | cut -d= -f2; }

# prepare (in repo), copy what travels, run one call there: $1 repo, $2 tag (call1/call2), $3 the call's limit (s)
call() {
  local repo=$1 tag=$2 limit=$3
  (cd "$repo" && bash scripts/gpu_prepare.sh) > "$WORK/$tag-prepare.txt" 2>&1
  local prc=$?
  cat "$WORK/$tag-prepare.txt"
  [ $prc -eq 0 ] || { broken "$tag: gpu_prepare.sh refused (exit $prc)"; return 1; }
  (cd "$repo" && PYTHONPATH=$repo python3 -m nin_bench.run.gpu_call copy --carry .gpu "$WORK/$tag-tree") || return 1
  cp -a "$WORK/$tag-tree" "$WORK/$tag-run"
  mkdir -p "$WORK/$tag-out"
  echo "== $tag: bash scripts/gpu_session.sh (GPU_REHEARSE=1) in $WORK/$tag-run"
  (cd "$WORK/$tag-run" && OUT="$WORK/$tag-out" NIN_BENCH_CACHE="$WORK/$tag-cache" GPU_SITE="$WORK/$tag-site" \
     GPU_CALL_S=$limit bash scripts/gpu_session.sh)
  local rc=$?
  echo "== $tag: gpu_session.sh exit code $rc"
  case $rc in 0|3) ;; *) broken "$tag: gpu_session.sh exit code $rc (0 or 3 expected)";; esac
  PYTHONPATH=$REPO python3 -m nin_bench.run.gpu_call check-returned "$WORK/$tag-out" | tee "$WORK/$tag-returned.txt" \
    || broken "$tag: returned files over the device's limits"
  ls "$WORK/$tag-out"/gpu-results.tgz* >/dev/null 2>&1 || { broken "$tag: no gpu-results.tgz came back"; return 1; }
}

# the scratch clone: HEAD, then exactly the tree that travelled (minus .gpu/), committed; then call 1's results
commit_call1() {
  SCRATCH=$WORK/scratch
  git clone -q "$REPO" "$SCRATCH" || return 1
  git -C "$SCRATCH" ls-files -z | (cd "$SCRATCH" && xargs -0 rm -f)
  (cd "$WORK/call1-tree" && tar cf - --exclude=./.gpu .) | tar xf - -C "$SCRATCH"
  g add -A && g commit -q -m "rehearsal: the tree that travelled" --allow-empty || return 1
  (cd "$SCRATCH" && bash scripts/gpu_unpack.sh "$WORK/call1-out") || { broken "unpacking call 1 failed"; return 1; }
  g add -A results && g commit -q -m "rehearsal: results of call 1" >/dev/null \
    || { broken "call 1 brought nothing to commit"; return 1; }
  [ -z "$(g status --porcelain)" ] || broken "the scratch clone is not clean after the commit"
}
g() { git -C "$SCRATCH" -c user.name=gpu-rehearsal -c user.email=gpu-rehearsal@localhost "$@"; }

redone=
if call "$REPO" call1 "${GPU_REHEARSE_CALL1_S:-180}" && [ $fail = 0 ] && commit_call1 \
   && call "$SCRATCH" call2 "${GPU_REHEARSE_CALL2_S:-300}"; then
  PYTHONPATH=$REPO python3 -m nin_bench.run.gpu_call redone "$WORK/call1-tree" "$WORK/call1-out" \
    "$WORK/call2-tree" "$WORK/call2-out" | tee "$WORK/redone.txt"
  redone=$(figure second_call_redone_units "$WORK/redone.txt")
  [ "$(figure first_call_finished_units "$WORK/redone.txt")" != 0 ] && [ "$(figure second_call_ran_units \
    "$WORK/redone.txt")" != 0 ] || echo "note: one call ran no unit, so resuming was not exercised (a busy machine?)"
fi
[ "${redone:-x}" = 0 ] || broken "the second call redid ${redone:-?} finished units (or did not run)"

echo "== figures: the larger of the two calls"
for f in carry_bytes:prepare returned_files:returned largest_returned_bytes:returned; do
  name=${f%%:*} one=$(figure "${f%%:*}" "$WORK/call1-${f#*:}.txt") two=$(figure "${f%%:*}" "$WORK/call2-${f#*:}.txt")
  echo "$name=$(( ${one:-0} > ${two:-0} ? ${one:-0} : ${two:-0} )) (call 1: ${one:-?}, call 2: ${two:-?})"
done
echo "second_call_redone_units=${redone:-?}"
[ $fail = 0 ] && echo "rehearsal: every limit kept ($WORK)" || echo "rehearsal: FAILED ($WORK)"
exit $fail
