#!/usr/bin/env bash
# Before one call of the device tool (README, "GPU"): put what the GPU machine needs and cannot reach into the
# git-ignored folder .gpu/ (listed in .git/info/exclude; it travels only because `carry` names it):
#   .gpu/wheels/  the wheels its image lacks (pydantic, fvcore and their needs: ../shared/wheels-gpu)
#   .gpu/data/    only the data the call's steps use: cifar10-jpeg.tar.gz by default (the default batch trains and
#                 times CIFAR-10 only); --data cifar10,fashion_mnist adds Fashion-MNIST (31 MB) for an opt-in step
#   .gpu/commit   "<commit> clean|dirty" of this checkout: the manifest's git commit where there is no .git
# then sum everything that will travel (tracked + untracked-not-ignored + shared/ + .gpu/) and refuse above the
# device's 64 MiB with one line saying what to drop. Prints carry_bytes=N and the `carry` list for the call.
# Usage: bash scripts/gpu_prepare.sh [--data cifar10[,fashion_mnist]]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
PYTHON=${PYTHON:-python3}
DATA=cifar10
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    *) echo "gpu_prepare.sh: unknown argument $1 (usage: gpu_prepare.sh [--data cifar10[,fashion_mnist]])" >&2
       exit 2 ;;
  esac
done

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.gpu/ "$exclude" 2>/dev/null || echo /.gpu/ >> "$exclude"

# .gpu/ is rebuilt to hold exactly what this call needs (a file left from an earlier, larger call would travel)
rm -rf .gpu
mkdir -p .gpu/data .gpu/wheels
cp "$SHARED"/wheels-gpu/*.whl .gpu/wheels/
for d in ${DATA//,/ }; do
  case $d in
    cifar10) cp "$SHARED"/data/cifar10-jpeg.tar.gz .gpu/data/ ;;
    fashion_mnist) mkdir -p .gpu/data/fashion-mnist && cp "$SHARED"/data/fashion-mnist/*.gz .gpu/data/fashion-mnist/ ;;
    *) echo "gpu_prepare.sh: unknown data set $d (cifar10, fashion_mnist)" >&2; exit 2 ;;
  esac
done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PYTHON" -m nin_bench.run.gpu_call commit
"$PYTHON" -m nin_bench.run.gpu_call size --carry .gpu
