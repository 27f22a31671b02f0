"""Makes src/engine/prime/prime.{onnx,ort}: the tiny model the engine loads once
at start-up so that ONNX Runtime's one-time allocations (kernel registries,
allocators, the first session's bookkeeping) are not charged to the first real
model's footprint.

    scripts/python-env.sh scripts/requirements-fixtures.txt
    .venv/bin/python scripts/make_prime_models.py
"""
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out = pathlib.Path(__file__).resolve().parent.parent / "src" / "engine" / "prime"
out.mkdir(parents=True, exist_ok=True)
weights = numpy_helper.from_array(np.eye(4, dtype=np.float32), name="w")
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
    "prime",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    [weights],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="model-router")
model.ir_version = 8
onnx.checker.check_model(model)
(out / "prime.onnx").write_bytes(model.SerializeToString())

options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath = str(out / "prime.ort")
options.add_session_config_entry("session.save_model_format", "ORT")
ort.InferenceSession(str(out / "prime.onnx"), options, providers=["CPUExecutionProvider"])
for path in ("prime.onnx", "prime.ort"):
    session = ort.InferenceSession(str(out / path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.array([[1, -2, 3, -4]], dtype=np.float32)})[0]
    assert y.tolist() == [[1, 0, 3, 0]], y
    print(out / path, (out / path).stat().st_size, "bytes")
