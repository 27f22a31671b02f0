#!/usr/bin/env bash
# Staging benchmark: model-router's hash-while-copy (a cache miss's staging of
# a model file) against `openssl dgst -sha256` and `sha256sum` on the same
# generated 256 MiB file, in one run. Prints MB/s for each and the ratio to
# openssl.
#
#   scripts/bench-staging.sh
#   MODEL_ROUTER_BENCH_MIB=1024 TMPDIR=/mnt/scratch scripts/bench-staging.sh
#
# The file is generated in a temporary directory under TMPDIR (it needs about
# twice its size free: the published file and its staged copy) and deleted
# afterwards. `cargo bench --bench staging` (benches/staging.rs) checks all four
# give the same sha256 before timing; the full criterion output goes to the log
# named at the end. Needs no ONNX Runtime and no Python.
set -euo pipefail

log() { printf 'bench-staging: %s\n' "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

for tool in openssl sha256sum; do
    command -v "$tool" >/dev/null 2>&1 \
        || { log "$tool not found (Debian: apt-get install -y openssl coreutils)"; exit 1; }
done

bench_log="$REPO_ROOT/target/bench-staging.log"
mkdir -p "$(dirname "$bench_log")"
log "cargo bench --bench staging (release build; full output in $bench_log)"
cargo bench --bench staging 2>&1 | tee "$bench_log" >&2

echo
echo "== staging: hash-while-copy vs openssl and sha256sum ($(nproc) CPUs, $(openssl version | cut -d' ' -f1-2), $(sha256sum --version | head -1)) =="
# The bench prints its own summary last; criterion's estimates are above it in the log.
sed -n '/^staging summary$/,$p' "$bench_log" | tail -n +2
grep -E '^staging/.*time:' "$bench_log" | sed 's/^/  criterion: /' || true
