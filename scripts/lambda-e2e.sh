#!/usr/bin/env bash
# End to end through the real Lambda runtime API (docs/lambda.md): the release
# (or, with E2E_PROFILE=dev, debug) binary in Lambda mode under `cargo lambda watch` (cargo-lambda 1.9.2, the
# hash-pinned PyPI wheel of scripts/requirements-cargo-lambda.txt, in the venv
# .cache/venv-cargo-lambda), serving examples/models. It covers:
#   - PRELOAD_MODELS at init (one good model, one missing: init still succeeds)
#   - every HTTP event source: API Gateway REST (v1), HTTP API (v2), ALB and
#     Function URL events sent as they arrive (`cargo lambda invoke` with the
#     fixtures of tests/data/events), and plain HTTP against the watcher's
#     Function URL emulation (predicts, an alias, bad requests, an
#     admin-looking path that must be a 404)
#   - the admin events by direct invoke (warm, status, evict) and as an
#     EventBridge scheduled event
#   - SIGTERM: the function must flush its last metrics and exit within
#     Lambda's shutdown budget
#   - the EMF lines on stdout
# Every answer is checked. scripts/test.sh (and so CI) runs it.
#
#   scripts/lambda-e2e.sh                 # on a free port, the release build
#   E2E_PORT=9317 scripts/lambda-e2e.sh
#   E2E_PROFILE=dev scripts/lambda-e2e.sh # the debug build
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LAMBDA_VERSION=1.9.2
# A free port unless E2E_PORT names one (other test runs may hold 9000).
port="${E2E_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
function_name=model-router # the package's one binary
# E2E_PROFILE=release (the default: what ships) or dev (the debug build the
# unit tests already made; quicker where no release build exists yet).
profile="${E2E_PROFILE:-release}"
case "$profile" in
  release) release_flag=(--release) ;;
  dev) release_flag=() ;;
  *) echo "E2E_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
started=$(date +%s)
section() { printf '\n== %s\n' "$*"; }
elapsed() { echo $(($(date +%s) - $1))s; }

ORT_DYLIB_PATH="$(scripts/setup-ort.sh | tail -n 1)"
export ORT_DYLIB_PATH

section "cargo-lambda $CARGO_LAMBDA_VERSION (pinned wheel, venv .cache/venv-cargo-lambda)"
t=$(date +%s)
# --no-deps: its only dependency, ziglang (~100 MB), serves `cargo lambda
# build` cross-compiling, not watch or invoke (scripts/requirements-cargo-lambda.txt).
VENV_DIR="$PWD/.cache/venv-cargo-lambda" PIP_NO_DEPS=1 \
  scripts/python-env.sh scripts/requirements-cargo-lambda.txt >/dev/null
export PATH="$PWD/.cache/venv-cargo-lambda/bin:$PATH"
have="$(cargo lambda --version 2>/dev/null | awk '{print $2}')"
[ "$have" = "$CARGO_LAMBDA_VERSION" ] \
  || { echo "FAIL cargo lambda --version says '$have', expected $CARGO_LAMBDA_VERSION" >&2; exit 1; }
echo "cargo-lambda $have ready in $(elapsed "$t")"

section "the $profile binary (a no-op when scripts/test.sh built it already)"
t=$(date +%s)
cargo build ${release_flag[@]+"${release_flag[@]}"} --locked --bin model-router
echo "built in $(elapsed "$t")"

work="$(mktemp -d)"
log="$work/watch.log"
# The function's configuration, as a Lambda function would have it. PRELOAD_MODELS
# names one good model and one that does not exist: init must still succeed.
cat >"$work/env" <<EOF
MODEL_ROOT=$PWD/examples/models
MODEL_STAGING_DIR=$work/staging
ORT_DYLIB_PATH=$ORT_DYLIB_PATH
PRELOAD_MODELS=iris/1,missing/1
METRICS_NAMESPACE=ModelRouterE2E
RUST_LOG=info
EOF

section "cargo lambda watch ${release_flag[*]-} on port $port"
# Its own process group, so stopping it stops cargo run and the function too.
# --ignore-changes: no rebuild when files change while the test runs.
setsid cargo lambda watch ${release_flag[@]+"${release_flag[@]}"} --ignore-changes --invoke-port "$port" \
  --env-file "$work/env" >"$log" 2>&1 &
watcher=$!
stop_watcher() {
  if kill -0 "$watcher" 2>/dev/null; then
    kill -INT -- "-$watcher" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$watcher" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$watcher" 2>/dev/null || true
  fi
  wait "$watcher" 2>/dev/null || true
}
trap 'stop_watcher; rm -rf "$work"' EXIT

for _ in $(seq 1 300); do
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
  if ! kill -0 "$watcher" 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 0.2
done

invoke() { # invoke EVENT_FILE: a direct (non-HTTP) event through the runtime API
  cargo lambda invoke "$function_name" --invoke-port "$port" --output-format json --data-file "$1"
}

section "driving the function"
t=$(date +%s)
python3 - "$port" "$function_name" <<'PY'
import json, subprocess, sys, urllib.error, urllib.request

port, function = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}/lambda-url/{function}"
events = "tests/data/events"
failures = []

def check(what, ok, shown):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {shown}")
    if not ok:
        failures.append(what)

def invoke(event_file):
    out = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--invoke-port", port,
         "--output-format", "json", "--data-file", event_file],
        check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out)

def http(method, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

features = {"features": [0.5, -1.25, 2.0, 0.75]}

status = invoke(f"{events}/admin_status.json")
check("init preloaded iris/1, and reports the preload that failed",
      [e["model"] for e in status["entries"]] == ["iris/1"]
      and [(f["model"], f["code"]) for f in status["preload_failures"]] == [("missing/1", "model_not_found")],
      status)

answer = invoke(f"{events}/admin_warm.json")
check("warm (direct invoke)", answer == {"warmed": ["mlp/1", "mlp/2"], "failed": []}, answer)

status = invoke(f"{events}/admin_status.json")
cached = sorted(e["model"] for e in status["entries"])
check("status after warm", cached == ["iris/1", "mlp/1", "mlp/2"] and status["loads"] == 3, status)

# Each HTTP event source, as its event arrives at the function (the runtime
# API does not care who sent it): answered in that source's response shape.
for source, event_file in [("API Gateway REST (v1)", "apigw_v1_predict.json"),
                           ("API Gateway HTTP API (v2)", "apigw_v2_predict.json"),
                           ("Application Load Balancer", "alb_predict.json"),
                           ("Function URL", "function_url_predict.json")]:
    answer = invoke(f"{events}/{event_file}")
    body = json.loads(answer.get("body") or "{}")
    shaped = "statusDescription" in answer if "alb" in event_file else "statusDescription" not in answer
    check(f"predict ({source} event)", answer.get("statusCode") == 200 and shaped
          and body.get("model_version") == "1" and body.get("outputs", {}).get("label") == [1],
          {k: answer.get(k) for k in ("statusCode", "statusDescription")} | {"body": body})

code, answer = http("POST", "/models/mlp/1/predict", features)
check("predict (HTTP through the watcher's Function URL emulation)", code == 200 and answer["model_version"] == "1"
      and answer["outputs"]["label"] == [1], (code, answer))
code, answer = http("POST", "/models/mlp/stable/predict", features)
check("predict through an alias", code == 200 and answer["model_version"] == "1", (code, answer))

code, answer = http("POST", "/models/mlp/1/predict", b'{"features": [0.5, -1.25')
check("bad request: broken JSON", code == 400 and answer["code"] == "invalid_json", (code, answer))
code, answer = http("POST", "/models/mlp/1/predict", {"features": [1, 2, 3]})
check("bad request: wrong shape", code == 400 and answer["code"] == "invalid_input", (code, answer))
code, answer = http("POST", "/events", {"action": "evict", "models": ["mlp/1"]})
check("an admin event over HTTP is just a 404", code == 404 and answer["code"] == "route_not_found", (code, answer))

answer = invoke(f"{events}/admin_evict.json")
check("evict (direct invoke)", answer == {"evicted": ["mlp/1"]}, answer)
status = invoke(f"{events}/admin_status.json")
cached = sorted(e["model"] for e in status["entries"])
check("status after evict", cached == ["iris/1", "mlp/2"] and status["evictions"] >= 1, status)

answer = invoke(f"{events}/eventbridge_warm.json")
check("warm (EventBridge scheduled event)", answer == {"warmed": ["mlp/1"], "failed": []}, answer)

sys.exit(1 if failures else 0)
PY
echo "driven in $(elapsed "$t")"

section "SIGTERM to the function (Lambda sends it at shutdown when an extension is registered)"
# The function logs its pid when its runtime loop starts; signal that process only.
pid="$(python3 - "$log" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    start = line.find("{")
    try:
        record = json.loads(line[start:]) if start >= 0 else {}
    except ValueError:
        continue
    if record.get("message") == "lambda runtime loop starting":
        print(record["pid"])
PY
)"
pid="$(echo "$pid" | tail -n 1)"
[ -n "$pid" ] || { echo "FAIL no pid logged by the function" >&2; tail -n 40 "$log" >&2; exit 1; }
t_ns=$(date +%s%N)
kill -TERM "$pid"
for _ in $(seq 1 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
if kill -0 "$pid" 2>/dev/null; then echo "FAIL the function did not exit within 5 s of SIGTERM" >&2; exit 1; fi
echo "exited $(( ($(date +%s%N) - t_ns) / 1000000 )) ms after SIGTERM (Lambda's shutdown budget: 500 ms with internal extensions, 2 s with external ones)"
sleep 0.5 # let the watcher copy the last output
stop_watcher

python3 - "$log" <<'PY'
import json, sys

lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
emf = []
for line in lines:
    start = line.find('{"_aws"')
    if start >= 0:
        emf.append(json.loads(line[start:]))
requests = [l for l in emf if "Requests" in l]
ok = len(requests) >= 9 and all(
    d["Namespace"] == "ModelRouterE2E" for l in emf for d in l["_aws"]["CloudWatchMetrics"])
print(f"{'ok  ' if ok else 'FAIL'} EMF on stdout: {len(emf)} lines, {len(requests)} of them requests")
print("     e.g.", json.dumps(requests[0]) if requests else "-")
shutdown = next((i for i, l in enumerate(lines) if "shutting down" in l), None)
flushed = shutdown is not None and any('{"_aws"' in l for l in lines[shutdown:])
print(f"{'ok  ' if flushed else 'FAIL'} SIGTERM: logged 'shutting down', then wrote the last gauges")
compiled = sum(1 for l in lines if l.lstrip().startswith("Compiling "))
if compiled:
    print(f"     (cargo lambda watch compiled {compiled} crates first: the sources changed since the build above)")
if not (ok and flushed):
    print("\n".join(lines[-40:]))
    sys.exit(1)
PY

section "passed in $(elapsed "$started")"
