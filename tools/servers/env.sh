#!/usr/bin/env bash
# The Python environment of the inference servers the tests start (Seldon MLServer, onnxruntime, from PyPI),
# in .deps/servers; prints its bin/ folder. About 410 MB installed; once, ~1 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.deps/servers
stamp=$venv/.requirements
if ! cmp -s tools/servers/requirements.txt "$stamp" 2>/dev/null || [[ ! -x $venv/bin/mlserver ]]; then
  echo "[servers] creating $venv: mlserver from PyPI" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --progress-bar off -r tools/servers/requirements.txt >&2
  cp tools/servers/requirements.txt "$stamp"
  echo "[servers] $venv ready" >&2
fi
echo "$PWD/$venv/bin"
