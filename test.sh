#!/usr/bin/env bash
# The test command: set-up (idempotent), the Python reference environment for the parity checks,
# then every test of the workspace in the one build profile set-up uses (release).
set -euo pipefail
cd "$(dirname "$0")"
t0=$SECONDS
./setup.sh --no-run
tools/parity/env.sh >/dev/null

echo "[test] crates without tch build and test without libtorch"
if cargo tree -p hrf-core -p hrf-config -p hrf-rewards -e normal,build --prefix none | grep -qE '^(tch|torch-sys) '; then
  echo "hrf-core/hrf-config/hrf-rewards must not depend on tch" >&2
  exit 1
fi
LIBTORCH=/nonexistent cargo test --release --no-fail-fast -p hrf-core -p hrf-config -p hrf-rewards

echo "[test] whole workspace"
# Tests run in parallel threads: one libtorch thread each avoids oversubscribing the cores.
# --no-fail-fast: one failing test binary must not hide the results of the others.
OMP_NUM_THREADS=1 cargo test --release --workspace --no-fail-fast
echo "[test] done in $((SECONDS - t0)) s"
