#!/bin/bash
# Prepares gpu/ (git-ignored) for a GPU machine that has python3 with torch 2.11 and onnxruntime but
# no network and no Fashion-MNIST: the launcher, the stripped engine and the data, xz-compressed so
# that the repository and gpu/ together stay under 64 MiB. On the GPU machine, from the repository
# root: `gpu/pretrain.sh` (OUT=folder for results.tgz; BUDGET=seconds of pretraining per variant).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf gpu && mkdir -p gpu/bin gpu/data gpu/pack
cp target/release/hrf gpu/bin/
strip -o gpu/hrf-engine target/release/hrf-engine
xz -T2 -9 -c gpu/hrf-engine > gpu/pack/hrf-engine.xz && rm gpu/hrf-engine
for f in /usr/share/datasets/fashion-mnist/*.gz; do
  zcat "$f" | xz -T2 -9 -c > "gpu/pack/$(basename "$f" .gz).xz"
done
cp tools/gpu/pretrain-variants.sh gpu/pretrain.sh
du -sh gpu
