#!/usr/bin/env bash
# Sets up hrf on a fresh Debian machine that reaches only the package registries, builds it,
# and runs the main job on the bundled default. Idempotent: a second run only checks.
#
#   ./setup.sh            install, build, run the default job (hrf doctor, then the quickstart run)
#   ./setup.sh --no-run   install and build only (used by ./test.sh and CI)
#
# Everything lands in .deps/ (git-ignored). Nothing is exported to the user's shell: the build
# reads .cargo/config.toml, and the binary finds libtorch and onnxruntime by itself.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
run_default=1
[[ "${1:-}" == "--no-run" ]] && run_default=0

TORCH_VERSION=2.11.0           # what tch =0.24.0 expects
ORT_VERSION=1.30.0             # ort 2.0.0-rc.15 with api-30
CUDART_VERSION=13.0.96         # libtorch_cpu.so needs libcudart.so.13 ...
CUPTI_VERSION=13.0.85          # ... and libcupti.so.13, even on CPU
deps=$root/.deps
wheels=$deps/wheels
mkdir -p "$deps" "$wheels"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
t0=$SECONDS

# --- apt: the testbed's real data, the C toolchain, openssl (the TLS test makes its certificates) -
need_apt=()
for pkg in dataset-fashion-mnist build-essential unzip pkg-config openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  say "apt: installing ${need_apt[*]}"
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
  || { echo "Fashion-MNIST IDX files missing under /usr/share/datasets/fashion-mnist" >&2; exit 1; }

fetch_wheel() { # name==version -> path of the wheel in $wheels
  local spec=$1 name=${1%%==*}
  local found
  found=$(ls "$wheels"/"${name//-/_}"-"${spec##*==}"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$found" ]]; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "$spec" >&2
    found=$(ls "$wheels"/"${name//-/_}"-"${spec##*==}"-*.whl | head -n1)
  fi
  echo "$found"
}

# --- libtorch ------------------------------------------------------------------------------------
# A python3 that already has torch $TORCH_VERSION (the GPU machines) lends its own libtorch, CUDA
# included. Elsewhere we unpack the PyPI wheel, trimmed of its CUDA libraries.
py_torch=$(python3 - <<EOF 2>/dev/null || true
import torch, os
if torch.__version__.split('+')[0] == "$TORCH_VERSION":
    print(os.path.dirname(torch.__file__))
EOF
)
if [[ -n "$py_torch" ]]; then
  libtorch=$py_torch
else
  libtorch=$deps/libtorch-$TORCH_VERSION/torch
  if [[ ! -f $libtorch/lib/libtorch_cpu.so || ! -f $libtorch/build-version ]]; then
    say "libtorch $TORCH_VERSION: unpacking the PyPI torch wheel (CPU libraries only)"
    whl=$(fetch_wheel torch==$TORCH_VERSION)
    rm -rf "$deps/libtorch-$TORCH_VERSION"
    mkdir -p "$deps/libtorch-$TORCH_VERSION"
    unzip -q "$whl" 'torch/lib/*' 'torch/include/*' -d "$deps/libtorch-$TORCH_VERSION" \
      -x 'torch/lib/libtorch_cuda*' 'torch/lib/libtorch_python.so' 'torch/lib/libtorch_nvshmem.so' \
         'torch/lib/libc10_cuda.so' 'torch/lib/libcaffe2_nvrtc.so'
    cu13=$deps/libtorch-$TORCH_VERSION/nvidia/cu13/lib   # matches the torch libs' RPATH
    mkdir -p "$cu13"
    for spec in nvidia-cuda-runtime==$CUDART_VERSION nvidia-cuda-cupti==$CUPTI_VERSION; do
      unzip -q -j -o "$(fetch_wheel "$spec")" 'nvidia/cu13/lib/*' -d "$cu13"
    done
    echo "$TORCH_VERSION" > "$libtorch/build-version"
  fi
fi
ln -sfn "$libtorch" "$deps/libtorch"

# --- onnxruntime ---------------------------------------------------------------------------------
ort_lib=$deps/onnxruntime/libonnxruntime.so.$ORT_VERSION
if [[ ! -f $ort_lib ]]; then
  say "onnxruntime $ORT_VERSION: unpacking the PyPI wheel"
  mkdir -p "$deps/onnxruntime"
  whl=$(fetch_wheel onnxruntime==$ORT_VERSION)
  unzip -q -j -o "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$deps/onnxruntime"
fi

# --- the CLIP BPE vocabulary ---------------------------------------------------------------------
# OpenAI's merges as open-clip-torch's wheel ships them, made into a diffusers tokenizer folder's
# vocab.json + merges.txt (tools/parity/clip_vocab.py): the real CLIP tokenizer without a hub.
clip_vocab=$deps/clip-vocab
if [[ ! -f $clip_vocab/vocab.json || tools/parity/clip_vocab.py -nt $clip_vocab/vocab.json ]]; then
  say "CLIP vocabulary: from the PyPI open-clip-torch==3.3.0 wheel"
  whl=$(fetch_wheel open-clip-torch==3.3.0)
  tmp=$(mktemp -d)
  unzip -q -j -o "$whl" 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d "$tmp"
  python3 tools/parity/clip_vocab.py "$tmp/bpe_simple_vocab_16e6.txt.gz" "$clip_vocab" >/dev/null
  rm -rf "$tmp"
fi
# The bundled tiny Stable Diffusion pipeline (models/sd-tiny) ships without its vocabulary files.
for f in vocab.json merges.txt; do
  cmp -s "$clip_vocab/$f" "models/sd-tiny/tokenizer/$f" || cp "$clip_vocab/$f" "models/sd-tiny/tokenizer/$f"
done

# --- Rust targets for WASM plugins ---------------------------------------------------------------
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  say "rustup: adding wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# --- build ---------------------------------------------------------------------------------------
say "building (release)"
cargo build --release --workspace --bins
say "building the reward plugins (wasm32-wasip2: the Rust SDK, examples, test fixtures)"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
say "building the native example plugins (C with cc, Rust)"
mkdir -p plugins/target/native
cc -shared -fPIC -O2 -Wall -Wextra -Iplugins/native/include \
  -o plugins/target/native/libbrightness_c.so plugins/native/examples/brightness.c
# A fixture for the tests: the same plugin claiming ABI version 2.
cc -shared -fPIC -O2 -DHRF_TEST_ABI=2 -Iplugins/native/include \
  -o plugins/target/native/libbrightness_c_abi2.so plugins/native/examples/brightness.c
CARGO_TARGET_DIR=plugins/target/native-rust \
  cargo build --release --manifest-path plugins/native/rust-example/Cargo.toml
if [[ ! plugins/target/python/contrast.wasm -nt plugins/python/examples/contrast/app.py ||
      plugins/python/examples/contrast/contrast.py -nt plugins/target/python/contrast.wasm ||
      wit/reward.wit -nt plugins/target/python/contrast.wasm ]]; then
  say "packaging the Python example reward (componentize-py 0.25.1)"
  tools/plugins/build_python.sh plugins/python/examples/contrast/app.py plugins/target/python/contrast.wasm
fi
say "set-up done in $((SECONDS - t0)) s"

if ((run_default)); then
  say "running: hrf doctor"
  target/release/hrf doctor
  say "running the default job: hrf run configs/quickstart.yaml"
  target/release/hrf run configs/quickstart.yaml
fi
