#!/bin/bash
# Runs on a GPU machine from gpu/ as tools/gpu/pack.sh prepares it (copied there as pretrain.sh):
# checks the CUDA path (hrf doctor), pretrains two variants (A: testbed, batch 256; B: see below) side by side
# for BUDGET seconds each (steps sized from a 100-step probe), evaluates both with hrf eval and
# times sampling; everything but checkpoints ends up in $OUT/results.tgz.
set -u
cd "$(dirname "$0")"
BUDGET=${BUDGET:-240}      # seconds of pretraining
# Variant B: the 2026-11-26 run used the testbed at batch 128; B_CONFIG=testbed-wide B_BATCH=256 is next.
B_CONFIG=${B_CONFIG:-testbed}; B_BATCH=${B_BATCH:-128}
rm -rf work; mkdir -p work; ln -sfn "$PWD/work" out
exec > >(tee out/script.log) 2>&1
HRF=$PWD/bin/hrf
python3 - <<'PY'
import lzma, os, shutil
for f in os.listdir('pack'):
    dst = ('bin/' if f.startswith('hrf-engine') else 'data/') + f[:-3]
    with lzma.open('pack/' + f) as i, open(dst, 'wb') as o:
        shutil.copyfileobj(i, o)
PY
chmod +x bin/hrf-engine; ls -la bin data
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
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp data/* /usr/share/datasets/fashion-mnist/ || echo "cannot install data for eval"
fi
$HRF doctor 2>&1
DEV=${DEV:-cuda}
if ! $HRF doctor --device "$DEV" 2>&1 | grep -q "^device *Cuda"; then echo "no $DEV: falling back to cpu"; DEV=cpu; export HRF_THREADS=8; fi
gen() { # name steps batch lr warmup ema config
  sed -e "s/NAME/$1/g" -e "s/CONFIG/${7:-testbed}/" -e "s/STEPS/$2/" -e "s/BATCH/$3/" -e "s/LR/$4/" -e "s/WARMUP/$5/" -e "s/EMA/$6/" -e "s/DEVICE/$DEV/" -e "s/LOGEVERY/${LOGEVERY:-50}/" template.yaml > "$1.yaml"
  cp "$1.yaml" out/; }
rate() { python3 -c "import json;print(json.loads(open('out/$1/run/metrics.jsonl').read().splitlines()[-1])['images_per_s'])"; }
# probe both configs side by side (as they will run)
gen probeA ${PROBE:-100} 256 0.002 50 0.999; gen probeB ${PROBE:-100} $B_BATCH 0.002 50 0.999 $B_CONFIG
$HRF pretrain -q probeA.yaml > out/probeA.log 2>&1 & p1=$!; $HRF pretrain -q probeB.yaml > out/probeB.log 2>&1 & p2=$!; wait $p1 $p2
tail -q -n 2 out/probeA.log out/probeB.log
RA=$(rate probeA); RB=$(rate probeB); echo "probe images/s: A $RA B $RB"
SA=$(python3 -c "print(max(20,int($RA*$BUDGET/256/50)*50))"); SB=$(python3 -c "print(max(20,int($RB*$BUDGET/$B_BATCH/50)*50))")
echo "steps: A $SA (batch 256) B $SB (batch $B_BATCH, $B_CONFIG)"
gen A "$SA" 256 0.002 300 0.999; gen B "$SB" $B_BATCH 0.002 200 0.999 $B_CONFIG
T0=$(date +%s)
timeout $((BUDGET+90)) $HRF pretrain -q A.yaml > out/A.log 2>&1 & p1=$!; timeout $((BUDGET+90)) $HRF pretrain -q B.yaml > out/B.log 2>&1 & p2=$!; wait $p1 $p2
echo "pretraining took $(( $(date +%s) - T0 )) s"; tail -q -n 3 out/A.log out/B.log
pids=""; for v in A B; do if [ -e out/$v/model/config.json ]; then timeout 100 $HRF eval --model out/$v/model -n ${EVALN:-1000} --device $DEV --json out/$v/eval.json > out/$v/eval.txt 2>&1 & pids="$pids $!"; fi; done; wait $pids
for v in A B; do cat out/$v/eval.txt 2>/dev/null | tail -12; done
for v in A B; do if [ -e out/$v/model/config.json ]; then TIMEFORMAT="$v sample 64x40 on $DEV: %R s"; time $HRF sample --model out/$v/model -n 64 --steps 40 --seed 0 --device $DEV -o out/$v/uncond-64.png > /dev/null 2>&1; fi; done
tar czf "$OUT/results.tgz" --exclude=checkpoints -C work .
date
