#!/usr/bin/env python3
"""Generate the ~128 MiB model that benches/cold_load.rs loads, as .onnx and .ort.

    PY=$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)
    "$PY" scripts/make_big_model.py --out-dir "$(mktemp -d)"

The model is an MLP: input `x` float32 [N, 2048], then 8 layers of
MatMul(2048x2048) + Add(bias) (+ Relu between layers), output `y` float32
[N, 2048]. Its weights are 8 x 16 MiB of float32, seeded random numbers scaled
so activations stay near 1 (the bench compares outputs of the two formats).

The .ort file is ONNX Runtime's own conversion of the .onnx file (basic graph
optimizations, saved in ORT format), so both files hold the same weights.

Too big to commit: it is generated into a temporary directory on each bench
run. Prints `onnx=<path>` and `ort=<path>` as its last two lines.
"""

import argparse
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Pinned so ONNX Runtime 1.32 (and older runtimes a user might try) read the file.
OPSET = 17
IR_VERSION = 8


def build_mlp(width: int, layers: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    # He initialisation: keeps each Relu layer's output variance near its input's.
    scale = np.float32(np.sqrt(2.0 / width))
    nodes, initializers = [], []
    current = "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width), dtype=np.float32) * scale).astype(np.float32)
        bias = (rng.standard_normal(width, dtype=np.float32) * np.float32(0.01)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        last = i == layers - 1
        added = "y" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_big_model.py")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def convert_to_ort(onnx_path: pathlib.Path, ort_path: pathlib.Path) -> None:
    options = ort.SessionOptions()
    # Basic optimizations only: they are platform-independent, so the .ort file
    # runs on any CPU (extended/layout optimizations may bake in CPU-specific kernels).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    if not ort_path.is_file():
        sys.exit(f"make_big_model: ONNX Runtime did not write {ort_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=pathlib.Path)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "big.onnx"
    ort_path = args.out_dir / "big.ort"

    onnx.save_model(build_mlp(args.width, args.layers, args.seed), str(onnx_path))
    convert_to_ort(onnx_path, ort_path)

    for path in (onnx_path, ort_path):
        print(f"make_big_model: {path.name}: {path.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    print(f"onnx={onnx_path}")
    print(f"ort={ort_path}")


if __name__ == "__main__":
    main()
