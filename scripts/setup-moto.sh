#!/usr/bin/env bash
# moto (an S3 API server) for the publisher's tests: makes or reuses the
# virtualenv <repo>/.cache/venv-moto from the hash-pinned
# scripts/requirements-moto.txt and prints its python as the last line.
#
#   MOTO_PYTHON="$(scripts/setup-moto.sh | tail -n 1)"
#
# scripts/test.sh runs it before `cargo test` and exports MOTO_PYTHON;
# publisher/tests/publisher.rs runs it itself when MOTO_PYTHON is unset, and
# starts `python publisher/tests/moto_server.py` on 127.0.0.1 with a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR="$PWD/.cache/venv-moto" scripts/python-env.sh scripts/requirements-moto.txt | tail -n 1
