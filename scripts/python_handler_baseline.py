#!/usr/bin/env python3
"""Baseline: the original single-model Python Lambda handler, timed in-process.

The handler below is the one model-router replaces (from the original
"AWS Lambda for AI Inference" guide), changed only to read the model path from
the MODEL_PATH environment variable instead of the hard-coded
"model/classifier.onnx". It loads one model at import time ("outside the
handler") and answers API-Gateway-style events {"body": "{\"features\": [...]}"}.

`main` loads tests/data/models/mlp.onnx (unless MODEL_PATH is set), calls the
handler N times with an API-Gateway-like event and prints, as the last line of
stdout:

  {"python_handler_us_per_call": <mean microseconds per call>, "load_ms": <session creation ms>}

Usage:
  scripts/python-env.sh scripts/requirements-fixtures.txt
  .venv/bin/python scripts/python_handler_baseline.py [--iterations 5000] [--warmup 200]
"""

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # The benchmark's default model: the mlp fixture (input features float32 [N,4]).
    os.environ.setdefault(
        "MODEL_PATH", str(Path(__file__).resolve().parent.parent / "tests" / "data" / "models" / "mlp.onnx")
    )

# ---------------------------------------------------------------------------
# The original handler (only the model path changed).
# ---------------------------------------------------------------------------
import onnxruntime as ort

# Load model OUTSIDE handler for reuse across invocations
_load_start = time.perf_counter()
session = ort.InferenceSession(os.environ.get("MODEL_PATH", "model/classifier.onnx"))
LOAD_MS = (time.perf_counter() - _load_start) * 1000.0


def handler(event, context):
    body = json.loads(event["body"])
    inputs = {session.get_inputs()[0].name: [body["features"]]}

    result = session.run(None, inputs)

    return {
        "statusCode": 200,
        "body": json.dumps({
            "prediction": result[0].tolist(),
            "model_version": "v2.1"
        })
    }


# ---------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------


def make_event(features):
    """An API Gateway (REST, v1)-like proxy event carrying the original request body."""
    return {
        "resource": "/predict",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": {"content-type": "application/json"},
        "requestContext": {"stage": "prod", "httpMethod": "POST", "path": "/prod/predict"},
        "isBase64Encoded": False,
        "body": json.dumps({"features": features}),
    }


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Time the original Python Lambda handler.")
    ap.add_argument("--iterations", type=int, default=5000, help="timed handler calls (default 5000)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed calls first (default 200)")
    ap.add_argument("--features", help="JSON list of features for the event (default: the mlp fixture's single_row)")
    args = ap.parse_args(argv)

    features = [0.5, -1.25, 2.0, 0.75]  # tests/data/models/mlp.expected.json, case single_row
    if args.features:
        features = json.loads(args.features)
    event = make_event(features)

    response = handler(event, None)
    if response["statusCode"] != 200:
        print(f"handler failed: {response}", file=sys.stderr)
        return 1
    print(f"model {os.environ['MODEL_PATH']}: first response {response['body']}", file=sys.stderr)

    for _ in range(args.warmup):
        handler(event, None)
    start = time.perf_counter()
    for _ in range(args.iterations):
        handler(event, None)
    elapsed = time.perf_counter() - start

    us_per_call = elapsed / args.iterations * 1e6
    print(f"{args.iterations} calls in {elapsed:.3f} s (onnxruntime {ort.__version__})", file=sys.stderr)
    print(json.dumps({"python_handler_us_per_call": round(us_per_call, 3), "load_ms": round(LOAD_MS, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
