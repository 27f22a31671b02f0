#!/usr/bin/env bash
# The README's first command: provisions ONNX Runtime, builds model-router,
# serves the example repository (examples/models) on a free local port, sends
# real predictions with the simple and the Open Inference Protocol formats,
# prints them, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_DYLIB_PATH="$(scripts/setup-ort.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "== building model-router (debug profile; first build takes a few minutes)"
cargo build --quiet --bin model-router

staging="$(mktemp -d)"
log="$(mktemp)"
target/debug/model-router serve --repo examples/models --addr 127.0.0.1:0 --staging-dir "$staging" >"$log" 2>"$log.err" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$staging" "$log" "$log.err"' EXIT

for _ in $(seq 1 100); do
  grep -q "listening on" "$log" && break
  if ! kill -0 "$server" 2>/dev/null; then cat "$log.err" >&2; exit 1; fi
  sleep 0.1
done
url="$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -n 1)"
[ -n "$url" ] || { echo "the server did not start:" >&2; cat "$log.err" >&2; exit 1; }
echo "== model-router serving examples/models at $url"

python3 - "$url" <<'PY'
import json, sys, urllib.request, urllib.error

base = sys.argv[1]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    shown = "" if body is None else " " + json.dumps(body)
    print(f"\n$ {method} {path}{shown}\n{status} {text}")
    return status

ok = True
ok &= call("POST", "/models/mlp/stable/predict", {"features": [0.5, -1.25, 2.0, 0.75]}) == 200
ok &= call("POST", "/models/mlp/2/predict", {"features": [[0.5, -1.25, 2.0, 0.75], [1, 1, 1, 1]]}) == 200
ok &= call("POST", "/models/iris/1/predict", {"features": [5.1, 3.5, 1.4, 0.2]}) == 200
ok &= call("POST", "/models/sentiment/latest/predict", {"features": ["what a wonderful, delightful day"]}) == 200
ok &= call("POST", "/v2/models/mlp/versions/2/infer",
           {"id": "demo-1", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.25, 2.0, 0.75]}]}) == 200
ok &= call("POST", "/models/mlp/1/predict", {"features": [1, 2, 3]}) == 400
ok &= call("GET", "/models") == 200
sys.exit(0 if ok else 1)
PY
echo
echo "== done (server stopped)"
