#!/bin/bash
# Re-evaluates the equal-epochs seed-0 finals at the training eta (1) on 1000 fixed-seed samples.
# (Made after the first seed showed HRF models sampling well at eta 1, their training eta, but
# collapsing at the eta 0 of the committed evaluation; the output is in
# experiments/hrf-vs-ddpo/eta0-seed0/eta1-reevaluation/.)
cd "$(dirname "$0")/../.."
out=experiments/hrf-vs-ddpo/eta0-seed0/eta1-reevaluation
mkdir -p $out
for task in compressibility aesthetic; do
  reward=$([ $task = compressibility ] && echo jpeg-compressibility || echo aesthetic)
  target/release/hrf eval --model models/testbed-stage1 --steps 20 --eta 1 -n 1000 --unconditional-only --reward $reward --json $out/$task-base.json > /dev/null 2>&1
  for m in ddpo ddpo-kl hrf hrf-d; do
    d=runs/experiment/hrf-vs-ddpo-eta0/equal-epochs/$task/$m-s0/final
    [ -d $d ] && target/release/hrf eval --model $d --steps 20 --eta 1 -n 1000 --unconditional-only --reward $reward --json $out/$task-$m-s0.json > /dev/null 2>&1
  done
done

python3 tools/experiment/summarize_eta1.py
