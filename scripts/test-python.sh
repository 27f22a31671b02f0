#!/usr/bin/env bash
# The client compatibility tests (tests/python): NVIDIA's tritonclient (http
# and grpc, sync and asyncio), Triton's perf_analyzer, and kserve's REST and
# gRPC clients, against a real `model-router serve`. Builds the binary, makes
# (or reuses) the test virtualenv and perf_analyzer, and runs pytest twice:
# the tritonclient tests, then the kserve ones in a process of their own
# (the two register the same protobuf messages). Each run ends with pytest's
# summary line.
#
#   scripts/test-python.sh            # from anywhere; extra args go to pytest
#   scripts/test-python.sh -k bytes -v
#
# The virtualenv is <repo>/.cache/venv-test (not the fixtures' .venv), filled
# from the pinned scripts/requirements-test.txt; re-runs skip the install
# while that file is unchanged (scripts/python-env.sh keeps a stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

python="$(VENV_DIR="$PWD/.cache/venv-test" scripts/python-env.sh scripts/requirements-test.txt | tail -n 1)"

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
  ORT_DYLIB_PATH="$(scripts/setup-ort.sh | tail -n 1)"
  export ORT_DYLIB_PATH
fi

cargo build --locked --quiet --bin model-router
export MODEL_ROUTER_BIN="$PWD/target/debug/model-router"

PERF_ANALYZER="$(scripts/setup-perf-analyzer.sh | tail -n 1)"
export PERF_ANALYZER

"$python" -m pytest tests/python -q -p no:cacheprovider --ignore tests/python/test_kserve.py "$@"
"$python" -m pytest tests/python/test_kserve.py -q -p no:cacheprovider "$@"
