#!/usr/bin/env bash
# After a device-tool call of scripts/gpu_session.sh: put what came back into results/ and rebuild each folder's
# report, ready to commit (README, "GPU").
# Usage: bash scripts/gpu_unpack.sh FILES_AT   (the folder the call's files_at names; or the gpu-results files)
# Only records, manifest, summary, resolved config, self-check and maps under results/ are accepted; reports,
# tables and figures are rebuilt here with `python -m nin_bench report DIR` from the records.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/gpu_unpack.sh FILES_AT | gpu-results.tgz[.NN]..." >&2; exit 2; }
parts=()
for a in "$@"; do
  if [ -d "$a" ]; then
    for f in "$a"/gpu-results.tgz "$a"/gpu-results.tgz.[0-9][0-9]; do [ -f "$f" ] && parts+=("$(realpath "$f")"); done
  else
    parts+=("$(realpath "$a")")
  fi
done
[ ${#parts[@]} -gt 0 ] || { echo "gpu_unpack.sh: no gpu-results.tgz in $* (did the call change no results folder?" \
                                 "see its log.txt)" >&2; exit 1; }
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mapfile -t folders < <("$PYTHON" -m nin_bench.run.gpu_call unpack "${parts[@]}")
for f in "${folders[@]}"; do
  rel=$(realpath --relative-to="$PWD" "$f")
  if [ -f "$f/records.jsonl" ]; then
    "$PYTHON" -m nin_bench report "$rel" >/dev/null && echo "unpacked $rel, report rebuilt"
  else
    echo "unpacked $rel"
  fi
done
echo "to commit: git add -- ${folders[*]}"
