#!/usr/bin/env python3
"""Generate many small, distinct ONNX models for the churn benchmark
(scripts/bench-churn.sh, benches/churn.rs). Never committed: made at run time.

    PY=$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)
    "$PY" scripts/make_churn_models.py --count 160 --out-dir "$(mktemp -d)"

Model i (seeded by i, so every run writes the same bytes): input `x` float32
[N, 64] -> MatMul(64 x h_i) -> Relu -> MatMul(h_i x 8) -> output `y` float32
[N, 8], with the hidden width h_i cycling through 64..1024 (weights 18 KiB to
288 KiB), so the cache holds a varying number of them. Writes churn_<i>.onnx.
"""

import argparse
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
WIDTHS = [64, 128, 256, 384, 512, 768, 1024]


def build(i: int) -> onnx.ModelProto:
    rng = np.random.default_rng(1000 + i)
    hidden = WIDTHS[i % len(WIDTHS)]
    w1 = (rng.standard_normal((64, hidden)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 8)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        f"churn_{i}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--out-dir", type=pathlib.Path, required=True)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(args.count):
        path = args.out_dir / f"churn_{i}.onnx"
        path.write_bytes(build(i).SerializeToString())
        total += path.stat().st_size
    print(f"make_churn_models: {args.count} models, {total / 2**20:.1f} MiB in {args.out_dir}")


if __name__ == "__main__":
    main()
