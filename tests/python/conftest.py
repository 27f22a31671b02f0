"""Shared by the client tests: one ``model-router serve --grpc-addr`` per test
module, over a repository published from the committed fixtures."""

import subprocess

import numpy as np
import pytest

from test_tritonclient import BINARY, MODELS, Server, expected


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    repo = tmp / "repo"
    for name, version, file in [("mlp", "1", "mlp.onnx"), ("mlp", "2", "mlp.ort"),
                                ("text_tfidf", "1", "text_tfidf.ort"), ("all_types", "1", "all_types.ort")]:
        subprocess.run([str(BINARY), "publish", "--repo", str(repo), "--name", name,
                        "--version", version, str(MODELS / file)],
                       check=True, stdout=subprocess.DEVNULL)
    server = Server(repo, tmp / "staging", "--grpc-addr", "127.0.0.1:0")
    yield server
    server.stop()


def mlp_scores():
    """The first mlp case: its input rows and the scores Python onnxruntime gave."""
    case = expected("mlp")["cases"][0]
    return np.array(case["inputs"]["features"]["data"], dtype=np.float32), \
        np.array(case["outputs"]["scores"]["data"], dtype=np.float32)
