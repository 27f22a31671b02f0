#!/usr/bin/env python3
"""Make the test model fixtures in tests/data/models/ (deterministic).

For every model <name> this writes:
  <name>.onnx           the ONNX model (IR version 8; opset 17 for the hand-built
                        models, whatever the converter chose for the others)
  <name>.ort            the same model in ORT format (converted by onnxruntime,
                        basic graph optimizations only, so it holds only standard
                        ONNX / ai.onnx.ml / com.microsoft CPU kernels)
  <name>.expected.json  inputs and expected outputs (see tests/data/README.md)

Models built by hand with onnx.helper: mlp, linear_f64, int_ops, all_types,
sized_0 .. sized_4. Models trained and converted with scikit-learn / skl2onnx /
XGBoost / onnxmltools: iris_logreg, diabetes_ridge, text_tfidf, xgb_classifier,
mixed_inputs. For those, the expected file also holds the original framework's
predictions under "framework_outputs".

Every written .onnx and .ort is loaded again with onnxruntime (the .ort also
with session.use_ort_model_bytes_directly=1,
session.use_ort_model_bytes_for_initializers=1 and session.disable_prepacking=1,
the config model-router uses) and checked against the expected file.

Usage:
  scripts/python-env.sh scripts/requirements-fixtures.txt
  .venv/bin/python scripts/make_fixtures.py                 # make all, then verify
  .venv/bin/python scripts/make_fixtures.py --only mlp,int_ops
  .venv/bin/python scripts/make_fixtures.py --check         # verify existing files only
  .venv/bin/python scripts/make_fixtures.py --force-ort     # also re-convert unchanged .ort files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

# Reproducibility, set before numpy loads: single-threaded BLAS/OpenMP, and a fixed
# hash seed (skl2onnx orders some sets, e.g. the opset imports, by string hash).
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "tests" / "data" / "models"

OPSET = 17
ML_OPSET = 3
IR_VERSION = 8  # the IR version that goes with opset 17
BATCH = "batch"  # name of the dynamic first dimension

# Tolerance a consumer should use to compare its float outputs with "outputs"
# (computed by onnxruntime 1.32.0 on x86_64, one intra-op thread, default session
# options). session.disable_prepacking=1 alone changes MatMul results in the last
# bits (about 2e-6 on the sized_* models), and thread counts / CPUs may too.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# numpy dtype name -> (onnx elem type, KServe V2 / Open Inference Protocol datatype)
DTYPES = {
    "bool": (TensorProto.BOOL, "BOOL"),
    "int8": (TensorProto.INT8, "INT8"),
    "int16": (TensorProto.INT16, "INT16"),
    "int32": (TensorProto.INT32, "INT32"),
    "int64": (TensorProto.INT64, "INT64"),
    "uint8": (TensorProto.UINT8, "UINT8"),
    "uint16": (TensorProto.UINT16, "UINT16"),
    "uint32": (TensorProto.UINT32, "UINT32"),
    "uint64": (TensorProto.UINT64, "UINT64"),
    "float16": (TensorProto.FLOAT16, "FP16"),
    "float32": (TensorProto.FLOAT, "FP32"),
    "float64": (TensorProto.DOUBLE, "FP64"),
    "string": (TensorProto.STRING, "BYTES"),
}
ONNX_TO_DTYPE = {v[0]: k for k, v in DTYPES.items()}

# The config entries model-router uses for a zero-copy .ort load (DESIGN.md 7).
ZERO_COPY_CONFIG = {
    "session.use_ort_model_bytes_directly": "1",
    "session.use_ort_model_bytes_for_initializers": "1",
    "session.disable_prepacking": "1",
}


# --------------------------------------------------------------------------
# JSON rendering of values
# --------------------------------------------------------------------------


def dtype_name(arr: np.ndarray) -> str:
    if arr.dtype == object or arr.dtype.kind in "US":
        return "string"
    return str(arr.dtype)


def to_json_data(arr: np.ndarray):
    """Nested lists; float32/float16 values are widened exactly to Python floats."""
    if arr.dtype == object or arr.dtype.kind in "US":
        as_str = np.frompyfunc(lambda s: s.decode() if isinstance(s, bytes) else str(s), 1, 1)
        return as_str(arr).tolist() if arr.size else arr.tolist()
    return arr.tolist()


def dump_json(doc) -> str:
    """Indented JSON whose innermost lists (and the objects of a ZipMap row) stay on one line."""

    def compact(v) -> bool:
        if isinstance(v, list):
            return all(not isinstance(e, (list, dict)) for e in v)
        if isinstance(v, dict):
            return all(not isinstance(e, (list, dict)) for e in v.values())
        return True

    def enc(v, level: int) -> str:
        pad, pad_in = " " * level, " " * (level + 1)
        if compact(v):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[\n" + ",\n".join(pad_in + enc(e, level + 1) for e in v) + "\n" + pad + "]"
        items = (pad_in + json.dumps(k, ensure_ascii=False) + ": " + enc(e, level + 1) for k, e in v.items())
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"

    text = enc(doc, 0) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    return text


def tensor_json(arr: np.ndarray) -> dict:
    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": to_json_data(arr)}


def ort_output_json(value, type_str: str) -> dict:
    """An onnxruntime output as JSON: tensors as tensor_json, seq(map) as a list of objects."""
    if isinstance(value, np.ndarray):
        return tensor_json(value)
    if isinstance(value, list):  # seq(map(K, tensor(V))) from ZipMap
        rows = [{str(k): float(v) for k, v in m.items()} for m in value]
        return {"dtype": type_str, "shape": [len(rows)], "data": rows}
    raise TypeError(f"unsupported output value of type {type(value)} ({type_str})")


def ort_type_to_meta(type_str: str, shape) -> dict:
    """Signature entry: dtype (numpy name or the ORT type string), KServe datatype, shape."""
    tensor_types = {
        "tensor(bool)": "bool", "tensor(int8)": "int8", "tensor(int16)": "int16",
        "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
        "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
        "tensor(float16)": "float16", "tensor(float)": "float32", "tensor(double)": "float64",
        "tensor(string)": "string",
    }
    if type_str in tensor_types:
        dt = tensor_types[type_str]
        dims = [d if isinstance(d, int) else -1 for d in (shape or [])]
        return {"dtype": dt, "datatype": DTYPES[dt][1], "shape": dims}
    return {"dtype": type_str, "datatype": None, "shape": [-1]}


# --------------------------------------------------------------------------
# Saving, ORT conversion, verification
# --------------------------------------------------------------------------


def file_info(path: Path) -> dict:
    data = path.read_bytes()
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    """Convert with onnxruntime itself (what convert_onnx_models_to_ort does)."""
    so = session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    if not ort_path.exists():
        raise RuntimeError(f"onnxruntime did not write {ort_path}")


def set_batch_dim(model: onnx.ModelProto) -> None:
    """Name the dynamic first dimension of every tensor input/output 'batch'."""
    for vi in list(model.graph.input) + list(model.graph.output):
        t = vi.type
        if t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
            dims = t.tensor_type.shape.dim
            if len(dims) >= 1 and not dims[0].HasField("dim_value"):
                dims[0].dim_param = BATCH


FORCE_ORT = False  # --force-ort


def save_model(name: str, model: onnx.ModelProto) -> tuple[Path, Path]:
    """Write <name>.onnx and convert it to <name>.ort.

    onnxruntime's ORT-format writer is not byte-deterministic (it serializes the
    kernel type-string table from a hash map, so the same model can come out with
    its entries in another order). To keep regeneration free of spurious diffs, an
    existing .ort is kept when the .onnx bytes did not change and the existing
    expected file was made with the same onnxruntime version; verify() then checks
    that .ort against the expected outputs anyway.
    """
    onnx.checker.check_model(model, full_check=True)
    onnx_path = OUT_DIR / f"{name}.onnx"
    ort_path = OUT_DIR / f"{name}.ort"
    expected_path = OUT_DIR / f"{name}.expected.json"
    data = model.SerializeToString(deterministic=True)
    unchanged = onnx_path.exists() and onnx_path.read_bytes() == data
    if not unchanged:
        onnx_path.write_bytes(data)
    same_ort_version = False
    if expected_path.exists():
        try:
            same_ort_version = json.loads(expected_path.read_text()).get("onnxruntime_version") == ort.__version__
        except ValueError:
            pass
    if FORCE_ORT or not (unchanged and same_ort_version and ort_path.exists()):
        convert_to_ort(onnx_path, ort_path)
    return onnx_path, ort_path


def run_session(sess: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict:
    names = [o.name for o in sess.get_outputs()]
    types = {o.name: o.type for o in sess.get_outputs()}
    values = sess.run(names, inputs)
    return {n: ort_output_json(v, types[n]) for n, v in zip(names, values)}


def signature(sess: ort.InferenceSession) -> dict:
    return {
        "inputs": [{"name": i.name, **ort_type_to_meta(i.type, i.shape)} for i in sess.get_inputs()],
        "outputs": [{"name": o.name, **ort_type_to_meta(o.type, o.shape)} for o in sess.get_outputs()],
    }


def write_expected(
    name: str,
    description: str,
    onnx_path: Path,
    ort_path: Path,
    cases: list[tuple[str, dict[str, np.ndarray]]],
    framework: str = "onnx",
    framework_outputs: list[dict] | None = None,
    extra: dict | None = None,
) -> Path:
    sess = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    doc = {
        "model": name,
        "description": description,
        "framework": framework,
        "onnxruntime_version": ort.__version__,
        "opset": {(o.domain or "ai.onnx"): o.version for o in onnx.load(str(onnx_path)).opset_import},
        "ir_version": onnx.load(str(onnx_path)).ir_version,
        "files": {"onnx": file_info(onnx_path), "ort": file_info(ort_path)},
        "signature": signature(sess),
        "tolerance": TOLERANCE,
        "cases": [],
    }
    if extra:
        doc.update(extra)
    for i, (case_name, inputs) in enumerate(cases):
        case = {
            "name": case_name,
            "inputs": {k: tensor_json(v) for k, v in inputs.items()},
            "outputs": run_session(sess, inputs),
        }
        if framework_outputs is not None:
            case["framework_outputs"] = framework_outputs[i]
        doc["cases"].append(case)
    path = OUT_DIR / f"{name}.expected.json"
    path.write_text(dump_json(doc))
    return path


# ---- verification --------------------------------------------------------


def inputs_from_json(spec: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, t in spec.items():
        if t["dtype"] == "string":
            arr = np.array(t["data"], dtype=object).reshape(t["shape"])
        else:
            arr = np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])
        out[name] = arr
    return out


def compare(got: dict, want: dict, where: str, exact_out: list) -> None:
    if got["dtype"] != want["dtype"] or got["shape"] != want["shape"]:
        raise AssertionError(f"{where}: dtype/shape {got['dtype']}{got['shape']} != {want['dtype']}{want['shape']}")
    g, w = got["data"], want["data"]
    if want["dtype"].startswith("seq("):
        g_arr = np.array([[row[k] for k in sorted(row)] for row in g], dtype=np.float64)
        w_arr = np.array([[row[k] for k in sorted(row)] for row in w], dtype=np.float64)
        if [sorted(r) for r in g] != [sorted(r) for r in w]:
            raise AssertionError(f"{where}: map keys differ")
    elif want["dtype"] in ("string", "bool") or want["dtype"].startswith(("int", "uint")):
        if g != w:
            raise AssertionError(f"{where}: {g} != {w}")
        return
    else:
        g_arr, w_arr = np.array(g, dtype=np.float64), np.array(w, dtype=np.float64)
    if not np.allclose(g_arr, w_arr, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"]):
        raise AssertionError(f"{where}: max abs diff {np.max(np.abs(g_arr - w_arr))}")
    if not np.array_equal(g_arr, w_arr):
        exact_out.append(f"{where}: max abs diff {np.max(np.abs(g_arr - w_arr)):.3g}")


def verify(name: str) -> list[str]:
    """Load .onnx, .ort (path) and .ort (bytes, zero-copy config); compare with expected."""
    doc = json.loads((OUT_DIR / f"{name}.expected.json").read_text())
    onnx_path = OUT_DIR / f"{name}.onnx"
    ort_path = OUT_DIR / f"{name}.ort"
    for kind in ("onnx", "ort"):
        info = file_info(OUT_DIR / doc["files"][kind]["file"])
        if info != doc["files"][kind]:
            raise AssertionError(f"{name}.{kind}: file info {info} != expected {doc['files'][kind]}")
    onnx.checker.check_model(str(onnx_path), full_check=True)

    sessions = {
        "onnx": ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"]),
        "ort-path": ort.InferenceSession(str(ort_path), session_options(), providers=["CPUExecutionProvider"]),
    }
    # The zero-copy config is checked with a load from the path: onnxruntime then
    # owns the file's bytes for the session's life. (Python's InferenceSession(bytes)
    # copies the bytes into a temporary that is freed after session creation, so with
    # use_ort_model_bytes_directly=1 it would read freed memory: garbage outputs.)
    so = session_options()
    for k, v in ZERO_COPY_CONFIG.items():
        so.add_session_config_entry(k, v)
    sessions["ort-zero-copy-config"] = ort.InferenceSession(str(ort_path), so, providers=["CPUExecutionProvider"])

    notes = []
    for label, sess in sessions.items():
        if signature(sess) != doc["signature"]:
            raise AssertionError(f"{name} [{label}]: signature {signature(sess)} != {doc['signature']}")
        for case in doc["cases"]:
            got = run_session(sess, inputs_from_json(case["inputs"]))
            if set(got) != set(case["outputs"]):
                raise AssertionError(f"{name} [{label}] {case['name']}: outputs {set(got)}")
            for out_name, want in case["outputs"].items():
                compare(got[out_name], want, f"{name} [{label}] {case['name']}/{out_name}", notes)
    del sessions
    return notes


# --------------------------------------------------------------------------
# Hand-built models (onnx.helper)
# --------------------------------------------------------------------------


def make_model(graph: onnx.GraphProto, ml: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="model-router/make_fixtures.py")
    model.ir_version = IR_VERSION
    return model


def init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(arr, name=name)


def build_mlp():
    rng = np.random.default_rng(1001)
    w1 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (3,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"], name="matmul1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="matmul2"),
        helper.make_node("Add", ["h3", "b2"], ["scores"], name="add2"),
        helper.make_node("ArgMax", ["scores"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [BATCH, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [BATCH, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [BATCH])],
        [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)],
    )
    # Batch rows: the first of 200 random rows predicted as class 0, 1 and 2 (so the
    # batch's labels differ), found by evaluating the same graph with numpy.
    pool = rng.normal(0, 2, (200, 4)).astype(np.float32)
    pool_scores = np.maximum(pool @ w1 + b1, 0) @ w2 + b2
    picks = [int(np.flatnonzero(pool_scores.argmax(axis=1) == c)[0]) for c in range(3)]
    x = pool[picks]
    cases = [
        ("single_row", {"features": np.array([[0.5, -1.25, 2.0, 0.75]], dtype=np.float32)}),
        ("batch", {"features": x}),
    ]
    return make_model(graph), cases, "4 -> 8 (ReLU) -> 3 MLP with an ArgMax label output"


def build_linear_f64():
    rng = np.random.default_rng(1002)
    w = rng.normal(0, 1, (3, 1)).astype(np.float64)
    b = np.array([0.125], dtype=np.float64)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "linear_f64",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [BATCH, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [BATCH, 1])],
        [init("w", w), init("b", b)],
    )
    cases = [
        ("single_row", {"x": np.array([[1.0, 2.0, 3.0]], dtype=np.float64)}),
        ("batch", {"x": rng.normal(0, 1, (3, 3)).astype(np.float64)}),
    ]
    return make_model(graph), cases, "float64 linear model y = x @ w + b"


def build_int_ops():
    nodes = [
        helper.make_node("Cast", ["b"], ["b64"], name="cast", to=TensorProto.INT64),
        helper.make_node("Add", ["a", "b64"], ["sum"], name="add_sum"),
        helper.make_node("Add", ["b", "b"], ["b_doubled"], name="add_double"),
    ]
    graph = helper.make_graph(
        nodes, "int_ops",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [BATCH, 2]),
         helper.make_tensor_value_info("b", TensorProto.INT32, [BATCH, 2])],
        [helper.make_tensor_value_info("sum", TensorProto.INT64, [BATCH, 2]),
         helper.make_tensor_value_info("b_doubled", TensorProto.INT32, [BATCH, 2])],
    )
    cases = [
        ("single_row", {"a": np.array([[1, 2]], dtype=np.int64), "b": np.array([[10, -20]], dtype=np.int32)}),
        ("batch", {"a": np.array([[0, -1], [100, 200], [-7, 7]], dtype=np.int64),
                   "b": np.array([[5, 6], [-100, 1], [3, -3]], dtype=np.int32)}),
        # int64 values beyond 2**53 (not representable as f64) and large int32 values.
        ("large_values", {"a": np.array([[2**53 + 1, -(2**53) - 1]], dtype=np.int64),
                          "b": np.array([[2**29, -(2**29)]], dtype=np.int32)}),
    ]
    return make_model(graph), cases, "integer ops: sum = a + int64(b), b_doubled = b + b"


def build_sized(k: int):
    rng = np.random.default_rng(2000 + k)
    hidden = 4096  # 2 * 8 * 4096 float32 = 256 KiB of weights
    w1 = (rng.normal(0, 1, (8, hidden)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.normal(0, 1, (hidden, 8)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="matmul1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="matmul2"),
    ]
    graph = helper.make_graph(
        nodes, f"sized_{k}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 8])],
        [init("w1", w1), init("w2", w2)],
    )
    cases = [
        ("single_row", {"x": np.arange(8, dtype=np.float32).reshape(1, 8) / 8}),
        ("batch", {"x": rng.normal(0, 1, (3, 8)).astype(np.float32)}),
    ]
    return make_model(graph), cases, f"cache-test model {k}: y = (x @ w1[8x4096]) @ w2[4096x8], about 256 KiB"


ALL_TYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
             "uint64", "float16", "float32", "float64", "string"]


def _typed(t: str, values) -> np.ndarray:
    if t == "string":
        return np.array(values, dtype=object)
    return np.array(values, dtype=t)


def build_all_types():
    nodes, inputs, outputs = [], [], []
    for t in ALL_TYPES:
        elem = DTYPES[t][0]
        nodes.append(helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"], name=f"identity_{t}"))
        inputs.append(helper.make_tensor_value_info(f"in_{t}", elem, [BATCH, 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{t}", elem, [BATCH, 2]))
    graph = helper.make_graph(nodes, "all_types", inputs, outputs)

    single = {
        "bool": [[True, False]], "int8": [[-8, 8]], "int16": [[-16, 16]], "int32": [[-32, 32]],
        "int64": [[-64, 64]], "uint8": [[8, 9]], "uint16": [[16, 17]], "uint32": [[32, 33]],
        "uint64": [[64, 65]], "float16": [[0.5, -1.25]], "float32": [[1.5, -2.25]],
        "float64": [[0.1, -3.75]], "string": [["hello", "world"]],
    }
    batch = {
        "bool": [[True, True], [False, False], [False, True]],
        "int8": [[1, 2], [3, 4], [5, 6]], "int16": [[10, 20], [30, 40], [50, 60]],
        "int32": [[100, 200], [300, 400], [500, 600]],
        "int64": [[1000, 2000], [3000, 4000], [5000, 6000]],
        "uint8": [[1, 2], [3, 4], [5, 6]], "uint16": [[10, 20], [30, 40], [50, 60]],
        "uint32": [[100, 200], [300, 400], [500, 600]],
        "uint64": [[1000, 2000], [3000, 4000], [5000, 6000]],
        "float16": [[0.25, 0.5], [1.0, 2.0], [-4.0, 8.0]],
        "float32": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
        "float64": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
        "string": [["a", "b"], ["c", "d"], ["e", "f"]],
    }
    limits = {
        "bool": [[False, True]],
        "int8": [[-128, 127]], "int16": [[-32768, 32767]], "int32": [[-(2**31), 2**31 - 1]],
        "int64": [[-(2**63), 2**63 - 1]], "uint8": [[0, 255]], "uint16": [[0, 65535]],
        "uint32": [[0, 2**32 - 1]], "uint64": [[0, 2**64 - 1]],
        "float16": [[65504.0, 6.103515625e-05]],  # max and smallest normal
        "float32": [[3.4028234663852886e38, 1.1754943508222875e-38]],
        "float64": [[1.7976931348623157e308, 5e-324]],
        "string": [["", "h\u00e9llo \u4e16\u754c \"quoted\"\n"]],
    }
    cases = []
    for case_name, table in (("single_row", single), ("batch", batch), ("limits", limits)):
        cases.append((case_name, {f"in_{t}": _typed(t, table[t]) for t in ALL_TYPES}))
    return make_model(graph), cases, "one Identity per element type (Open Inference Protocol datatypes)"


def build_core(name: str):
    if name == "mlp":
        return build_mlp()
    if name == "linear_f64":
        return build_linear_f64()
    if name == "int_ops":
        return build_int_ops()
    if name == "all_types":
        return build_all_types()
    if name.startswith("sized_"):
        return build_sized(int(name.split("_")[1]))
    raise KeyError(name)


CORE_MODELS = ["mlp", "linear_f64", "int_ops", "all_types"] + [f"sized_{k}" for k in range(5)]


def make_core(name: str) -> None:
    model, cases, description = build_core(name)
    onnx_path, ort_path = save_model(name, model)
    write_expected(name, description, onnx_path, ort_path, cases)


# --------------------------------------------------------------------------
# scikit-learn / XGBoost models (skl2onnx / onnxmltools)
# --------------------------------------------------------------------------

SKL_TARGET_OPSET = {"": OPSET, "ai.onnx.ml": ML_OPSET}


def finish_converted(name: str, model: onnx.ModelProto) -> tuple[Path, Path]:
    set_batch_dim(model)
    # One entry per domain (skl2onnx can list the default domain twice), sorted.
    versions: dict[str, int] = {}
    for o in model.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    model.producer_name = f"{model.producer_name} via model-router/make_fixtures.py"
    # Strip the converters' doc strings that embed library versions/paths.
    model.doc_string = ""
    return save_model(name, model)


def make_iris_logreg() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = LogisticRegression(max_iter=1000, random_state=0).fit(X, y)
    onx = convert_sklearn(
        clf, "iris_logreg", initial_types=[("features", FloatTensorType([None, 4]))],
        target_opset=SKL_TARGET_OPSET, options={id(clf): {"zipmap": True}},
    )
    onnx_path, ort_path = finish_converted("iris_logreg", onx)
    cases = [("single_row", X[[0]]), ("batch", X[[10, 75, 140]])]
    fw = [{"label": clf.predict(x).tolist(), "probabilities": clf.predict_proba(x).tolist(),
           "classes": clf.classes_.tolist()} for _, x in cases]
    write_expected(
        "iris_logreg",
        "scikit-learn LogisticRegression on iris (3 classes), skl2onnx with ZipMap",
        onnx_path, ort_path, [(n, {"features": x}) for n, x in cases],
        framework="scikit-learn", framework_outputs=fw,
    )


def make_diabetes_ridge() -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    reg = Ridge(alpha=1.0).fit(X, y)
    onx = convert_sklearn(reg, "diabetes_ridge", initial_types=[("features", FloatTensorType([None, 10]))],
                          target_opset=SKL_TARGET_OPSET)
    onnx_path, ort_path = finish_converted("diabetes_ridge", onx)
    cases = [("single_row", X[[0]]), ("batch", X[[5, 100, 300]])]
    fw = [{"prediction": reg.predict(x).tolist()} for _, x in cases]
    write_expected(
        "diabetes_ridge", "scikit-learn Ridge regressor on the diabetes dataset (10 float features)",
        onnx_path, ort_path, [(n, {"features": x}) for n, x in cases],
        framework="scikit-learn", framework_outputs=fw,
    )


TEXT_SENTENCES = [
    ("I loved this movie, it was wonderful", "positive"),
    ("What a great and happy experience", "positive"),
    ("The food was excellent and the staff friendly", "positive"),
    ("Absolutely fantastic service, highly recommended", "positive"),
    ("A delightful book with a beautiful story", "positive"),
    ("I am very happy with this purchase", "positive"),
    ("The concert was amazing and fun", "positive"),
    ("Great value, works perfectly", "positive"),
    ("Such a lovely and pleasant day", "positive"),
    ("The best coffee I have ever had", "positive"),
    ("I hated this movie, it was terrible", "negative"),
    ("What a bad and sad experience", "negative"),
    ("The food was awful and the staff rude", "negative"),
    ("Horrible service, never again", "negative"),
    ("A boring book with a dull story", "negative"),
    ("I am very unhappy with this purchase", "negative"),
    ("The concert was loud and disappointing", "negative"),
    ("Poor value, broke after one day", "negative"),
    ("Such a gloomy and miserable day", "negative"),
    ("The worst coffee I have ever had", "negative"),
]


def make_text_pipeline(name: str, converter_options: dict[str, str], description: str) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    texts = [t for t, _ in TEXT_SENTENCES]
    labels = [l for _, l in TEXT_SENTENCES]
    pipe = Pipeline([
        ("tfidf", TfidfVectorizer()),
        ("clf", LogisticRegression(C=10.0, max_iter=1000, random_state=0)),
    ]).fit(texts, labels)
    tfidf = pipe.steps[0][1]
    options = {id(tfidf): converter_options} if converter_options else None
    onx = convert_sklearn(pipe, name, initial_types=[("text", StringTensorType([None, 1]))],
                          target_opset=SKL_TARGET_OPSET, options=options)
    onnx_path, ort_path = finish_converted(name, onx)
    cases = [
        ("single_row", ["a wonderful and happy movie"]),
        ("batch", ["the staff was rude and the food awful", "great coffee, lovely day", "a book about a concert"]),
    ]
    fw = [{"label": pipe.predict(t).tolist(), "probabilities": pipe.predict_proba(t).tolist(),
           "classes": pipe.classes_.tolist()} for _, t in cases]
    write_expected(
        name,
        "scikit-learn Pipeline(TfidfVectorizer, LogisticRegression) on 20 English sentences, "
        "labels 'negative'/'positive', string input [N,1], ZipMap output" + (f"; {description}" if description else ""),
        onnx_path, ort_path,
        [(n, {"text": np.array(t, dtype=object).reshape(-1, 1)}) for n, t in cases],
        framework="scikit-learn", framework_outputs=fw,
    )


def make_text_tfidf() -> None:
    # StringNormalizer (the lowercasing step) defaults to locale en_US, which onnxruntime
    # maps to en_US.UTF-8 on Linux; a machine (or Lambda image) without that locale
    # fails to create the session ("Failed to construct locale with name:en_US.UTF-8").
    # The "C" locale always exists; it lowercases ASCII, enough for these sentences.
    make_text_pipeline("text_tfidf", {"locale": "C"}, "")


def make_text_tfidf_default() -> None:
    # The same pipeline converted as users do, with skl2onnx's defaults: its
    # StringNormalizer asks for locale en_US (en_US.UTF-8). Making and checking
    # it needs that locale (scripts/setup-locale.sh, or LOCPATH=DIR from
    # `scripts/setup-locale.sh --dir DIR`).
    import locale as pylocale
    try:
        saved = pylocale.setlocale(pylocale.LC_CTYPE)
        pylocale.setlocale(pylocale.LC_CTYPE, "en_US.UTF-8")
        pylocale.setlocale(pylocale.LC_CTYPE, saved)
    except pylocale.Error:
        raise SystemExit("text_tfidf_default needs the en_US.UTF-8 locale: run scripts/setup-locale.sh "
                         "(or scripts/setup-locale.sh --dir DIR and set LOCPATH=DIR)")
    make_text_pipeline("text_tfidf_default", {}, "converted with skl2onnx's default options "
                       "(StringNormalizer locale en_US: needs en_US.UTF-8 where it runs)")


# onnxmltools 1.16 refuses target_opset > 15 for XGBoost ("target_opset 17 is higher
# than ... the converter support (15)").
XGB_OPSET = 15


def make_xgb_classifier() -> None:
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = xgboost.XGBClassifier(n_estimators=10, max_depth=3, learning_rate=0.3, random_state=0,
                                n_jobs=1, tree_method="hist").fit(X, y)
    onx = onnxmltools.convert_xgboost(clf, name="xgb_classifier",
                                      initial_types=[("features", FloatTensorType([None, 4]))],
                                      target_opset=XGB_OPSET)
    onnx_path, ort_path = finish_converted("xgb_classifier", onx)
    cases = [("single_row", X[[0]]), ("batch", X[[20, 70, 120]])]
    fw = [{"label": clf.predict(x).tolist(), "probabilities": clf.predict_proba(x).tolist(),
           "classes": clf.classes_.tolist()} for _, x in cases]
    write_expected(
        "xgb_classifier",
        f"XGBoost XGBClassifier (10 rounds x 3 classes, depth 3) on iris, onnxmltools "
        f"(xgboost {xgboost.__version__}, onnxmltools {onnxmltools.__version__})",
        onnx_path, ort_path, [(n, {"features": x}) for n, x in cases],
        framework="xgboost", framework_outputs=fw,
    )


MIXED_COLORS = ["red", "green", "blue"]


def make_mixed_inputs() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    rng = np.random.default_rng(3003)
    n = 200
    num = np.column_stack([rng.normal(40, 12, n), rng.normal(50, 20, n)]).astype(np.float32)
    color = rng.choice(MIXED_COLORS, n)
    logit = 0.08 * (num[:, 0] - 40) - 0.05 * (num[:, 1] - 50) + np.where(color == "red", 1.5, 0.0) \
        - np.where(color == "blue", 1.0, 0.0) + rng.normal(0, 0.5, n)
    y = (logit > 0).astype(np.int64)
    # Columns 0-1 come from input "num" (float32 [N,2]), column 2 from "color" (string [N,1]).
    X = np.empty((n, 3), dtype=object)
    X[:, 0], X[:, 1], X[:, 2] = num[:, 0], num[:, 1], color
    pipe = Pipeline([
        ("prep", ColumnTransformer([
            ("num", StandardScaler(), [0, 1]),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), [2]),
        ])),
        ("clf", LogisticRegression(max_iter=1000, random_state=0)),
    ]).fit(X, y)
    clf = pipe.steps[-1][1]
    onx = convert_sklearn(
        pipe, "mixed_inputs",
        initial_types=[("num", FloatTensorType([None, 2])), ("color", StringTensorType([None, 1]))],
        target_opset=SKL_TARGET_OPSET, options={id(clf): {"zipmap": False}},
    )
    onnx_path, ort_path = finish_converted("mixed_inputs", onx)

    def rows(nums, colors):
        nn = np.array(nums, dtype=np.float32)
        cc = np.array(colors, dtype=object).reshape(-1, 1)
        xx = np.empty((len(nn), 3), dtype=object)
        xx[:, 0], xx[:, 1], xx[:, 2] = nn[:, 0], nn[:, 1], cc[:, 0]
        return {"num": nn, "color": cc}, xx

    cases = [
        ("single_row", *rows([[35.0, 60.0]], ["red"])),
        ("batch", *rows([[50.5, 20.0], [28.0, 75.25], [41.0, 49.0]], ["green", "blue", "purple"])),
    ]
    fw = [{"label": pipe.predict(xx).tolist(), "probabilities": pipe.predict_proba(xx).tolist(),
           "classes": pipe.classes_.tolist()} for _, _, xx in cases]
    write_expected(
        "mixed_inputs",
        "scikit-learn Pipeline(ColumnTransformer(StandardScaler on 'num', OneHotEncoder on 'color'), "
        "LogisticRegression), two inputs: float32 [N,2] and string [N,1]; no ZipMap "
        "('purple' in the batch case is an unknown category, ignored by the encoder)",
        onnx_path, ort_path, [(c[0], c[1]) for c in cases],
        framework="scikit-learn", framework_outputs=fw,
    )


SKLEARN_MODELS = {
    "iris_logreg": make_iris_logreg,
    "diabetes_ridge": make_diabetes_ridge,
    "text_tfidf": make_text_tfidf,
    "text_tfidf_default": make_text_tfidf_default,
    "xgb_classifier": make_xgb_classifier,
    "mixed_inputs": make_mixed_inputs,
}

ALL_MODELS = CORE_MODELS + list(SKLEARN_MODELS)


def check_framework_agreement(name: str) -> list[str]:
    """ONNX outputs of the converted models must agree with the framework's own predictions."""
    doc = json.loads((OUT_DIR / f"{name}.expected.json").read_text())
    notes = []
    for case in doc["cases"]:
        fw = case.get("framework_outputs")
        if fw is None:
            continue
        outs = case["outputs"]
        if "prediction" in fw:  # regressor: the single output [N,1]
            (out,) = outs.values()
            got = np.array(out["data"], dtype=np.float64).reshape(-1)
            want = np.array(fw["prediction"], dtype=np.float64)
            diff = float(np.max(np.abs(got - want)))
            if diff > 1e-3 * max(1.0, float(np.max(np.abs(want)))):
                raise AssertionError(f"{name} {case['name']}: ONNX vs framework diff {diff}")
            notes.append(f"{name} {case['name']}: max |onnx - framework| = {diff:.3g}")
            continue
        label_key = "output_label" if "output_label" in outs else "label"
        prob_key = "output_probability" if "output_probability" in outs else "probabilities"
        if outs[label_key]["data"] != fw["label"]:
            raise AssertionError(f"{name} {case['name']}: labels {outs[label_key]['data']} != {fw['label']}")
        probs = outs[prob_key]["data"]
        if probs and isinstance(probs[0], dict):
            probs = [[row[str(c)] for c in fw["classes"]] for row in probs]
        diff = float(np.max(np.abs(np.array(probs) - np.array(fw["probabilities"]))))
        if diff > 1e-4:
            raise AssertionError(f"{name} {case['name']}: probability diff {diff}")
        notes.append(f"{name} {case['name']}: labels equal, max |p_onnx - p_framework| = {diff:.3g}")
    return notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated model names (default: all)")
    ap.add_argument("--check", action="store_true", help="only verify the existing files")
    ap.add_argument("--force-ort", action="store_true",
                    help="convert every .ort again even when its .onnx did not change")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    global FORCE_ORT
    FORCE_ORT = args.force_ort

    names = ALL_MODELS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {ALL_MODELS}")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if ort.__version__ != "1.32.0":
        print(f"warning: onnxruntime {ort.__version__}, fixtures are pinned to 1.32.0", file=sys.stderr)

    for name in names:
        if not args.check:
            if name in SKLEARN_MODELS:
                SKLEARN_MODELS[name]()
            else:
                make_core(name)
        notes = verify(name) + check_framework_agreement(name)
        sizes = ", ".join(f"{p.name} {p.stat().st_size} B" for p in
                          (OUT_DIR / f"{name}.onnx", OUT_DIR / f"{name}.ort", OUT_DIR / f"{name}.expected.json"))
        print(f"ok  {name:16s} {sizes}")
        if args.verbose:
            for n in notes:
                print(f"    {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
