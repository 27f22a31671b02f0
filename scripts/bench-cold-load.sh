#!/usr/bin/env bash
# Cold-load benchmark: a generated ~128 MiB MLP loaded as .ort (zero-copy from
# the mapping) and as .onnx (ONNX Runtime copies it), in one run. Prints the
# load times, their ratio, and the anonymous memory each way costs.
#
#   scripts/bench-cold-load.sh                 # everything: library, venv, model, bench
#   KEEP_MODEL_DIR=/tmp/big scripts/bench-cold-load.sh   # keep (and reuse) the model
#
# Steps: scripts/setup-ort.sh (libonnxruntime.so), scripts/python-env.sh
# (onnx + onnxruntime for the generator), scripts/make_big_model.py into a
# temporary directory (never committed), then `cargo bench --bench cold_load`
# (benches/cold_load.rs, which checks both formats give the same output before
# timing). The full criterion output goes to the log named at the end.
set -euo pipefail

log() { printf 'bench-cold-load: %s\n' "$*" >&2; }

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

if [[ -f "$model_dir/big.onnx" && -f "$model_dir/big.ort" ]]; then
    log "reusing the model in $model_dir"
else
    log "generating the ~128 MiB model in $model_dir"
    "$PY" scripts/make_big_model.py --out-dir "$model_dir" >/dev/null
fi
export MODEL_ROUTER_BIG_ONNX="$model_dir/big.onnx"
export MODEL_ROUTER_BIG_ORT="$model_dir/big.ort"

bench_log="$REPO_ROOT/target/bench-cold-load.log"
mkdir -p "$(dirname "$bench_log")"
log "cargo bench --bench cold_load (release build; full output in $bench_log)"
cargo bench --bench cold_load 2>&1 | tee "$bench_log" >&2

echo
echo "== cold load: .ort zero-copy vs .onnx ($(nproc) CPUs, onnxruntime $(basename "$(readlink -f "$ORT_DYLIB_PATH")" | sed 's/^libonnxruntime\.so\.//')) =="
# The bench prints its own summary last; criterion's estimates are above it in the log.
sed -n '/^cold_load summary$/,$p' "$bench_log" | tail -n +2
grep -E '^cold_load/.*time:' "$bench_log" | sed 's/^/  criterion: /' || true
