#!/usr/bin/env bash
# Warm throughput at concurrency 1, 2, 4, 16 on one small model
# (tests/data/models/mlp.ort), one large model (scripts/make_big_model.py, made
# at run time: ~128 MiB, 8 x 2048x2048 MatMul) and two models at once:
# model-router `serve` with one session per model and with a pool
# (MODEL_SESSIONS, default the CPUs), against Python onnxruntime sessions on
# threads, in the same run. Prints requests/s, p50/p99, CPU used and the ratios
# (scripts/bench_concurrency.py says exactly what is measured).
#
#   scripts/bench-concurrency.sh
#   SECONDS_PER_POINT=5 CONCURRENCY=1,2,4,16 POOL=2 scripts/bench-concurrency.sh
#
# Steps: scripts/setup-ort.sh, scripts/python-env.sh
# scripts/requirements-fixtures.txt, `cargo build --release` of the binary and
# of examples/load_client.rs, the large model into a temporary directory, then
# the runs (each bounded by SECONDS_PER_POINT and MAX_REQUESTS).
set -euo pipefail

log() { printf 'bench-concurrency: %s\n' "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-ort.sh | tail -1)}"
export ORT_DYLIB_PATH
PY="$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)"

work="$(mktemp -d "${TMPDIR:-/tmp}/model-router-concurrency.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "cargo build --release --bin model-router --example load_client"
cargo build --release --bin model-router --example load_client >&2
log "making the large model"
large="$("$PY" scripts/make_big_model.py --out-dir "$work" | sed -n 's/^ort=//p' | tail -1)"

"$PY" scripts/bench_concurrency.py \
    --router target/release/model-router \
    --client target/release/examples/load_client \
    --small tests/data/models/mlp.ort \
    --large "$large" \
    --concurrency "${CONCURRENCY:-1,2,4,16}" \
    --pool "${POOL:-$(nproc)}" \
    --seconds "${SECONDS_PER_POINT:-3}" \
    --max-requests "${MAX_REQUESTS:-100000}"
