#!/usr/bin/env bash
# Before calling the device tool: put what the GPU machine needs but cannot reach into git-ignored paths of this
# checkout (they travel only when named in `carry`): the wheels it lacks (.wheels/), the data (.gpu-data/), and
# the run state of every results/gpu-* folder (their .cache/: resume fingerprint, an unfinished run's checkpoint)
# packed into one file, .gpu-state.tgz, so that `carry` stays at three paths however many folders there are.
# After a call, unpack what came back with `tar xzf <files_at>/gpu-results.tgz -C .` and run this again.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
mkdir -p .wheels .gpu-data/fashion-mnist
cp -n "$SHARED"/wheels-gpu/*.whl .wheels/
cp -n "$SHARED"/data/fashion-mnist/* .gpu-data/fashion-mnist/
cp -n "$SHARED"/data/cifar10-jpeg.tar.gz .gpu-data/
exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for p in /.wheels/ /.gpu-data/ /.gpu-state.tgz; do grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
rm -f .gpu-state.tgz
mapfile -t state < <(find results -path 'results/gpu-*' -type d -name .cache 2>/dev/null)
if [ ${#state[@]} -gt 0 ]; then tar czf .gpu-state.tgz "${state[@]}"; else tar czf .gpu-state.tgz -T /dev/null; fi
du -sh .wheels .gpu-data .gpu-state.tgz
echo 'carry: [".wheels", ".gpu-data", ".gpu-state.tgz"]'
