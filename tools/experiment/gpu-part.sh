#!/bin/bash
# One part of the decisive experiment on a GPU machine (tools/experiment/README.md): runs the
# grid's pending runs concurrently on the card for at most LIMIT seconds and packs the runs it
# finished into $OUT/part.tgz (under the device tool's 16 MiB); a later session unpacks it into
# the repository (`tar xzf part.tgz`), commits it, and the next part goes on from there.
#   here:        DATA=0 tools/gpu/pack.sh   (the launcher and the engine into gpu/; the data would not fit)
#   on the GPU:  STEP=sweep|run LIMIT=540 JOBS=16 tools/experiment/gpu-part.sh
set -u
start=$(date +%s)
LIMIT=${LIMIT:-540}; STEP=${STEP:-run}; JOBS=${JOBS:-16}
cd "$(dirname "$0")/../.."
. tools/gpu/device-env.sh
export HRF_THREADS=${HRF_THREADS:-1}   # many runs share the 16 cores and the card
[ "$DEV" = cuda ] || { echo "no CUDA device: not running the GPU grid"; exit 1; }
minutes=$(python3 -c "print(max(1.0, ($LIMIT - ($(date +%s) - $start) - 45) / 60))")
python3 tools/experiment/decisive.py plan --grid gpu
python3 tools/experiment/decisive.py "$STEP" --grid gpu --jobs "$JOBS" --minutes "$minutes" 2>&1 | tee "${OUT:-/tmp}/part.log"
[ "$STEP" = sweep ] && python3 tools/experiment/decisive.py choose --grid gpu 2>&1 | tee -a "${OUT:-/tmp}/part.log"
python3 tools/experiment/decisive.py plan --grid gpu | tee -a "${OUT:-/tmp}/part.log"
# the results this part added (newer than its start), as paths in the repository
find experiments/decisive/gpu -type f -newermt "@$start" -print0 | tar czf "${OUT:-/tmp}/part.tgz" --null -T -
ls -la "${OUT:-/tmp}/part.tgz"
