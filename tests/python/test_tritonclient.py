"""A V2 client nobody here wrote, against the real server.

NVIDIA's ``tritonclient[http]`` (pinned in scripts/requirements-test.txt)
talks to ``model-router serve`` started on 127.0.0.1:0 over a repository
that the ``model-router publish`` CLI fills from the committed fixtures
(tests/data/models, made by scripts/make_fixtures.py). Answers are checked
against the fixtures' expected files (Python onnxruntime's outputs, and the
original framework's predictions for the scikit-learn models).

Run with scripts/test-python.sh, which builds the binary first.
"""

import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "data" / "models"
BINARY = Path(os.environ.get("MODEL_ROUTER_BIN", ROOT / "target" / "debug" / "model-router"))

# (name, version, fixture file): .onnx as version 1, .ort as version 2.
PUBLISHED = [
    (model, version, f"{model}.{extension}")
    for model in ["mlp", "int_ops", "text_tfidf", "iris_logreg", "all_types"]
    for version, extension in [("1", "onnx"), ("2", "ort")]
]


def expected(model):
    return json.loads((MODELS / f"{model}.expected.json").read_text())


def datatypes(model):
    signature = expected(model)["signature"]
    return {t["name"]: t["datatype"] for t in signature["inputs"] + signature["outputs"]}


class Server:
    """``model-router serve`` in a child process, its address read from the
    ``listening on http://...`` line it prints on stdout (and the gRPC one from
    ``grpc listening on ...`` when ``--grpc-addr`` is given)."""

    def __init__(self, repo, staging, *extra_args, env=None):
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--repo", str(repo), "--addr", "127.0.0.1:0",
             "--staging-dir", str(staging), *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr = []
        self._listening = threading.Event()
        self.url = None
        self.grpc_url = None
        self._wants_grpc = "--grpc-addr" in extra_args
        # stdout and stderr are read for the server's whole life, so that a
        # full pipe never blocks it.
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._listening.wait(timeout=60) or self.url is None:
            self.stop()
            raise RuntimeError("model-router did not start:\n" + "".join(self.stderr[-50:]))

    def _read_stdout(self):
        for line in self.process.stdout:
            if self.url is None and "listening on http://" in line:
                self.url = line.split("http://", 1)[1].strip()
            if self.grpc_url is None and "grpc listening on " in line:
                self.grpc_url = line.split("grpc listening on ", 1)[1].strip()
            if self.url is not None and (self.grpc_url is not None or not self._wants_grpc):
                self._listening.set()
        self._listening.set()

    def _read_stderr(self):
        for line in self.process.stderr:
            self.stderr.append(line)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def repository():
    with tempfile.TemporaryDirectory(prefix="model-router-tritonclient-") as tmp:
        repo = Path(tmp) / "repo"
        for name, version, file in PUBLISHED:
            subprocess.run(
                [str(BINARY), "publish", "--repo", str(repo), "--name", name,
                 "--version", version, str(MODELS / file)],
                check=True, stdout=subprocess.DEVNULL,
            )
        yield Path(tmp)


@pytest.fixture(scope="session")
def server(repository):
    server = Server(repository / "repo", repository / "staging")
    yield server
    server.stop()


@pytest.fixture()
def client(server):
    client = httpclient.InferenceServerClient(url=server.url)
    yield client
    client.close()


def make_input(name, array, datatype, binary):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def as_text(element):
    """A BYTES element: ``str`` from JSON data, ``bytes`` from binary data."""
    return element.decode("utf-8") if isinstance(element, bytes) else element


NUMPY = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}


def case_inputs(model, case, binary):
    types = datatypes(model)
    return [
        make_input(name, np.array(tensor["data"], dtype=NUMPY[types[name]]), types[name], binary)
        for name, tensor in case["inputs"].items()
    ]


def test_server_is_live_and_ready_and_says_what_it_is(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "model-router"
    assert "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("model", ["mlp", "int_ops", "text_tfidf", "all_types"])
@pytest.mark.parametrize("version", ["1", "2", ""])
def test_model_metadata_matches_the_fixture_signature(client, model, version):
    assert client.is_model_ready(model, version)
    metadata = client.get_model_metadata(model, version)
    assert metadata["name"] == model
    assert metadata["versions"] == ["1", "2"]
    signature = expected(model)["signature"]
    for side in ["inputs", "outputs"]:
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata[side]] == [
            (t["name"], t["datatype"] or "BYTES", t["shape"]) for t in signature[side]
        ]


def test_unknown_models_are_not_ready_and_their_metadata_is_an_error(client):
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("mlp", "9")
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "404"
    assert "nope" in error.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_fp32_mlp(client, version, binary):
    fixture = expected("mlp")
    for case in fixture["cases"]:
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in case["outputs"]]
        result = client.infer("mlp", case_inputs("mlp", case, binary), model_version=version,
                              outputs=outputs, request_id=f"mlp-{case['name']}")
        response = result.get_response()
        assert response["id"] == f"mlp-{case['name']}"
        assert response["model_version"] == version
        scores = result.as_numpy("scores")
        want = case["outputs"]["scores"]
        assert scores.dtype == np.float32
        assert list(scores.shape) == want["shape"]
        np.testing.assert_allclose(scores, np.array(want["data"], dtype=np.float32),
                                   rtol=fixture["tolerance"]["rtol"], atol=fixture["tolerance"]["atol"])
        label = result.as_numpy("label")
        assert label.dtype == np.int64
        assert label.tolist() == case["outputs"]["label"]["data"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_int64_int_ops_including_values_beyond_2_to_the_53(client, version, binary):
    for case in expected("int_ops")["cases"]:
        outputs = [httpclient.InferRequestedOutput("b_doubled", binary_data=binary),
                   httpclient.InferRequestedOutput("sum", binary_data=binary)]
        result = client.infer("int_ops", case_inputs("int_ops", case, binary),
                              model_version=version, outputs=outputs)
        assert [o["name"] for o in result.get_response()["outputs"]] == ["b_doubled", "sum"]
        total = result.as_numpy("sum")
        assert total.dtype == np.int64
        assert total.tolist() == case["outputs"]["sum"]["data"]
        doubled = result.as_numpy("b_doubled")
        assert doubled.dtype == np.int32
        assert doubled.tolist() == case["outputs"]["b_doubled"]["data"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_bytes_text_tfidf_with_its_zipmap_output(client, version, binary):
    for case in expected("text_tfidf")["cases"]:
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in case["outputs"]]
        result = client.infer("text_tfidf", case_inputs("text_tfidf", case, binary),
                              model_version=version, outputs=outputs)
        labels = [as_text(x) for x in result.as_numpy("output_label").tolist()]
        assert labels == case["outputs"]["output_label"]["data"]
        assert labels == case["framework_outputs"]["label"]
        # The ZipMap output: BYTES, one JSON object per row, keyed by class label.
        rows = [json.loads(as_text(x)) for x in result.as_numpy("output_probability").tolist()]
        want = case["outputs"]["output_probability"]["data"]
        assert [sorted(r) for r in rows] == [sorted(w) for w in want]
        for row, want_row, framework_row in zip(rows, want, case["framework_outputs"]["probabilities"]):
            for label, probability in want_row.items():
                assert row[label] == pytest.approx(probability, rel=1e-5, abs=1e-6)
            classes = case["framework_outputs"]["classes"]
            assert [row[c] for c in classes] == pytest.approx(framework_row, abs=1e-4)


def test_outputs_come_back_binary_when_none_are_named(client):
    # tritonclient then asks for every output in binary (binary_data_output).
    case = expected("iris_logreg")["cases"][1]
    result = client.infer("iris_logreg", case_inputs("iris_logreg", case, True), model_version="2")
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["output_label", "output_probability"]
    assert all("binary_data_size" in o["parameters"] for o in outputs)
    assert result.as_numpy("output_label").tolist() == case["framework_outputs"]["label"]
    rows = [json.loads(x) for x in result.as_numpy("output_probability").tolist()]
    for row, framework_row in zip(rows, case["framework_outputs"]["probabilities"]):
        assert [row[str(c)] for c in case["framework_outputs"]["classes"]] == pytest.approx(framework_row, abs=1e-4)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_element_type_and_its_limits(client, binary):
    types = datatypes("all_types")
    for case in expected("all_types")["cases"]:
        result = client.infer(
            "all_types", case_inputs("all_types", case, binary),
            outputs=[httpclient.InferRequestedOutput(name, binary_data=binary) for name in case["outputs"]],
        )
        for name, want in case["outputs"].items():
            got = result.as_numpy(name)
            datatype = types[name]
            if datatype == "BYTES":
                assert [as_text(x) for x in got.flatten().tolist()] == [s for row in want["data"] for s in row], name
                continue
            assert got.dtype == NUMPY[datatype], name
            assert list(got.shape) == want["shape"], name
            np.testing.assert_array_equal(got, np.array(want["data"], dtype=NUMPY[datatype]), err_msg=name)


def test_bad_requests_raise_with_the_servers_message(client):
    case = expected("mlp")["cases"][0]
    wrong_type = make_input("features", np.array(case["inputs"]["features"]["data"], dtype=np.float64), "FP64", False)
    with pytest.raises(InferenceServerException) as error:
        client.infer("mlp", [wrong_type])
    assert error.value.status() == "400"
    assert '"features"' in error.value.message() and "FP32" in error.value.message()

    # (Out-of-range values never leave tritonclient: it checks numpy dtypes itself.)
    three_columns = make_input("features", np.ones((1, 3), dtype=np.float32), "FP32", True)
    with pytest.raises(InferenceServerException) as error:
        client.infer("mlp", [three_columns])
    assert error.value.status() == "400"
    assert "'features' dimension 1 must be 4" in error.value.message()


def test_the_request_size_limit_is_configurable_and_answers_413(repository):
    small = Server(repository / "repo", repository / "staging-small", "--max-request-bytes", "4096")
    try:
        client = httpclient.InferenceServerClient(url=small.url)
        rows = np.ones((1000, 4), dtype=np.float32)
        with pytest.raises(InferenceServerException) as error:
            client.infer("mlp", [make_input("features", rows, "FP32", False)], model_version="1")
        assert error.value.status() == "413"
        assert "4096" in error.value.message()
        # A request under the limit is served.
        result = client.infer("mlp", [make_input("features", rows[:2], "FP32", False)], model_version="1")
        assert result.as_numpy("scores").shape == (2, 3)
        client.close()
    finally:
        small.stop()
