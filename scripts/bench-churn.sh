#!/usr/bin/env bash
# Churn benchmark: 160 generated models (scripts/make_churn_models.py) through
# a 6 MiB cache, served by the real server with 4 clients, this process's
# VmRSS and RssAnon sampled every 10 ms; prints the peak against the budget
# and the idle baseline, then evicts everything and prints what is left
# (benches/churn.rs). Exits 1 when the peak passes budget + 64 MiB, memory
# does not come back to within 16 MiB of idle, or any answer is not 200.
#
#   scripts/bench-churn.sh                         # defaults
#   CHURN_MODELS=300 CHURN_BUDGET=16Mi CHURN_ROUNDS=5 CHURN_CLIENTS=8 scripts/bench-churn.sh
#   BENCH_PROFILE=dev scripts/bench-churn.sh       # skip the release build
set -euo pipefail

log() { printf 'bench-churn: %s\n' "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-ort.sh | tail -1)}"
export ORT_DYLIB_PATH
PY="$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)"

model_dir="$(mktemp -d "${TMPDIR:-/tmp}/model-router-churn.XXXXXX")"
trap 'rm -rf "$model_dir"' EXIT
"$PY" scripts/make_churn_models.py --count "${CHURN_MODELS:-160}" --out-dir "$model_dir" >&2

export MODEL_ROUTER_CHURN_DIR="$model_dir"
log "cargo bench --bench churn (profile ${BENCH_PROFILE:-bench})"
cargo bench --profile "${BENCH_PROFILE:-bench}" --bench churn 2>/dev/null
