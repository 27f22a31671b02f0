#!/usr/bin/env bash
# Triton's own load tool against `model-router serve`, unchanged: perf_analyzer
# (tritonclient 2.50.0's, scripts/setup-perf-analyzer.sh) over HTTP and over
# gRPC on the mlp fixture, one row a request, at concurrency 1 and 4, against
# the release binary. HTTP is the baseline: the gRPC/HTTP ratio is printed
# for each concurrency. perf_analyzer checks the server's statistics
# extension agrees with what it sent, so a run that completes also checks it.
#
#   scripts/bench-perf-analyzer.sh            # about a minute once built
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
  ORT_DYLIB_PATH="$(scripts/setup-ort.sh | tail -n 1)"
  export ORT_DYLIB_PATH
fi
perf="$(scripts/setup-perf-analyzer.sh | tail -n 1)"
cargo build --release --locked --quiet --bin model-router
bin="$PWD/target/release/model-router"

work="$(mktemp -d)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$bin" publish --repo "$work/repo" --name mlp --version 1 tests/data/models/mlp.ort >/dev/null
"$bin" serve --repo "$work/repo" --staging-dir "$work/staging" --addr 127.0.0.1:0 \
  --grpc-addr 127.0.0.1:0 >"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 100); do
  grep -q 'grpc listening on' "$work/out" 2>/dev/null && break
  sleep 0.1
done
http="$(sed -n 's/.*listening on http:\/\///p' "$work/out")"
grpc="$(sed -n 's/.*grpc listening on //p' "$work/out")"

throughput() { # protocol url concurrency -> infer/s
  "$perf" -m mlp -u "$2" -i "$1" --shape features:1,4 --concurrency-range "$3" \
    --measurement-interval 3000 --stability-percentage 20 --max-trials 10 -f "$work/$1-$3.csv" >/dev/null
  python3 -c 'import csv,sys; print(round(float(next(csv.DictReader(open(sys.argv[1])))["Inferences/Second"])))' "$work/$1-$3.csv"
}
printf '%-12s %12s %12s %10s\n' concurrency "HTTP infer/s" "gRPC infer/s" "gRPC/HTTP"
for c in 1 4; do
  h="$(throughput http "$http" "$c")"
  g="$(throughput grpc "$grpc" "$c")"
  printf '%-12s %12s %12s %10s\n' "$c" "$h" "$g" "$(python3 -c "print(f'{$g/$h:.2f}x')")"
done
