#!/usr/bin/env bash
# Before calling the device tool: put what the GPU machine needs but cannot reach into git-ignored folders of this
# checkout (they travel only when named in `carry`): the wheels it lacks (.wheels/) and the data (.gpu-data/).
# Prints the `carry` list for the next call: those two folders and the .cache/ of every results/gpu-* folder.
# After a call, unpack what came back with:  tar xzf <files_at>/gpu-results.tgz -C .
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
mkdir -p .wheels .gpu-data/fashion-mnist
cp -n "$SHARED"/wheels-gpu/*.whl .wheels/
cp -n "$SHARED"/data/fashion-mnist/* .gpu-data/fashion-mnist/
cp -n "$SHARED"/data/cifar10-jpeg.tar.gz .gpu-data/
exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for p in /.wheels/ /.gpu-data/; do grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
carry='".wheels", ".gpu-data"'
for d in results/gpu-*/.cache; do [ -d "$d" ] && carry="$carry, \"$d\""; done
du -sh .wheels .gpu-data results/gpu-*/.cache 2>/dev/null || true
echo "carry: [$carry]"
