"""Every Triton and KServe client call, unchanged, against the real server.

tritonclient (http and grpc, sync and asyncio; pinned in
scripts/requirements-test.txt) and Triton's ``perf_analyzer`` (from the
tritonclient 2.50.0 wheel; scripts/test-python.sh unpacks it and sets
PERF_ANALYZER) talk to one ``model-router serve --grpc-addr`` (conftest.py)
over a repository published from the committed fixtures; kserve's clients
are in test_kserve.py. Calls model-router
deliberately refuses (repository load/unload, sequences, priorities,
classification) are checked to fail the way docs/protocols.md says.
"""

import asyncio
import csv
import json
import os
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from conftest import mlp_scores
from test_tritonclient import Server, expected

ROW = np.array([[0.5, -1.25, 2.0, 0.75]], dtype=np.float32)
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]


def http_input(array, binary=True):
    tensor = httpclient.InferInput("features", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def refused(call, status):
    with pytest.raises(InferenceServerException) as error:
        call()
    assert error.value.status() == status, error.value
    return error.value.message()


# --- tritonclient.http -------------------------------------------------------------

def test_http_every_call(served):
    client = httpclient.InferenceServerClient(url=served.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == EXTENSIONS
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("nope")
    assert client.get_model_metadata("mlp", "1")["platform"] == "onnxruntime_onnx"
    config = client.get_model_config("mlp", "1")
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert [m["name"] for m in client.get_model_repository_index()] == ["all_types", "mlp", "mlp", "text_tfidf"]

    inputs, want = mlp_scores()
    for binary in [False, True]:
        result = client.infer("mlp", [http_input(inputs, binary)], model_version="1",
                              outputs=[httpclient.InferRequestedOutput("scores", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
    for algorithm in ["gzip", "deflate"]:
        result = client.infer("mlp", [http_input(inputs)], model_version="1",
                              request_compression_algorithm=algorithm,
                              response_compression_algorithm="gzip")
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
    result = client.infer("mlp", [http_input(inputs)], model_version="1", timeout=30_000_000)
    assert result.as_numpy("label").dtype == np.int64

    stats = client.get_inference_statistics("mlp", "1")["model_stats"][0]
    assert stats["inference_count"] >= 5 and stats["inference_stats"]["success"]["count"] >= 5
    assert "mlp" in [m["name"] for m in client.get_inference_statistics()["model_stats"]]

    assert "admin" in refused(lambda: client.load_model("mlp"), "400")
    assert "admin" in refused(lambda: client.unload_model("mlp"), "400")
    assert "sequence" in refused(lambda: client.infer("mlp", [http_input(inputs)], sequence_id=3), "400")
    assert "priorit" in refused(lambda: client.infer("mlp", [http_input(inputs)], priority=2), "400")
    assert "classification" in refused(lambda: client.infer(
        "mlp", [http_input(inputs)],
        outputs=[httpclient.InferRequestedOutput("scores", class_count=2)]), "400")
    assert "timeout" in refused(lambda: client.infer("mlp", [http_input(inputs)], timeout=1), "504")
    client.close()


def test_http_asyncio_every_call(served):
    async def run():
        client = httpaio.InferenceServerClient(url=served.url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert (await client.get_server_metadata())["extensions"] == EXTENSIONS
            assert await client.is_model_ready("mlp", "2")
            assert (await client.get_model_metadata("mlp"))["versions"] == ["1", "2"]
            assert (await client.get_model_config("mlp", "2"))["input"][0]["dims"] == [-1, 4]
            assert len(await client.get_model_repository_index()) == 4
            inputs, want = mlp_scores()
            tensor = httpaio.InferInput("features", list(inputs.shape), "FP32")
            tensor.set_data_from_numpy(inputs)
            result = await client.infer("mlp", [tensor], model_version="2",
                                        request_compression_algorithm="gzip",
                                        response_compression_algorithm="gzip")
            np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
            stats = await client.get_inference_statistics("mlp", "2")
            assert stats["model_stats"][0]["inference_count"] >= 1
            with pytest.raises(InferenceServerException):
                await client.load_model("mlp")
        finally:
            await client.close()

    asyncio.run(run())


# --- tritonclient.grpc -------------------------------------------------------------

def grpc_input(array, datatype="FP32", name="features", module=grpcclient):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_grpc_every_call(served):
    client = grpcclient.InferenceServerClient(url=served.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert list(client.get_server_metadata().extensions) == EXTENSIONS
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mlp", "9")
    metadata = client.get_model_metadata("mlp", "2")
    assert (metadata.platform, list(metadata.versions)) == ("onnxruntime_onnx", ["1", "2"])
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 4])]
    config = client.get_model_config("mlp", "2", as_json=True)["config"]
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == [-1, 4]
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models][:2] == [("all_types", "1", "READY"), ("mlp", "1", "READY")]

    inputs, want = mlp_scores()
    for compression in [None, "gzip", "deflate"]:
        result = client.infer("mlp", [grpc_input(inputs)], model_version="2", request_id="g1",
                              outputs=[grpcclient.InferRequestedOutput("scores")],
                              compression_algorithm=compression)
        assert result.get_response().id == "g1"
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
        assert result.as_numpy("label") is None  # only what was asked for
    # Every element type, bit-exact, through raw_input_contents / raw_output_contents.
    types = {t["name"]: t["datatype"] for t in expected("all_types")["signature"]["inputs"]}
    for case in expected("all_types")["cases"]:
        tensors = []
        for name, tensor in case["inputs"].items():
            dtype = np.object_ if types[name] == "BYTES" else np.dtype(types[name].lower().replace("fp", "float"))
            tensors.append(grpc_input(np.array(tensor["data"], dtype=dtype), types[name], name))
        result = client.infer("all_types", tensors)
        for name, want_output in case["outputs"].items():
            got = result.as_numpy(name)
            if got.dtype == np.object_:
                assert [x.decode() for x in got.flatten()] == [s for row in want_output["data"] for s in row]
            else:
                np.testing.assert_array_equal(got, np.array(want_output["data"], dtype=got.dtype), err_msg=name)
    text = expected("text_tfidf")["cases"][0]
    result = client.infer("text_tfidf", [grpc_input(np.array(text["inputs"]["text"]["data"], dtype=np.object_), "BYTES", "text")])
    assert [x.decode() for x in result.as_numpy("output_label")] == text["outputs"]["output_label"]["data"]
    # The ZipMap output: BYTES, one JSON object per row, ONNX's type in its parameters.
    zipmap = result.get_output("output_probability")
    assert zipmap.parameters["onnx_type"].string_param.startswith("seq(map(")
    rows = [json.loads(x) for x in result.as_numpy("output_probability")]
    assert sorted(rows[0]) == sorted(text["outputs"]["output_probability"]["data"][0])

    stats = client.get_inference_statistics("mlp", "2")
    assert stats.model_stats[0].inference_count >= 3
    assert stats.model_stats[0].inference_stats.compute_infer.count >= 3
    assert "mlp" in [m.name for m in client.get_inference_statistics().model_stats]

    assert "admin" in refused(lambda: client.load_model("mlp"), "StatusCode.INVALID_ARGUMENT")
    refused(lambda: client.unload_model("mlp"), "StatusCode.INVALID_ARGUMENT")
    assert "sequence" in refused(lambda: client.infer("mlp", [grpc_input(inputs)], sequence_id=3),
                                 "StatusCode.INVALID_ARGUMENT")
    refused(lambda: client.infer("mlp", [grpc_input(inputs)], priority=2), "StatusCode.INVALID_ARGUMENT")
    refused(lambda: client.infer("mlp", [grpc_input(inputs)],
                                 outputs=[grpcclient.InferRequestedOutput("scores", class_count=2)]),
            "StatusCode.INVALID_ARGUMENT")
    refused(lambda: client.infer("mlp", [grpc_input(inputs)], timeout=1), "StatusCode.DEADLINE_EXCEEDED")
    refused(lambda: client.get_model_metadata("nope"), "StatusCode.NOT_FOUND")
    refused(lambda: client.infer("mlp", [grpc_input(inputs[:, :3])]), "StatusCode.INVALID_ARGUMENT")
    client.close()


def test_grpc_asyncio_every_call(served):
    async def run():
        client = grpcaio.InferenceServerClient(url=served.grpc_url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert list((await client.get_server_metadata()).extensions) == EXTENSIONS
            assert await client.is_model_ready("mlp", "1")
            assert (await client.get_model_metadata("mlp", "1")).name == "mlp"
            assert (await client.get_model_config("mlp", "1")).config.name == "mlp"
            assert len((await client.get_model_repository_index()).models) == 4
            inputs, want = mlp_scores()
            result = await client.infer("mlp", [grpc_input(inputs, module=grpcaio)], model_version="1")
            np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
            stats = await client.get_inference_statistics("mlp", "1")
            assert stats.model_stats[0].inference_count >= 1
            with pytest.raises(InferenceServerException):
                await client.unload_model("mlp")
        finally:
            await client.close()

    asyncio.run(run())


# --- perf_analyzer ------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_unchanged(served, protocol, tmp_path):
    binary = os.environ.get("PERF_ANALYZER")
    assert binary, "scripts/test-python.sh sets PERF_ANALYZER (tritonclient 2.50.0's perf_analyzer)"
    url = served.url if protocol == "http" else served.grpc_url
    report = tmp_path / "perf.csv"
    run = subprocess.run(
        [binary, "-m", "mlp", "-x", "2", "-u", url, "-i", protocol, "--shape", "features:1,4",
         "--concurrency-range", "2", "--measurement-mode", "count_windows",
         "--measurement-request-count", "200", "--stability-percentage", "50",
         "--max-trials", "6", "-f", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = list(csv.DictReader(report.open()))
    throughput = float(rows[0]["Inferences/Second"])
    print(f"perf_analyzer {protocol}: {throughput:.0f} infer/s at concurrency 2")
    assert throughput > 0


# --- the access policy over gRPC ----------------------------------------------------

def test_grpc_callers_get_the_same_authorization_as_http(served, tmp_path):
    """In trusted-header mode, the x-caller-arn metadata is the caller, and the
    team policy decides over gRPC exactly as over HTTP."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"teams": {
        "a": {"principals": ["arn:aws:iam::111111111111:role/a"], "models": ["mlp"]},
        "b": {"principals": ["arn:aws:iam::111111111111:role/b"], "models": ["text_tfidf"]},
    }}))
    repo = served.process.args[served.process.args.index("--repo") + 1]
    server = Server(repo, tmp_path / "staging", "--grpc-addr", "127.0.0.1:0",
                    "--access-policy", str(policy), "--trust-identity-headers")
    try:
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        team_a = {"x-caller-arn": "arn:aws:iam::111111111111:role/a"}
        team_b = {"x-caller-arn": "arn:aws:iam::111111111111:role/b"}
        inputs, want = mlp_scores()
        result = client.infer("mlp", [grpc_input(inputs)], model_version="1", headers=team_a)
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
        refused(lambda: client.infer("mlp", [grpc_input(inputs)], headers=team_b), "StatusCode.PERMISSION_DENIED")
        refused(lambda: client.get_model_config("mlp", headers=team_b), "StatusCode.PERMISSION_DENIED")
        refused(lambda: client.infer("mlp", [grpc_input(inputs)]), "StatusCode.PERMISSION_DENIED")
        # The all-models statistics and the index show each team only its models.
        assert [m.name for m in client.get_inference_statistics(headers=team_a).model_stats] == ["mlp"]
        assert [m.name for m in client.get_inference_statistics(headers=team_b).model_stats] == []
        assert {m.name for m in client.get_model_repository_index(headers=team_b).models} == {"text_tfidf"}
        client.close()
    finally:
        server.stop()
