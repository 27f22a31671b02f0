#!/usr/bin/env bash
# model-router against the single-model Python Lambda handler it replaces
# (scripts/python_handler_baseline.py), on the same model file and the same
# request, in one run: the warm per-invocation time and the cold start, with
# their ratios.
#
#   scripts/bench-vs-python.sh                                   # mlp.onnx, 11 cold runs each
#   MODEL_FILE=tests/data/models/mlp.ort RUNS=21 scripts/bench-vs-python.sh
#   BENCH_CPUS=0 scripts/bench-vs-python.sh    # both sides pinned to CPU 0 (taskset),
#                                              # like a Lambda function with one vCPU
#
# Warm (per invocation, model loaded, in-process, no logs or metrics written):
#   - Python: the handler alone, as the baseline script times it (the event is
#     already a dict); and the handler with the event's json.loads and the
#     response's json.dumps, what Lambda's Python runtime adds per event; and
#     session.run on a prebuilt array for reference.
#   - model-router: `model_router::lambda::invoke` of the API Gateway HTTP API
#     event tests/data/events/apigw_v2_predict.json (event text in, response
#     JSON value out), median of criterion's samples from benches/predict.rs,
#     with raw ONNX Runtime (`LoadedModel::run`) in the same run for reference.
# Cold (fresh processes, files in the page cache, local disk, no Lambda init):
#   - in-process: Python's `import onnxruntime` + `InferenceSession`, against
#     model-router's staging (copy + sha256) + session creation from its log.
#   - process start to first answer (wall time, median of RUNS, run
#     alternately): the baseline script answering one event, against
#     `model-router invoke` of the event above.
# Both sides must answer the same prediction, or the script stops.
#
# Steps: scripts/setup-ort.sh, scripts/python-env.sh
# scripts/requirements-fixtures.txt, `cargo build --release`, `model-router
# publish` of MODEL_FILE into a temporary repository, `cargo bench --bench
# predict -- single_row` (full output in target/bench-vs-python.log), then the
# Python side and the cold starts.
set -euo pipefail

log() { printf 'bench-vs-python: %s\n' "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MODEL_FILE="$(realpath "${MODEL_FILE:-tests/data/models/mlp.onnx}")"
RUNS="${RUNS:-11}"
EVENT="$REPO_ROOT/tests/data/events/apigw_v2_predict.json"
# Everything timed runs under this prefix: nothing, or taskset pinning to BENCH_CPUS.
pin=()
if [[ -n "${BENCH_CPUS:-}" ]]; then
    command -v taskset >/dev/null 2>&1 || { log "BENCH_CPUS needs taskset (util-linux)"; exit 1; }
    pin=(taskset -c "$BENCH_CPUS")
fi

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-ort.sh | tail -1)}"
export ORT_DYLIB_PATH
PY="$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)"

work="$(mktemp -d "${TMPDIR:-/tmp}/model-router-vs-python.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "cargo build --release --bin model-router"
cargo build --release --bin model-router >&2
router="$REPO_ROOT/target/release/model-router"
"$router" publish --repo "$work/repo" --name mlp --version 1 "$MODEL_FILE" >/dev/null 2>&1

bench_log="$REPO_ROOT/target/bench-vs-python.log"
log "cargo bench --bench predict -- single_row (full output in $bench_log)"
cargo bench --bench predict --no-run >&2
MODEL_ROUTER_PREDICT_MODEL="$MODEL_FILE" "${pin[@]}" cargo bench --bench predict -- single_row 2>&1 \
    | tee "$bench_log" >&2
# The bench's summary line: "single_row <variant> median_us=<m> (mean <x> us) ...".
timing() {
    sed -n "s/.*single_row *$1 *median_us=\([0-9.]*\) *(mean \([0-9.]*\) us).*/\1 \2/p" "$bench_log"
}
read -r router_us router_mean_us <<<"$(timing lambda_invoke)" || true
read -r raw_us _ <<<"$(timing raw_ort)" || true
[[ -n "${router_us:-}" && -n "${raw_us:-}" ]] || { log "no single_row timings in $bench_log"; exit 1; }

log "Python handler and cold starts ($RUNS runs each)"
MODEL_PATH="$MODEL_FILE" ROUTER="$router" REPO="$work/repo" STAGING="$work/staging" \
EVENT="$EVENT" RUNS="$RUNS" ROUTER_US="$router_us" ROUTER_MEAN_US="$router_mean_us" RAW_US="$raw_us" \
"${pin[@]}" "$PY" - <<'PYTHON'
import json, os, re, statistics, subprocess, sys, time

import numpy as np

env = os.environ
model, event_path, runs = env["MODEL_PATH"], env["EVENT"], int(env["RUNS"])
router_us, router_mean_us = float(env["ROUTER_US"]), float(env["ROUTER_MEAN_US"])
raw_us = float(env["RAW_US"])
baseline = os.path.join("scripts", "python_handler_baseline.py")
event_text = open(event_path).read()


def run(cmd):
    """Wall time of one process, its stdout and stderr; stops on failure."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = (time.perf_counter() - start) * 1e3
    if done.returncode != 0:
        sys.exit(f"{cmd[:3]} failed ({done.returncode}): {done.stderr}")
    return took, done.stdout, done.stderr


def close(a, b):
    return len(a) == len(b) and all(
        abs(x - y) <= 1e-5 * (1 + abs(y)) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


# Warm, Python: the baseline script's own measurement...
_, out, err = run([sys.executable, baseline])
python = json.loads(out.strip().splitlines()[-1])
handler_us = python["python_handler_us_per_call"]
first = json.loads(re.search(r"first response (\{.*\})", err).group(1))["prediction"]

# ...and the same handler with the event text parsed and the response dumped.
sys.path.insert(0, "scripts")
import python_handler_baseline as handler_module  # loads MODEL_PATH
handler = handler_module.handler
assert close(json.loads(handler(json.loads(event_text), None)["body"])["prediction"], first)
first_row = json.loads(json.loads(event_text)["body"])["features"]
for _ in range(200):
    json.dumps(handler(json.loads(event_text), None))
calls = 5000
start = time.perf_counter()
for _ in range(calls):
    json.dumps(handler(json.loads(event_text), None))
handler_json_us = (time.perf_counter() - start) / calls * 1e6

# Python's raw session.run with a prebuilt array: the reference on its side.
session = handler_module.session
feeds = {session.get_inputs()[0].name: np.array([first_row], dtype=np.float32)}
for _ in range(200):
    session.run(None, feeds)
start = time.perf_counter()
for _ in range(calls):
    session.run(None, feeds)
python_raw_us = (time.perf_counter() - start) / calls * 1e6

# Cold: fresh processes, alternately, so drift on a shared machine hits both.
probe = ("import time; t0 = time.perf_counter(); import onnxruntime as ort; t1 = time.perf_counter();"
         "ort.InferenceSession(__import__('os').environ['MODEL_PATH']);"
         "print((t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)")
router_cmd = [env["ROUTER"], "invoke", "--repo", env["REPO"], "--staging-dir", env["STAGING"],
              "--log-format", "json", "--event", event_path]
py_cmd = [sys.executable, baseline, "--iterations", "1", "--warmup", "0"]
py_wall, router_wall, py_import, py_session, router_stage, router_load = ([] for _ in range(6))
for _ in range(runs):
    took, _, err = run(py_cmd)
    py_wall.append(took)
    got = json.loads(re.search(r"first response (\{.*\})", err).group(1))["prediction"]
    assert close(got, first), f"the Python handler answered {got}, before {first}"

    took, out, err = run(router_cmd)
    router_wall.append(took)
    answer = json.loads(out)
    assert answer["statusCode"] == 200, answer
    got = json.loads(answer["body"])["prediction"]
    assert close(got, first), f"model-router answered {got}, the Python handler {first}"
    loaded = [json.loads(line) for line in err.splitlines()
              if line.startswith("{") and '"model loaded"' in line]
    assert len(loaded) == 1, f"expected one cold load in the log, got {len(loaded)}: {err}"
    router_stage.append(loaded[0]["stage_ms"])
    router_load.append(loaded[0]["load_ms"])

    _, out, _ = run([sys.executable, "-c", probe])
    imported, session = map(float, out.split())
    py_import.append(imported)
    py_session.append(session)

med = statistics.median
rng = lambda xs: f"{min(xs):.1f}..{max(xs):.1f}"
py_load = [i + s for i, s in zip(py_import, py_session)]
router_in = [s + l for s, l in zip(router_stage, router_load)]

print()
cpus = len(os.sched_getaffinity(0))
print(f"== model-router vs the Python handler: {model} "
      f"({cpus} of {os.cpu_count()} CPUs, onnxruntime {handler_module.ort.__version__} on both sides) ==")
print(f"  same answer: yes, {first}")
print("  warm, per invocation (model loaded; no logs or metrics written):")
print(f"    Python handler alone (event already a dict), mean        {handler_us:8.1f} us")
print(f"    Python handler + json.loads(event) + json.dumps, mean    {handler_json_us:8.1f} us")
print(f"    model-router lambda::invoke, event text -> response      {router_us:8.1f} us  "
      f"median (mean {router_mean_us:.1f})")
print(f"    reference: Python session.run, prebuilt array, mean      {python_raw_us:8.1f} us")
print(f"    reference: Rust LoadedModel::run, prebuilt tensor        {raw_us:8.1f} us  median")
print(f"    ratio model-router / Python: {router_us / handler_us:.2f}x the handler alone, "
      f"{router_us / handler_json_us:.2f}x the handler with the event JSON "
      f"({'model-router slower' if router_us > handler_json_us else 'model-router faster'} warm)")
print(f"  cold, in-process (median of {runs} fresh processes, range in brackets):")
print(f"    Python import onnxruntime + InferenceSession             {med(py_load):8.1f} ms  "
      f"(import {med(py_import):.1f} + session {med(py_session):.1f}) [{rng(py_load)}]")
print(f"      the baseline script's own load_ms (session only)       {python['load_ms']:8.1f} ms")
print(f"    model-router staging (copy + sha256) + session           {med(router_in):8.1f} ms  "
      f"(stage {med(router_stage):.2f} + session {med(router_load):.2f}) [{rng(router_in)}]")
print(f"  cold, process start to first answer (wall, median of {runs}, run alternately):")
print(f"    Python: interpreter, imports, session, one event         {med(py_wall):8.1f} ms  [{rng(py_wall)}]")
print("    model-router invoke: exec, ORT library load and priming,")
print(f"      staging, session, one event, JSON out                  {med(router_wall):8.1f} ms  [{rng(router_wall)}]")
print(f"    ratio Python / model-router: {med(py_wall) / med(router_wall):.1f}x (model-router faster cold)"
      if med(py_wall) > med(router_wall) else
      f"    ratio model-router / Python: {med(router_wall) / med(py_wall):.1f}x (model-router slower cold)")
print("  not included on either side: Lambda's init phase (runtime start, code or image download),")
print("  EFS reads (files here are local and in the page cache), network, the runtime API round trip.")
PYTHON
