#!/bin/bash
# The GPU benchmark of issue "fast where it counts", in one device call of at most LIMIT seconds
# (default 530): on the ddpm-celebahq-256 architecture with random weights (256×256, 40 steps,
# 32 samples in sampling batches of 8, train batch 8) and on the testbed, hrf fp32 and bf16
# against the PyTorch + diffusers reference eager (fp32, bf16 autocast) and torch.compile'd
# (bf16), with peak GPU memory and the UNet's achieved TFLOP/s (tools/bench/ddpo_epoch.sh); then
# the first inner epoch's PPO ratio under bf16 on the GPU (a learning rate of 1e-12, so every
# ratio's distance from 1 is the kernels' doing: clipfrac is the share of ratios outside 1 ± 1e-4).
# Everything it prints lands in $OUT/bench.txt, packed with the raw rows into $OUT/bench.tgz.
#
#   here:        cargo build --release && DATA=0 tools/gpu/pack.sh   (gpu/: hrf and diffusers)
#   on the GPU:  OUT=$OUT tools/gpu/bench-epoch.sh                 (device call: carry gpu)
#
# TASK=sd runs the text-to-image check instead (its own call; carry gpu and
# models/sd-tiny/tokenizer, the CLIP vocabulary set-up writes there). CPU=1 runs either on this
# machine at a tiny size (4 samples; the testbed, or models/sd-tiny) to check it end to end
# without a GPU.
set -u
END=$((SECONDS + ${LIMIT:-530}))
left() { echo $(( END - SECONDS > 15 ? END - SECONDS : 15 )); }
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/bench.txt") 2>&1
if [ "${CPU:-0}" = 1 ]; then
  HRF=target/release/hrf DEV=cpu PY=$(tools/parity/env.sh)
  THREADS=2
  shape=(--samples 4 --batch 2 --train-batch 2 --runs 1 --threads "$THREADS")
else
  . tools/gpu/device-env.sh
  PY=python3
  THREADS=16
  shape=(--samples 32 --batch 8 --train-batch 8 --runs 1 --threads "$THREADS")
  [ "$DEV" = cuda ] || { echo "no CUDA device: nothing to measure"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
fi
export HRF PY
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" || exit 1

bench() { # SECONDS ARGS...: one ddpo_epoch.sh call, its whole process group cut at SECONDS
  local limit=$(( $1 > 30 ? $1 : 30 )); shift
  echo "=== tools/bench/ddpo_epoch.sh $* (at most $limit s)"
  setsid tools/bench/ddpo_epoch.sh "$@" --device "$DEV" &
  local pid=$!
  # (the timer must not hold the log's pipe open, nor outlive the bench)
  ( exec >/dev/null 2>&1; sleep "$limit" & s=$!; trap 'kill $s' TERM; wait $s && kill -TERM -- -"$pid" ) &
  local timer=$!
  wait "$pid"; local rc=$?
  kill "$timer" 2>/dev/null; wait "$timer" 2>/dev/null
  [ "$rc" = 0 ] || echo "=== cut or failed: rc $rc"
}

# The first inner epoch's ratio: one hrf epoch at lr 1e-12 on MODEL at PRECISION (CONFIG: the
# benchmark's hrf pipeline, default the pixel one; a train batch of half the sampling batch, so
# the two compositions differ).
ratio() { # MODEL PRECISION SAMPLES BATCH [CONFIG [STEPS]]
  local run=$OUT/ratio-$(basename "$1")-$2 config=${5:-tools/bench/ddpo-epoch.yaml}
  local steps=()
  [ -n "${6:-}" ] && steps=(--set "sampling.steps=$6")
  timeout "$(left)" env HRF_THREADS="$THREADS" "$HRF" run "$config" -q --run-dir "$run" \
    --set "model.weights=$1" --set "model.device=$DEV" --set training.epochs=1 \
    --set training.optimizer.lr=1e-12 --set "training.precision=$2" \
    --set "sampling.batch_size=$4" --set "sampling.batches_per_epoch=$(($3 / $4))" \
    --set "training.batch_size=$(( $4 > 1 ? $4 / 2 : 1 ))" "${steps[@]}" >/dev/null 2>"$run.err" \
    || { echo "ratio run failed:"; tail -3 "$run.err"; return; }
  python3 - "$run/metrics.jsonl" "$1" "$2" <<'PY'
import json, sys
e = [l for l in map(json.loads, open(sys.argv[1])) if l.get("kind") == "epoch"][0]
print(f"first inner epoch, {sys.argv[2]} {sys.argv[3]}: approx-KL {e['approx_kl']:.3e}, "
      f"clipfrac (|ratio - 1| > 1e-4) {e['clipfrac']:.4f}")
PY
}

if [ "${TASK:-unet}" = sd ]; then
  # Issue "text-to-image" GPU check: an SD-1.5-shaped pipeline with random weights at 512×512,
  # LoRA rank 4, bf16 frozen weights, 32 samples × 50 steps, train batch 4, against diffusers +
  # peft (tools/bench/sd_reference.py), and the bf16 first-inner-epoch ratio.
  if [ "${CPU:-0}" = 1 ]; then
    sd=$PWD/models/sd-tiny tiny=(--samples 4 --batch 2 --train-batch 2 --steps 4 --runs 1)
  else
    sd=/tmp/sd-1.5-random tiny=(--runs 2)
    "$PY" tools/bench/random_sd.py sd-1.5 "$sd" models/sd-tiny/tokenizer || exit 1
  fi
  bench $(( $(left) - 90 )) "$sd" --text-to-image --threads "$THREADS" "${tiny[@]}" \
    --sides hrf-bf16,ref-eager-bf16,hrf,ref-eager
  if [ "${CPU:-0}" = 1 ]; then
    ratio "$sd" bf16 4 2 tools/bench/sd-epoch.yaml 4
  else
    ratio "$sd" bf16 16 8 tools/bench/sd-epoch.yaml
  fi
elif [ "${CPU:-0}" = 1 ]; then
  bench "$(left)" models/testbed "${shape[@]}" --sides hrf,hrf-bf16,ref-eager,ref-eager-bf16 --no-compile
  ratio "$PWD/models/testbed" bf16 4 2
else
  celeba=/tmp/celebahq-256-random
  "$PY" tools/bench/random_unet.py "$celeba" || exit 1
  # The celebahq architecture first: it is what the targets are about (about 5 of the 9 minutes).
  bench $(( $(left) - 150 )) "$celeba" "${shape[@]}" \
    --sides hrf-bf16,ref-eager-bf16,hrf,ref-eager,ref-compiled-bf16
  ratio "$celeba" bf16 16 8
  ratio "$celeba" fp32 16 8
  bench $(( $(left) - 40 )) models/testbed --runs 2 --threads "$THREADS" \
    --sides hrf,hrf-micro,hrf-bf16,ref-eager,ref-compiled
  ratio "$PWD/models/testbed" bf16 64 16
fi
tar czf "$OUT/bench.tgz" -C "$OUT" bench.txt $(cd "$OUT" && ls -d ratio-*/metrics.jsonl 2>/dev/null)
ls -la "$OUT"
