#!/usr/bin/env bash
# The cold load path against its floors, in one run (issue 9's numbers):
#
#   1. cold start, tiny model, process start to answer: `model-router invoke`
#      against the minimal ONNX Runtime program (examples/ort_floor.rs: library,
#      environment, one session, one run) and the original Python handler;
#   2. first request for a 128 MiB `.ort` MLP, nothing staged, file in the page
#      cache, process start to answer: `model-router invoke` against
#      `openssl dgst -sha256` of the file followed by ort_floor on it (dlopen +
#      sha256 + session + one inference), and the Python handler on the same
#      model as `.onnx`;
#   3. the same again inside a memory cgroup the size of a 3 GB Lambda function,
#      after a server in that cgroup loaded 12 big models whose staged copies
#      (1.5 GiB, mostly still dirty page cache) are kept, as in /tmp on Lambda;
#   4. the same model through the EFS-like filesystem (examples/efs_sim.rs) at
#      2 ms per operation and 200 MB/s: `model-router invoke` against
#      `cat FILE > /dev/null` through the same mount, and the Python handler
#      loading the `.onnx` through it;
#   5. reload after a memory eviction (benches/reload.rs): at most 10 ms;
#   6. not a comparison: what touching 128 MiB of fresh memory costs here, back
#      to back and after 8 s idle (examples/fresh_memory.rs), the machine state
#      behind the first request's tail.
#
#   scripts/bench-load-path.sh
#   RUNS=21 scripts/bench-load-path.sh
#   SECTIONS="1 5" scripts/bench-load-path.sh      # only some sections
#
# Every comparison runs its commands interleaved (scripts/bench_interleaved.py)
# and checks each answer before it counts. Sections 3 and 4 need root (a
# memory cgroup; FUSE via scripts/setup-fuse.sh) and say so when skipped.
set -euo pipefail

log() { printf 'bench-load-path: %s\n' "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
RUNS="${RUNS:-15}"
SECTIONS="${SECTIONS:-1 2 3 4 5 6}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/setup-ort.sh | tail -1)}"
export ORT_DYLIB_PATH
PY="$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)"
command -v openssl >/dev/null || { log "openssl not found (Debian: apt-get install -y openssl)"; exit 1; }

examples=(--example ort_floor --example fresh_memory)
if want 4; then examples+=(--example efs_sim); fi
log "cargo build --release (model-router, ${examples[*]})"
cargo build --release --locked --quiet --bin model-router "${examples[@]}"
router="$REPO_ROOT/target/release/model-router"
floor="$REPO_ROOT/target/release/examples/ort_floor"

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-load-path.XXXXXX")"
mount_point=""
sim_pid=""
cgroup=""
cleanup() {
    if [[ -n "$sim_pid" ]]; then kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; fi
    if [[ -n "$mount_point" ]] && mountpoint -q "$mount_point" 2>/dev/null; then
        fusermount3 -u "$mount_point" 2>/dev/null || umount -l "$mount_point" 2>/dev/null || true
    fi
    if [[ -n "$cgroup" && -d "$cgroup" ]]; then rmdir "$cgroup" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

log "generating the 128 MiB model (scripts/make_big_model.py) in $work"
"$PY" scripts/make_big_model.py --out-dir "$work/src" >/dev/null
big_ort="$work/src/big.ort"
big_onnx="$work/src/big.onnx"
tiny_ort="$REPO_ROOT/tests/data/models/mlp.ort"
tiny_onnx="$REPO_ROOT/tests/data/models/mlp.onnx"
repo="$work/repo"
for spec in "mlp:$tiny_ort" "big:$big_ort"; do
    "$router" publish --repo "$repo" --name "${spec%%:*}" --version 1 "${spec#*:}" >/dev/null 2>&1
done

# The requests: the committed tiny event, and the same shape for the big model.
tiny_event="$REPO_ROOT/tests/data/events/apigw_v2_predict.json"
big_event="$work/big_event.json"
features="$("$PY" - "$tiny_event" "$big_event" <<'PYTHON'
import json, sys
event = json.load(open(sys.argv[1]))
features = [round(0.001 * (i % 100), 3) for i in range(2048)]
event["rawPath"] = "/models/big/1/predict"
event["requestContext"]["http"]["path"] = "/models/big/1/predict"
event["body"] = json.dumps({"features": features})
json.dump(event, open(sys.argv[2], "w"))
print(json.dumps(features))
PYTHON
)"

# One JSON spec per comparison, for scripts/bench_interleaved.py.
spec() { # title, out file, runs, ratios json; lines of "name|about|expect|env json|step;step" on stdin
    python3 -c "$spec_py" "$@"
}
spec_py='
import json, shlex, sys
title, out, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ratios = json.loads(sys.argv[4])
cases = []
for line in sys.stdin.read().strip().splitlines():
    name, about, expect, env, steps = line.split("|", 4)
    cases.append({"name": name, "about": about, "expect": expect, "env": json.loads(env or "{}"),
                  "steps": [shlex.split(step) for step in steps.split(";")]})
json.dump({"title": title, "runs": runs, "warmup": 1, "cases": cases, "ratios": ratios}, open(out, "w"))
'

quiet='{"RUST_LOG":"warn"}'
invoke() { # repo, event
    echo "$router invoke --repo $1 --staging-dir $work/staging --event $2"
}
python_handler() { # model file, features
    echo "$PY scripts/python_handler_baseline.py --iterations 1 --warmup 0 --features '$2'"
}
answer='"statusCode": 200'

# Where one `invoke` spends its time, from its own JSON log lines (one extra run).
breakdown() { # repo, event
    local start end
    start=$(date +%s%N)
    RUST_LOG=info LOG_FORMAT=json $(invoke "$1" "$2") >/dev/null 2>"$work/breakdown.log"
    end=$(date +%s%N)
    python3 - "$work/breakdown.log" "$(( (end - start) / 1000 ))" <<'PYTHON'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
wall_ms = int(sys.argv[2]) / 1e3
def field(message, key):
    return next((l[key] for l in lines if l.get("message") == message and key in l), float("nan"))
ort_ms = field("onnxruntime started; memory split", "ms")
stage_ms, load_ms = field("model loaded", "stage_ms"), field("model loaded", "load_ms")
inference_ms, total_ms = field("request", "inference_ms"), field("request", "total_ms")
print(f"  breakdown of one invoke (its own log; wall {wall_ms:.1f} ms):")
print(f"    ONNX Runtime start (library, env, priming, memory split), own thread   {ort_ms:7.1f} ms")
print(f"    read + sha256 of the model file (overlaps the start above)              {stage_ms:7.1f} ms")
print(f"    session creation                                                         {load_ms:7.1f} ms")
print(f"    inference                                                                {inference_ms:7.1f} ms")
print(f"    the request, route to response (includes waiting for ONNX Runtime)       {total_ms:7.1f} ms")
print(f"    the rest: exec, dynamic linking, runtime and config set-up, event, exit  {wall_ms - total_ms:7.1f} ms")
PYTHON
}

if want 1; then
    spec "cold start, tiny model (mlp, 4 inputs), process start to answer" "$work/s1.json" "$((RUNS * 2))" \
        '[{"label":"router / ort_floor","num":"model-router invoke","den":"ort_floor (floor)","at_most":1.25},
          {"label":"python handler / router","num":"python handler","den":"model-router invoke","at_least":5}]' <<EOF
ort_floor (floor)|library, environment, one .ort session, one run||{}|$floor $tiny_ort
model-router invoke|API Gateway v2 event, mlp/1 (.ort)|$answer|$quiet|$(invoke "$repo" "$tiny_event")
python handler|interpreter, import onnxruntime, .onnx session, one event|python_handler_us_per_call|{"MODEL_PATH":"$tiny_onnx"}|$(python_handler "$tiny_onnx" "[0.5, -1.25, 2.0, 0.75]")
EOF
    python3 scripts/bench_interleaved.py "$work/s1.json"
    breakdown "$repo" "$tiny_event"
fi

big_spec() { # title, out, model path for the router's repo, file for cat/openssl/floor/python (.ort), .onnx for python
    spec "$1" "$2" "$RUNS" \
        '[{"label":"router / (openssl + ort_floor)","num":"model-router invoke","den":"openssl dgst + ort_floor","at_most":1.3},
          {"label":"python handler / router","num":"python handler (.onnx)","den":"model-router invoke","at_least":4}]' <<EOF
model-router invoke|read + sha256 + session + one inference|$answer|$quiet|$(invoke "$3" "$big_event")
openssl dgst + ort_floor|sha256 of the file, then library + env + session + run||{}|openssl dgst -sha256 -r $4;$floor $4
python handler (.onnx)|interpreter, import, .onnx session, one event, no hash|python_handler_us_per_call|{"MODEL_PATH":"$5"}|$(python_handler "$5" "$features")
EOF
}

if want 2; then
    cat "$big_ort" "$big_onnx" >/dev/null   # in the page cache
    big_spec "first request, 128 MiB .ort, nothing staged, page cache, clean machine" \
        "$work/s2.json" "$repo" "$repo/big/1/model.ort" "$big_onnx"
    python3 scripts/bench_interleaved.py "$work/s2.json"
fi

if want 3; then
    memcg=""
    if [[ -w /sys/fs/cgroup/memory ]]; then
        memcg=/sys/fs/cgroup/memory; limit_file=memory.limit_in_bytes   # cgroup v1
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
        memcg=/sys/fs/cgroup; limit_file=memory.max                     # cgroup v2
    fi
    if [[ -z "$memcg" || $(id -u) -ne 0 ]]; then
        log "section 3 skipped: needs root and a memory cgroup"
    else
        cgroup="$memcg/model-router-bench-$$"
        mkdir "$cgroup"
        echo $((3000 * 1024 * 1024)) > "$cgroup/$limit_file"
        big_spec "the same, inside a 3000 MB memory cgroup, after 12 big loads whose staged copies are kept" \
            "$work/s3.json" "$repo" "$repo/big/1/model.ort" "$big_onnx"
        # Everything from here runs in the cgroup: a server loads the model under
        # 12 names, so that 12 staged copies (1.5 GiB) are written to local disk
        # and kept, as a function's /tmp keeps them; then the bench runs.
        for i in $(seq 12); do
            "$router" publish --repo "$work/dirty-repo" --name "big$i" --version 1 "$big_ort" >/dev/null 2>&1
        done
        bash -c '
            echo $$ > "$1/cgroup.procs"
            python3 - "$3" "$2" <<'"'"'PYTHON'"'"'
import json, subprocess, sys, urllib.request
router, work = sys.argv[1], sys.argv[2]
server = subprocess.Popen([router, "serve", "--repo", f"{work}/dirty-repo", "--addr", "127.0.0.1:0",
                           "--staging-dir", f"{work}/dirty-staging"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
address = server.stdout.readline().split()[-1]
body = json.dumps({"features": [0.0] * 2048}).encode()
for i in range(1, 13):
    request = urllib.request.Request(f"{address}/models/big{i}/1/predict", data=body,
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
server.terminate()
server.wait()
PYTHON
            staged=$(du -sm "$2/dirty-staging" | cut -f1)
            echo "  staged copies kept by the earlier loads: ${staged} MiB"
            grep -E "^(Dirty|Writeback):" /proc/meminfo | tr -s " " | sed "s/^/  before the runs: /"
            python3 scripts/bench_interleaved.py "$2/s3.json"
            grep -E "^(Dirty|Writeback):" /proc/meminfo | tr -s " " | sed "s/^/  after the runs:  /"
        ' _ "$cgroup" "$work" "$router"
        rm -rf "$work/dirty-repo" "$work/dirty-staging"
    fi
fi

if want 4; then
    if ! scripts/setup-fuse.sh >/dev/null 2>&1; then
        log "section 4 skipped: FUSE is not usable here (scripts/setup-fuse.sh says why)"
    else
        mount_point="$work/efs"
        mkdir -p "$mount_point"
        "$REPO_ROOT/target/release/examples/efs_sim" --latency-ms 2 --mbps 200 "$work" "$mount_point" \
            > "$work/efs_sim.out" 2> "$work/efs_sim.log" &
        sim_pid=$!
        for _ in $(seq 100); do grep -q mounted "$work/efs_sim.out" 2>/dev/null && break; sleep 0.1; done
        grep -q mounted "$work/efs_sim.out" || { log "efs_sim did not mount:"; cat "$work/efs_sim.log" >&2; exit 1; }
        spec "128 MiB .ort through the EFS-like mount (2 ms per operation, 200 MB/s)" "$work/s4.json" "$RUNS" \
            '[{"label":"router / cat","num":"model-router invoke","den":"cat > /dev/null","at_most":1.3},
              {"label":"python handler / router","num":"python handler (.onnx)","den":"model-router invoke","at_least":1}]' <<EOF
model-router invoke|repository on the mount; read + sha256 + session + run|$answer|$quiet|$(invoke "$mount_point/repo" "$big_event")
cat > /dev/null|one sequential reader through the mount, no hash|||sh -c "cat $mount_point/repo/big/1/model.ort > /dev/null"
python handler (.onnx)|.onnx read through the mount by onnxruntime|python_handler_us_per_call|{"MODEL_PATH":"$mount_point/src/big.onnx"}|$(python_handler "$mount_point/src/big.onnx" "$features")
EOF
        python3 scripts/bench_interleaved.py "$work/s4.json"
    fi
fi

if want 6; then
    # Not a comparison: the machine's state, which explains the first
    # request's tail (README, "Benchmarks": free page reporting).
    printf '\n== fresh memory on this machine (examples/fresh_memory.rs) ==\n'
    "$REPO_ROOT/target/release/examples/fresh_memory" 128 8
fi

if want 5; then
    log "cargo bench --bench reload"
    MODEL_ROUTER_BIG_ORT="$big_ort" cargo bench --locked --quiet --bench reload 2>/dev/null \
        | sed -n '/^reload summary$/,$p'
fi
