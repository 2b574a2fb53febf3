#!/bin/bash
# Runs on a GPU machine from gpu/ as tools/gpu/pack.sh prepares it (copied there as pretrain.sh):
# checks the CUDA path (hrf doctor), pretrains several variants side by side for BUDGET seconds each
# (steps sized from a probe run side by side the same way), evaluates every model with hrf eval at
# each (η, guidance) in EVALS and times sampling; logs, pipelines, metrics, evaluations, grids and
# the exported models end up in $OUT/results.tgz (checkpoints, probes and the runs' final/ copies
# stay behind: one file must stay under the device tool's 16 MiB).
#   VARIANTS: space-separated NAME=CONFIG,BATCH,LR,CLASS_DROPOUT[,MIN_SNR_GAMMA]
#   EVALS:    space-separated ETA:GUIDANCE
#   PROBE:    seconds the variants train side by side to measure their rates (default 30); each
#             long run's steps are 90% of what its rate gives in BUDGET seconds, and
#             training.max_seconds ends it with its model exported if it falls behind anyway
#   BENCH:    "BATCH STEPS" runs the packed training-step benchmark first
#   LIMIT:    seconds the whole script may take (the device call's timeout less a margin): every
#             stage is cut to what is left, and results.tgz is written after training and again
#             at the end, so a killed call still brings the models back.
set -u
END=$((SECONDS + ${LIMIT:-570}))
left() { echo $(( END - SECONDS - ${1:-0} > 10 ? END - SECONDS - ${1:-0} : 10 )); }
cd "$(dirname "$0")"
BUDGET=${BUDGET:-240}      # seconds of pretraining
VARIANTS=${VARIANTS:-"A=testbed,256,0.002,0.1 B=testbed,128,0.002,0.1"}
EVALS=${EVALS:-"1:1.5"}
NEVALS=$(echo $EVALS | wc -w)
rm -rf work; mkdir -p work; ln -sfn "$PWD/work" out
exec > >(tee out/script.log) 2>&1
HRF="$PWD/bin/hrf"
python3 - <<'PY'
import lzma, os, shutil
for f in os.listdir('pack'):
    dst = ('bin/' if f.startswith(('hrf-engine', 'train-step')) else 'data/') + f[:-3]
    with lzma.open('pack/' + f) as i, open(dst, 'wb') as o:
        shutil.copyfileobj(i, o)
PY
chmod +x bin/*; ls -la bin data
export HRF_THREADS=${HRF_THREADS:-4}
date; nvidia-smi -L 2>&1 | head -2
python3 -c "import torch,sys;print('python torch', torch.__version__, torch.cuda.is_available(), sys.executable)" 2>&1
if ! python3 -c "import torch" 2>/dev/null; then
  TL=$(timeout 20 find / -xdev -name libtorch_cuda.so -path '*torch/lib/*' 2>/dev/null | head -1)
  [ -n "$TL" ] && mkdir -p bin/torch && ln -sfn "$(dirname "$TL")" bin/torch/lib && echo "torch lib: $TL"
fi
if ! python3 -c "import onnxruntime" 2>/dev/null; then
  export ORT_DYLIB_PATH=$(timeout 20 find / -xdev -name 'libonnxruntime.so*' -path '*onnxruntime/capi/*' 2>/dev/null | head -1); echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
fi
# the data must be in place before the doctor's check, which fails without it
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && for f in data/*; do gzip -1 -c "$f" > /usr/share/datasets/fashion-mnist/$(basename "$f").gz; done || echo "cannot install data for eval"
fi
"$HRF" doctor 2>&1
DEV=${DEV:-cuda}
if ! "$HRF" doctor --device "$DEV" 2>&1 | grep -q "^device *Cuda"; then echo "no $DEV: falling back to cpu"; DEV=cpu; export HRF_THREADS=8; fi
# the training-step benchmark (per-variable vs flat optimiser updates), when packed and asked for
if [ -n "${BENCH:-}" ] && [ -x bin/train-step ]; then
  TORCH_LIB=${TORCH_LIB:-$(python3 -c "import torch,os;print(os.path.join(os.path.dirname(torch.__file__),'lib'))" 2>/dev/null || dirname "$(readlink -f bin/torch/lib/libtorch_cpu.so)")}
  [ "$DEV" = cpu ] && export HRF_NO_CUDA=1
  LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout $(left 300) bin/train-step $BENCH 2>&1 | tee out/train-step-bench.txt
  unset HRF_NO_CUDA
fi
# one variant: configs/testbed-pretrain.yaml's recipe with these overrides (recorded in its run/pipeline.yaml)
# training.max_seconds ends a run that falls behind its probe's rate with its model exported; the
# timeout (SIGTERM: checkpoint, no export) is only the backstop.
pretrain() { # timeout max_seconds name steps batch lr warmup dropout config
  local limit=$1 secs=$2 name=$3 steps=$4 batch=$5 lr=$6 warmup=$7 drop=$8 cfg=$9 gamma=${10}
  timeout -k 20 "$limit" "$HRF" pretrain ../configs/testbed-pretrain.yaml -q --set model.config=$cfg --set model.device=$DEV \
    --set "data.path='$PWD/data'" --set "output='$PWD/out/$name/run'" --set "export='$PWD/out/$name/model'" \
    --set training.steps=$steps --set training.batch_size=$batch --set training.optimizer.lr=$lr \
    --set training.warmup_steps=$warmup --set training.class_dropout=$drop --set training.ema_decay=${EMA:-0.999} \
    --set training.log_every=${LOGEVERY:-50} --set training.sample_every=100000 \
    --set training.checkpoint_every=1000 --set training.keep_checkpoints=1 --set training.max_seconds=$secs \
    ${gamma:+--set training.min_snr_gamma=$gamma}; }
# a probe's rate: the median over its logged windows after the first (warm-up), so neither the
# start nor a last window run after the other probes stopped decides it
rate() { python3 -c "
import json, statistics
r = [json.loads(l)['images_per_s'] for l in open('out/$1/run/metrics.jsonl')]
print(statistics.median(r[1:] or r))"; }
side_by_side() { # prefix steps-or-empty max_seconds timeout
  local pids=""
  for v in $VARIANTS; do
    name=${v%%=*}; IFS=, read -r cfg batch lr drop gamma <<< "${v#*=}"
    if [ -z "$2" ] && [ -z "$(rate probe$name 2>/dev/null)" ]; then echo "$name: its probe failed, skipped"; continue; fi
    steps=${2:-$(python3 -c "print(max(20,int($(rate probe$name)*$BUDGET*0.9/$batch/50)*50))")}
    echo "$1$name: $cfg, batch $batch, lr $lr, class dropout $drop${gamma:+, min-SNR γ $gamma}, $steps steps"
    pretrain "$4" "$3" "$1$name" "$steps" "$batch" "$lr" "$(( steps < 3000 ? steps / 10 : 300 ))" "$drop" "$cfg" "$gamma" > "out/$1$name.log" 2>&1 & pids="$pids $!"
  done
  # (a bare `wait` would also wait for the log's tee, i.e. for ever)
  [ -z "$pids" ] || wait $pids; }
# probes: all variants at once for PROBE seconds, so each rate is measured under the others' load
side_by_side probe 1000000 "${PROBE:-30}" $((${PROBE:-30} + 90))
for v in $VARIANTS; do echo "probe ${v%%=*}: $(rate probe${v%%=*}) images/s"; done
T0=$(date +%s)
# a long run can fall behind its probe's rate (the 1.1M model side by side, 2026-11-26: by ~25%): a wide margin
LONG=$((BUDGET * 13 / 10 + 60)); CAP=$(left $((NEVALS * 45 + 40))); LONG=$(( LONG < CAP ? LONG : CAP ))
# max_seconds leaves the backstop 45 s for start-up (CUDA, data) and the final grid and export
side_by_side "" "" $(( LONG > 90 ? LONG - 45 : LONG / 2 + 1 )) $LONG
echo "pretraining took $(( $(date +%s) - T0 )) s"
archive() { tar czf "$OUT/results.tgz" --exclude=checkpoints --exclude=final --exclude="./probe*" -C work .; }
archive
pids=""
for v in $VARIANTS; do name=${v%%=*}; tail -n 2 out/$name.log
  if [ -e out/$name/model/config.json ]; then
    ( for e in $EVALS; do timeout $(left 30) "$HRF" eval --model out/$name/model -n ${EVALN:-1000} --eta ${e%%:*} --guidance ${e#*:} --device $DEV --json out/$name/eval-eta${e%%:*}-g${e#*:}.json > out/$name/eval-eta${e%%:*}-g${e#*:}.txt 2>&1; done ) & pids="$pids $!"
  fi
done; [ -z "$pids" ] || wait $pids
for v in $VARIANTS; do name=${v%%=*}; for e in $EVALS; do echo "== $name eta ${e%%:*} guidance ${e#*:}"; tail -n 4 out/$name/eval-eta${e%%:*}-g${e#*:}.txt 2>/dev/null; done; done
for v in $VARIANTS; do name=${v%%=*}; if [ -e out/$name/model/config.json ]; then TIMEFORMAT="$name sample 64x40 on $DEV: %R s"; time timeout $(left 5) "$HRF" sample --model out/$name/model -n 64 --steps 40 --seed 0 --device $DEV -o out/$name/uncond-64.png > /dev/null 2>&1; fi; done
archive
ls -la "$OUT"
date
