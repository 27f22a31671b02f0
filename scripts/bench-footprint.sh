#!/usr/bin/env bash
# Footprint benchmark: do the cache's charges match what loads really cost?
# For tiny, small and ~128 MiB models, as .onnx and .ort, a fresh process
# loads many copies and compares its VmRSS growth with the sum of the charges,
# once quietly and once while another thread runs a model without pause
# (benches/footprint.rs); and again with the run memory limit serve sets under
# a memory limit (one shared ONNX Runtime arena). Prints growth / charges.
#
#   scripts/bench-footprint.sh
#   KEEP_MODEL_DIR=/tmp/big BENCH_PROFILE=dev scripts/bench-footprint.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-ort.sh | tail -1)}"
export ORT_DYLIB_PATH
PY="$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)"

if [[ -n "${KEEP_MODEL_DIR:-}" ]]; then
    model_dir="$KEEP_MODEL_DIR"
    mkdir -p "$model_dir"
else
    model_dir="$(mktemp -d "${TMPDIR:-/tmp}/model-router-big.XXXXXX")"
    trap 'rm -rf "$model_dir"' EXIT
fi
[[ -f "$model_dir/big.onnx" && -f "$model_dir/big.ort" ]] \
    || "$PY" scripts/make_big_model.py --out-dir "$model_dir" >/dev/null

data=tests/data/models
export MODEL_ROUTER_FOOTPRINT_MODELS="$data/mlp.onnx,$data/mlp.ort,$data/sized_0.onnx,$data/sized_0.ort,$model_dir/big.onnx,$model_dir/big.ort"
echo "== without a run memory limit"
cargo bench --profile "${BENCH_PROFILE:-bench}" --bench footprint 2>/dev/null
echo "== with a 256 MiB run memory limit (shared arena)"
MODEL_ROUTER_FOOTPRINT_RUN_LIMIT=268435456 cargo bench --profile "${BENCH_PROFILE:-bench}" --bench footprint 2>/dev/null
