#!/usr/bin/env python3
"""Write tests/data/models/expand.onnx: a model whose output size comes from an
input's *values*, which no check of shapes before a run can bound.

    PY=$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)
    "$PY" scripts/make_expand_model.py

Inputs: `x` float32 [1, 1] and `shape` int64 [2]. Output: `y` float32
[shape[0], shape[1]] = Expand(x, shape), every element x. `shape` = [20000,
20000] asks ONNX Runtime for 1.6 GB in one allocation (issue 10: OOM-killed
in a 1 GiB limit). Deterministic: the same bytes on every run.
"""

import pathlib

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8


def main() -> None:
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "expand",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="model-router scripts/make_expand_model.py",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    out = pathlib.Path(__file__).resolve().parent.parent / "tests/data/models/expand.onnx"
    out.write_bytes(model.SerializeToString())
    print(f"make_expand_model: {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
