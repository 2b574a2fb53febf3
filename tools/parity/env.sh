#!/usr/bin/env bash
# The Python reference environment for parity fixtures and checks: torch 2.11 (the full PyPI
# install, CUDA wheels included, since `import torch` needs them) + diffusers, in .deps/pyref.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.deps/pyref/bin/python
if ! "$py" -c "import torch, diffusers, safetensors" >/dev/null 2>&1; then
  echo "[parity] creating .deps/pyref (torch 2.11.0 + diffusers; ~3 GB of wheels)"
  python3 -m venv .deps/pyref
  "$py" -m pip install -q -r tools/parity/requirements.txt
fi
echo "$py"
