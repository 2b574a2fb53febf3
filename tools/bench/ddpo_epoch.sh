#!/usr/bin/env bash
# One DDPO-IS epoch, hrf against the PyTorch + diffusers reference (tools/bench/ddpo_reference.py),
# side by side on this machine: the sides run one after another, alternating, RUNS times each
# (default 3), never at the same time; each reports its last of 2 epochs (the first pays for
# warm-up and torch.compile). hrf runs twice per round: as the reference does (one trained step
# of each sample per forward/backward pass) and with `training.micro_batch: MB` (default 128
# (sample, step) pairs per pass; the same gradient and optimiser steps). Prints every run and
# the medians and ratios of sampling, training and the whole epoch.
#
#   tools/bench/ddpo_epoch.sh [MODEL_DIR] [--runs N] [--threads T] [--no-compile] [--device D]
#                             [--micro-batch MB]
#
# MODEL_DIR is a diffusers UNet2DModel folder (default models/testbed). Needs target/release/hrf
# (./setup.sh) and the reference environment .deps/pyref (tools/parity/env.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=models/testbed runs=3 threads=2 compile=1 device=cpu micro=128
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-compile) compile=0; shift ;;
    --device) device=$2; shift 2 ;;
    --micro-batch) micro=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) model=$1; shift ;;
  esac
done
py=$(tools/parity/env.sh)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
model_abs=$(cd "$model" && pwd)
results=$out/results.jsonl

hrf_side() { # ROUND SIDE [--set FIELD=VALUE ...]
  local run=$out/hrf-$1-$2 side=$2
  shift 2
  HRF_THREADS=$threads OMP_NUM_THREADS=$threads target/release/hrf run tools/bench/ddpo-epoch.yaml -q \
    --run-dir "$run" --set "model.weights=$model_abs" --set "model.device=$device" "$@" >/dev/null
  python3 - "$run/metrics.jsonl" "$side" >>"$results" <<'PY'
import json, sys
epochs = [l for l in map(json.loads, open(sys.argv[1])) if l.get("kind") == "epoch"]
e = epochs[-1]
print(json.dumps({"side": sys.argv[2], "sample_s": e["sample_s"], "train_s": e["train_s"],
                  "epoch_s": e["sample_s"] + e["train_s"]}))
PY
}

ref_side() {
  OMP_NUM_THREADS=$threads "$py" tools/bench/ddpo_reference.py --model "$model_abs" \
    --threads "$threads" --device "$device" "$@" >>"$results"
}

for i in $(seq 1 "$runs"); do
  echo "[bench] round $i/$runs: hrf" >&2; hrf_side "$i" hrf
  echo "[bench] round $i/$runs: hrf, micro-batch $micro" >&2
  hrf_side "$i" "hrf-micro-batch-$micro" --set "training.micro_batch=$micro"
  echo "[bench] round $i/$runs: reference, eager" >&2; ref_side
  if ((compile)); then
    echo "[bench] round $i/$runs: reference, torch.compile" >&2; ref_side --compile
  fi
done

python3 - "$results" "$model" "$threads" "$device" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"DDPO-IS epoch on {sys.argv[2]} ({sys.argv[4]}, {sys.argv[3]} threads): 64 samples × 40 steps, "
      f"train batch 16, 39 trained steps, fp32; the last of 2 epochs per run")
for r in rows:
    print(f"  {r['side']:<26} sample {r['sample_s']:7.2f} s   train {r['train_s']:7.2f} s   epoch {r['epoch_s']:7.2f} s")
med = {}
for side in dict.fromkeys(r["side"] for r in rows):
    rs = [r for r in rows if r["side"] == side]
    med[side] = {k: statistics.median(r[k] for r in rs) for k in ("sample_s", "train_s", "epoch_s")}
print(f"medians over {len([r for r in rows if r['side'] == 'hrf'])} runs each:")
for side, m in med.items():
    print(f"  {side:<26} sample {m['sample_s']:7.2f} s   train {m['train_s']:7.2f} s   epoch {m['epoch_s']:7.2f} s")
print("hrf's speed-up (reference's median time ÷ hrf's):")
for side, m in med.items():
    if side.startswith("hrf"):
        continue
    for ours in (s for s in med if s.startswith("hrf")):
        h = med[ours]
        print(f"  {ours} against {side}: " + ", ".join(
            f"{m[k] / h[k]:.2f}× on {k[:-2]}" for k in ("sample_s", "train_s", "epoch_s")))
PY
