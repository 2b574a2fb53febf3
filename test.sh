#!/usr/bin/env bash
# The test command: set-up (idempotent), the Python reference environment for the parity checks,
# then every test of the workspace in the one build profile set-up uses (release).
set -euo pipefail
cd "$(dirname "$0")"
t0=$SECONDS
./setup.sh --no-run
tools/parity/env.sh >/dev/null
# Seldon MLServer, which tests/servers.rs starts on 127.0.0.1 (kind: http rewards).
tools/servers/env.sh >/dev/null

echo "[test] crates without tch build and test without libtorch"
no_torch=(hrf-core hrf-config hrf-report hrf-rewards hrf-remote)
if cargo tree "${no_torch[@]/#/-p=}" -e normal,build --prefix none | grep -qE '^(tch|torch-sys) '; then
  echo "${no_torch[*]} must not depend on tch" >&2
  exit 1
fi
LIBTORCH=/nonexistent cargo test --release --no-fail-fast "${no_torch[@]/#/-p=}"

echo "[test] the rest of the workspace"
# Tests run in parallel threads: one libtorch thread each avoids oversubscribing the cores.
# --no-fail-fast: one failing test binary must not hide the results of the others.
# The crates above were tested already.
OMP_NUM_THREADS=1 cargo test --release --workspace --no-fail-fast "${no_torch[@]/#/--exclude=}"
echo "[test] done in $((SECONDS - t0)) s"
