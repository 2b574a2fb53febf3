#!/bin/bash
# Prepares gpu/ (git-ignored) for a GPU machine that has python3 with torch 2.11 and onnxruntime but
# no network and no Fashion-MNIST: the launcher, the stripped engine and the data, xz-compressed so
# that the repository and gpu/ together stay under 64 MiB. On the GPU machine, from the repository
# root: `gpu/pretrain.sh` (OUT=folder for results.tgz; BUDGET=seconds of pretraining per variant;
# BENCH="BATCH STEPS" to run the training-step benchmark first), or `tools/gpu/bench-epoch.sh`
# (the epoch benchmarks: pack with DATA=0, which leaves the data out; the tree alone is 52 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf gpu && mkdir -p gpu/bin gpu/data gpu/pack
cp target/release/hrf gpu/bin/
strip -o gpu/hrf-engine target/release/hrf-engine
xz -T2 -9 -c gpu/hrf-engine > gpu/pack/hrf-engine.xz && rm gpu/hrf-engine
# the training-step benchmark (per-variable vs flat optimiser), when built:
# cargo bench -p hrf-train --bench train_step --no-run
bench=$(ls -t target/release/deps/train_step-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
if [ -n "$bench" ] && [ "$bench" -ot target/release/hrf-engine ]; then
  echo "warning: $bench is older than hrf-engine; rebuild it with the command above" >&2
fi
if [ -n "$bench" ]; then strip -o gpu/train-step "$bench" && xz -T2 -9 -c gpu/train-step > gpu/pack/train-step.xz && rm gpu/train-step; fi
# DATA=0 leaves Fashion-MNIST out (hrf run and the benchmark do not read it; pretraining does)
if [ "${DATA:-1}" != 0 ]; then
  for f in /usr/share/datasets/fashion-mnist/*.gz; do
    zcat "$f" | xz -T2 -9 -c > "gpu/pack/$(basename "$f" .gz).xz"
  done
fi
cp tools/gpu/pretrain-variants.sh gpu/pretrain.sh
# diffusers for the benchmarks' PyTorch reference (the GPU image has torch, transformers and peft,
# not diffusers): the reference environment's copy without its pipelines (the references build
# the models and the scheduler themselves), 0.6 MB
site=$(ls -d .deps/pyref/lib/python3*/site-packages 2>/dev/null | head -1 || true)
if [ -n "$site" ] && [ -d "$site/diffusers" ]; then
  tar -C "$site" --exclude='__pycache__' --exclude='diffusers/pipelines/*/*' \
    --exclude='diffusers/modular_pipelines' --exclude='diffusers/commands' \
    --exclude='diffusers/experimental' -cJf gpu/diffusers.tar.xz diffusers
fi
# the device tool carries the tracked tree and gpu/ together, at most 64 MiB
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
packed=$(du -sb gpu | cut -f1)
echo "gpu/ $((packed / 1048576)) MiB + tracked tree $((tree / 1048576)) MiB = $(((packed + tree) / 1048576)) MiB of 64"
if [ $((packed + tree)) -gt $((64 * 1048576 - 262144)) ]; then
  echo "too close to the 64 MiB the device tool carries: slim the pack or the tree first" >&2; exit 1
fi
