# Sourced on a GPU machine from the repository root after tools/gpu/pack.sh's gpu/ arrived with
# the tree: unpacks the engine and the data, finds the machine's libtorch (the preinstalled
# torch wheel) and ONNX Runtime, installs Fashion-MNIST where hrf looks for it, and sets HRF
# (the launcher) and DEV (cuda, or cpu when hrf's doctor finds no CUDA device).
python3 - <<'PY'
import lzma, os, shutil
for f in os.listdir('gpu/pack'):
    dst = ('gpu/bin/' if f.startswith(('hrf-engine', 'train-step')) else 'gpu/data/') + f[:-3]
    with lzma.open('gpu/pack/' + f) as i, open(dst, 'wb') as o:
        shutil.copyfileobj(i, o)
PY
chmod +x gpu/bin/*
date; nvidia-smi -L 2>&1 | head -2
if ! python3 -c "import torch" 2>/dev/null; then
  TL=$(timeout 20 find / -xdev -name libtorch_cuda.so -path '*torch/lib/*' 2>/dev/null | head -1)
  [ -n "$TL" ] && mkdir -p gpu/bin/torch && ln -sfn "$(dirname "$TL")" gpu/bin/torch/lib && echo "torch lib: $TL"
fi
if ! python3 -c "import onnxruntime" 2>/dev/null; then
  export ORT_DYLIB_PATH=$(timeout 20 find / -xdev -name 'libonnxruntime.so*' -path '*onnxruntime/capi/*' 2>/dev/null | head -1); echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
fi
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && ls gpu/data/* >/dev/null 2>&1; then
  mkdir -p /usr/share/datasets/fashion-mnist && for f in gpu/data/*; do gzip -1 -c "$f" > /usr/share/datasets/fashion-mnist/$(basename "$f").gz; done || echo "cannot install the data"
fi
if [ -e gpu/diffusers.tar.xz ] && ! python3 -c "import diffusers" 2>/dev/null; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf gpu/diffusers.tar.xz && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
HRF="$PWD/gpu/bin/hrf"
DEV=cuda
if ! "$HRF" doctor --device cuda 2>&1 | grep -q "^device *Cuda"; then echo "no CUDA: the runs fall back to cpu"; DEV=cpu; fi
export HRF DEV
