#!/usr/bin/env bash
# The commands that make the committed CPU results, in order: results/d2l and results/one_by_one (the short CPU
# protocol, cpu_short), then the lr pilot of the converged CPU protocol (results/pilot_lr), then results/head and
# results/dropout under that protocol (cpu_converged; its lr is the one the pilot chose, written into
# nin_bench/suite/protocols/cpu_converged.yaml). Each is resumable: run this again after a kill and it continues
# where it stopped; on another CPU model a folder keeps its training and profile records and times its variants
# again on this machine (README "Resuming, crashes, and committed results"). Run it on an otherwise idle machine:
# the timing stage measures throughput. On 2 cores d2l and one_by_one take about half an hour, the pilot about
# 1.5 h, head and dropout several hours (README "Protocols").
# Needs the data (NIN_BENCH_DATA, see README "Data").
set -euo pipefail
cd "$(dirname "$0")/.."

python -m nin_bench run ablations/d2l.yaml --full --stages profile,timing --set timing.repeats=10 \
  --set timing.warmup=3 --no-progress
python -m nin_bench run ablations/one_by_one.yaml --set 'seeds=[0,1,2]' --no-progress
for suite in pilot_lr head dropout; do
  python -m nin_bench run "ablations/$suite.yaml" --no-progress
done
