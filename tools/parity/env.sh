#!/usr/bin/env bash
# The Python reference environment for parity fixtures and checks: torch 2.11 (the full PyPI
# install, CUDA wheels included, since `import torch` needs them) + diffusers + transformers, in .deps/pyref.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.deps/pyref/bin/python
if ! "$py" -c "import torch, diffusers, safetensors, transformers, peft" >/dev/null 2>&1; then
  # (to stderr: callers keep stdout for the interpreter's path)
  echo "[parity] creating .deps/pyref: torch 2.11.0 + diffusers, about 4.8 GB installed; once, ~5 min" >&2
  python3 -m venv .deps/pyref
  "$py" -m pip install -q --progress-bar off -r tools/parity/requirements.txt >&2
  echo "[parity] .deps/pyref ready" >&2
fi
echo "$py"
