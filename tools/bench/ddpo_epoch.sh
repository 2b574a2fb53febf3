#!/usr/bin/env bash
# One DDPO-IS epoch, hrf against the PyTorch + diffusers reference (tools/bench/ddpo_reference.py),
# side by side on this machine: the sides run one after another, alternating, RUNS times each
# (default 3), never at the same time; each reports its last of 2 epochs (the first pays for
# warm-up and torch.compile). Prints every run and the medians and ratios of sampling, training
# and the whole epoch, the UNet's achieved TFLOP/s (from the reference's FLOP count of the same
# network) and, on CUDA, each side's peak GPU memory.
#
#   tools/bench/ddpo_epoch.sh [MODEL_DIR] [--runs N] [--threads T] [--device D] [--sides LIST]
#                             [--micro-batch MB] [--workers-micro-batch WMB] [--samples N] [--batch B] [--train-batch T]
#                             [--steps S] [--no-compile] [--text-to-image]
#
# MODEL_DIR is a diffusers UNet2DModel folder (default models/testbed; tools/bench/random_unet.py
# writes the ddpm-celebahq-256 architecture). The epoch: N samples (default 64) × S DDIM steps
# (40) at eta 1 in sampling batches of B (16), train batch T (16), every trainable step trained.
# --text-to-image: MODEL_DIR is a Stable Diffusion folder (tools/bench/random_sd.py writes an
# SD-1.5-shaped one) and the sides run ddpo-pytorch's LoRA recipe (tools/bench/sd-epoch.yaml
# against tools/bench/sd_reference.py; defaults 32 samples × 50 steps, batches of 8, train
# batch 4); the flags below then apply to it (hrf-micro and the -bf16 sides too).
# SIDES, comma-separated (default hrf,hrf-micro,ref-eager,ref-compiled):
#   hrf              one trained step of each sample per forward/backward pass, as the reference
#   hrf-micro        with `training.micro_batch: MB` (default 128) (sample, step) pairs per pass
#   hrf-bf16         hrf with `training.precision: bf16` (libtorch's autocast)
#   hrf-micro-bf16   both
#   hrf-workers      hrf on T one-thread workers (`model.workers: T`, T = --threads) instead of
#                    one pool of T threads
#   hrf-micro-workers  both, with `training.micro_batch: WMB` (default 32: smaller passes, more
#                    of them, so that the workers share them evenly)
#   ref-eager, ref-compiled, ref-eager-bf16, ref-compiled-bf16
#                    the reference, eager or torch.compile'd, fp32 or under torch.autocast(bf16)
# --no-compile drops the compiled sides. Peak GPU memory is the most nvidia-smi saw used on the
# card while the side ran, less what was used before it started (so it counts the CUDA context
# and the caching allocator's reserve, alike for both sides); the reference also prints torch's
# own peaks. Needs target/release/hrf (./setup.sh) and, for the reference, python with torch and
# diffusers: .deps/pyref (tools/parity/env.sh) unless PY names another interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=models/testbed runs=3 threads=2 compile=1 device=cpu micro=128 wmicro=32
samples=64 batch=16 train_batch=16 sides=hrf,hrf-micro,ref-eager,ref-compiled steps=40
hrf_config=tools/bench/ddpo-epoch.yaml reference=tools/bench/ddpo_reference.py
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-compile) compile=0; shift ;;
    --device) device=$2; shift 2 ;;
    --micro-batch) micro=$2; shift 2 ;;
    --workers-micro-batch) wmicro=$2; shift 2 ;;
    --sides) sides=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --train-batch) train_batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --text-to-image) hrf_config=tools/bench/sd-epoch.yaml reference=tools/bench/sd_reference.py
      steps=50 samples=32 batch=8 train_batch=4; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) model=$1; shift ;;
  esac
done
if ((samples % batch)); then echo "--samples must be a multiple of --batch" >&2; exit 2; fi
py=${PY:-$(tools/parity/env.sh)}
hrf=${HRF:-target/release/hrf}
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
model_abs=$(cd "$model" && pwd)
results=$out/results.jsonl
on_cuda=0
[[ $device == cuda* ]] && command -v nvidia-smi >/dev/null && on_cuda=1

gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1; }

# Runs "$@" while polling the card's used memory; appends {"peak_gpu_mib": …} for the side to
# $out/peak.json (empty when not on CUDA).
with_memory() {
  : >"$out/peak.json"
  if ((on_cuda)); then
    local before
    before=$(gpu_used)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$out/mem.log" &
    local poll=$!
    "$@"
    kill "$poll" 2>/dev/null || true
    wait "$poll" 2>/dev/null || true
    python3 - "$out/mem.log" "$before" >"$out/peak.json" <<'PY'
import json, sys
used = [int(l) for l in open(sys.argv[1]) if l.strip().isdigit()]
print(json.dumps({"peak_gpu_mib": max(used, default=0) - int(sys.argv[2])}))
PY
  else
    "$@"
  fi
}

# Merges $out/peak.json into the last line of $results.
add_peak() {
  python3 - "$results" "$out/peak.json" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
row = json.loads(lines[-1])
text = open(sys.argv[2]).read().strip()
row.update(json.loads(text) if text else {})
lines[-1] = json.dumps(row)
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
}

hrf_side() { # ROUND SIDE [--set FIELD=VALUE ...]
  local run=$out/hrf-$1-$2 side=$2
  shift 2
  with_memory env HRF_THREADS="$threads" OMP_NUM_THREADS="$threads" "$hrf" run "$hrf_config" -q \
    --run-dir "$run" --set "model.weights=$model_abs" --set "model.device=$device" \
    --set "sampling.batch_size=$batch" --set "sampling.batches_per_epoch=$((samples / batch))" \
    --set "training.batch_size=$train_batch" --set "sampling.steps=$steps" "$@" >/dev/null
  python3 - "$run/metrics.jsonl" "$side" >>"$results" <<'PY'
import json, sys
epochs = [l for l in map(json.loads, open(sys.argv[1])) if l.get("kind") == "epoch"]
e = epochs[-1]
print(json.dumps({"side": sys.argv[2], "sample_s": e["sample_s"], "train_s": e["train_s"],
                  "epoch_s": e["sample_s"] + e["train_s"], "approx_kl": e["approx_kl"],
                  "clipfrac": e["clipfrac"]}))
PY
  add_peak
}

ref_side() {
  with_memory env OMP_NUM_THREADS="$threads" "$py" "$reference" --model "$model_abs" \
    --threads "$threads" --device "$device" --samples "$samples" --batch "$batch" \
    --train-batch "$train_batch" --steps "$steps" "$@" >>"$results"
  add_peak
}

run_side() { # ROUND SIDE
  case $2 in
    hrf) hrf_side "$1" hrf ;;
    hrf-micro) hrf_side "$1" "hrf-micro-batch-$micro" --set "training.micro_batch=$micro" ;;
    hrf-bf16) hrf_side "$1" hrf-bf16 --set training.precision=bf16 ;;
    hrf-micro-bf16) hrf_side "$1" "hrf-micro-batch-$micro-bf16" --set "training.micro_batch=$micro" \
      --set training.precision=bf16 ;;
    hrf-workers) hrf_side "$1" "hrf-$threads-workers" --set "model.workers=$threads" ;;
    hrf-micro-workers) hrf_side "$1" "hrf-micro-batch-$wmicro-$threads-workers" \
      --set "training.micro_batch=$wmicro" --set "model.workers=$threads" ;;
    ref-eager) ref_side ;;
    ref-eager-bf16) ref_side --autocast bf16 ;;
    ref-compiled) ((compile)) && ref_side --compile ;;
    ref-compiled-bf16) ((compile)) && ref_side --compile --autocast bf16 ;;
    *) echo "unknown side $2" >&2; exit 2 ;;
  esac
  return 0
}

IFS=, read -ra side_list <<<"$sides"
for i in $(seq 1 "$runs"); do
  for s in "${side_list[@]}"; do
    echo "[bench] round $i/$runs: $s" >&2
    run_side "$i" "$s"
  done
done

python3 - "$results" "$model" "$threads" "$device" "$samples" "$train_batch" "$steps" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model, threads, device, samples, train_batch, steps = sys.argv[2:8]
trained = next((r["trained_steps"] for r in rows if "trained_steps" in r), "?")
print(f"DDPO-IS epoch on {model} ({device}, {threads} threads): {samples} samples × {steps} steps, "
      f"train batch {train_batch}, {trained} trained steps; the last of 2 epochs per run")
def mem(r):
    m = f"   peak GPU {r['peak_gpu_mib']:7.0f} MiB" if "peak_gpu_mib" in r else ""
    if "torch_peak_allocated_mib" in r:
        m += f" (torch: {r['torch_peak_allocated_mib']:.0f} allocated, {r['torch_peak_reserved_mib']:.0f} reserved)"
    return m
for r in rows:
    print(f"  {r['side']:<30} sample {r['sample_s']:7.2f} s   train {r['train_s']:7.2f} s   epoch {r['epoch_s']:7.2f} s{mem(r)}")
med = {}
for side in dict.fromkeys(r["side"] for r in rows):
    rs = [r for r in rows if r["side"] == side]
    med[side] = {k: statistics.median(r[k] for r in rs) for k in ("sample_s", "train_s", "epoch_s")}
    if all("peak_gpu_mib" in r for r in rs):
        med[side]["peak_gpu_mib"] = max(r["peak_gpu_mib"] for r in rs)
print(f"medians over {max(sum(r['side'] == s for r in rows) for s in med)} runs each:")
for side, m in med.items():
    print(f"  {side:<30} sample {m['sample_s']:7.2f} s   train {m['train_s']:7.2f} s   epoch {m['epoch_s']:7.2f} s{mem(m)}")
ref = next((r for r in rows if "fwd_flops_per_image" in r), None)
if ref:
    n, k = int(samples), ref["trained_steps"]
    fwd, fb = ref["fwd_flops_per_image"], ref["fwd_bwd_flops_per_image"]
    print(f"UNet work (torch's FlopCounterMode): {fwd / 1e9:.2f} GFLOP per sample step forward, "
          f"{fb / 1e9:.2f} forward + backward; achieved, on the medians:")
    for side, m in med.items():
        print(f"  {side:<30} sampling {n * int(steps) * fwd / m['sample_s'] / 1e12:7.2f} TFLOP/s   "
              f"training {n * k * fb / m['train_s'] / 1e12:7.2f} TFLOP/s")
print("hrf's speed-up (reference's median time ÷ hrf's):")
for side, m in med.items():
    if side.startswith("hrf"):
        continue
    for ours in (s for s in med if s.startswith("hrf")):
        h = med[ours]
        print(f"  {ours} against {side}: " + ", ".join(
            f"{m[k] / h[k]:.2f}× on {k[:-2]}" for k in ("sample_s", "train_s", "epoch_s")))
PY
