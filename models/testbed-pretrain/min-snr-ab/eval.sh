#!/bin/bash
# Evaluates both A/B models side by side (one libtorch thread each), as the must-show:
# 1,000 samples per set, 40 DDIM steps, η = 1, guidance 1.5, seed 1234 (hrf eval's defaults).
cd /work/main
for v in uniform minsnr5; do
  HRF_THREADS=1 target/release/hrf eval --model /work/runs/minsnr-ab/$v/model -n 1000 --guidance 1.5 \
    --json /work/runs/minsnr-ab/$v/eval-guidance-1.5.json > /work/runs/minsnr-ab/$v/eval-guidance-1.5.txt 2>&1 &
done
wait
