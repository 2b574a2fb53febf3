#!/usr/bin/env bash
# Packages a Python reward (a module defining `class Reward(exports.Reward)` against
# wit/reward.wit) as a WebAssembly component with componentize-py, in its own venv under .deps/.
#   tools/plugins/build_python.sh path/to/app.py out.wasm [world]
# The folder of app.py is on the guest's module path (put helper modules beside it). Pure-Python
# code only: native extensions (numpy, torch) need the `process` reward kind instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
app=$(realpath "$1"); out=$(realpath -m "$2"); world=${3:-reward-plugin}
venv="$root/.deps/componentize-py"
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "0.25.1"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q componentize-py==0.25.1
fi
mkdir -p "$(dirname "$out")"
cd "$(dirname "$app")"
"$venv/bin/componentize-py" -d "$root/wit" -w "$world" componentize "$(basename "$app" .py)" -o "$out" >/dev/null
echo "$out"
