#!/usr/bin/env bash
# The whole test suite: the README's second command, and what CI runs
# (.ci/run calls this script and nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n== %s\n' "$*"; }

section "ONNX Runtime (pinned wheel, sha256-checked)"
ORT_DYLIB_PATH="$(scripts/setup-ort.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "$ORT_DYLIB_PATH"

if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  section "adding rustfmt and clippy"
  rustup component add rustfmt clippy
fi

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets --quiet -- -D warnings

section "en_US.UTF-8 locale (skl2onnx's default text models need it)"
scripts/setup-locale.sh

section "moto for the publisher tests (pinned, hash-checked)"
MOTO_PYTHON="$(scripts/setup-moto.sh | tail -n 1)"
export MOTO_PYTHON
echo "$MOTO_PYTHON"

section "cargo test (unit, integration, doc; both workspace crates)"
scripts/setup-fuse.sh
cargo test --locked

section "client compatibility (pytest): tritonclient http+grpc, kserve REST+gRPC, perf_analyzer"
scripts/test-python.sh

section "the release binary (built once: the Lambda end-to-end test and the smoke test share it)"
t=$SECONDS
cargo build --release --locked --quiet --bin model-router
echo "release build: $((SECONDS - t)) s"

section "Lambda runtime loop end to end (cargo lambda watch: every event source, admin, PRELOAD, SIGTERM, EMF)"
scripts/lambda-e2e.sh

section "infrastructure: cfn-lint, sam validate --lint, checkov, hadolint, static checks, invoke policy, binary smoke test"
MODEL_ROUTER_BIN="$PWD/target/release/model-router" scripts/check-infra.sh

section "Kubernetes: Kustomize base and KServe runtime (rendering, kubernetes-validate, consistency, checkov)"
scripts/check-kubernetes.sh
