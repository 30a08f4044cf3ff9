#!/usr/bin/env bash
# The commands that made the committed CPU results (results/d2l, one_by_one, head, dropout), in the order they
# ran. Each is resumable: run this again after a kill and it continues where it stopped. On 2 cores it takes
# about an hour; run it on an otherwise idle machine, since the timing stage's throughput is measured too.
# Needs the data (NIN_BENCH_DATA, see README "Data"). On a machine with the committed folders' CPU model they
# continue from what is committed; elsewhere they are moved aside to results/<name>/.cache/superseded-<time>/ and
# measured afresh (README "Resuming, crashes, and committed results").
set -euo pipefail
cd "$(dirname "$0")/.."

python -m nin_bench run ablations/d2l.yaml --full --stages profile,timing --set timing.repeats=10 \
  --set timing.warmup=3 --no-progress
for suite in one_by_one head dropout; do
  python -m nin_bench run "ablations/$suite.yaml" --set 'seeds=[0,1,2]' --no-progress
done
