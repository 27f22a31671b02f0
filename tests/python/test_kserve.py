"""kserve's own clients, unchanged, against the real server: its REST and
gRPC clients (``InferenceRESTClient``, ``InferenceGRPCClient``) with its typed
``InferRequest``, whose ``to_rest()`` always puts ``model_name`` in the body.

Runs in a pytest of its own (scripts/test-python.sh): kserve and
tritonclient.grpc both register the ``inference.*`` protobuf messages, which
protobuf refuses in one process.
"""

import asyncio

import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from conftest import mlp_scores


def kserve_request(binary):
    inputs, _ = mlp_scores()
    tensor = InferInput(name="features", shape=list(inputs.shape), datatype="FP32")
    tensor.set_data_from_numpy(inputs, binary_data=binary)
    return InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k1")


@pytest.mark.parametrize("binary", [False, True], ids=["typed", "binary"])
def test_kserve_rest_client_with_its_typed_request(served, binary):
    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        base = f"http://{served.url}"
        try:
            assert await client.is_server_live(base)
            assert await client.is_server_ready(base)
            assert await client.is_model_ready(base, "mlp")
            response = await client.infer(base, kserve_request(binary), model_name="mlp")
            assert response.model_name == "mlp" and response.id == "k1"
            scores = next(o for o in response.outputs if o.name == "scores").as_numpy()
            np.testing.assert_allclose(scores, mlp_scores()[1], rtol=1e-5, atol=1e-6)
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("binary", [False, True], ids=["typed", "raw"])
def test_kserve_grpc_client_with_its_typed_request(served, binary):
    async def run():
        client = InferenceGRPCClient(url=served.grpc_url)
        try:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready("mlp")
            response = await client.infer(kserve_request(binary))
            assert response.model_name == "mlp" and response.id == "k1"
            scores = next(o for o in response.outputs if o.name == "scores").as_numpy()
            np.testing.assert_allclose(scores, mlp_scores()[1], rtol=1e-5, atol=1e-6)
        finally:
            await client.close()

    asyncio.run(run())
