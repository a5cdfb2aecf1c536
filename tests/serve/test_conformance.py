"""Protocol conformance against a real uvicorn on 127.0.0.1: compressed request bodies
(gzip, deflate; limits counted after decompression; a gzip bomb refused) and the
classification extension refused with a message."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.serve import ServeConfig, create_app

from .conftest import TOKEN, LiveServer, Trained

LIMIT = 1_000_000


@pytest.fixture
def small_limit_server(make_repo: Callable[..., Path],
                       start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server that accepts at most 1 MB per request body."""
    app = create_app(ServeConfig(models=make_repo(), threads=1, poll_s=0,
                                 max_body_bytes=LIMIT), token=TOKEN)
    return start_server(app)


def infer_json(matrix: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": list(matrix.shape),
                                   "datatype": "FP32",
                                   "data": matrix.astype(np.float64).ravel().tolist()}]}
                      ).encode()


COMPRESSORS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # the zlib format, as RFC 9110 says
    "raw-deflate": lambda data: zlib.compress(data, wbits=-15),
}


@pytest.mark.parametrize("how", list(COMPRESSORS))
def test_compressed_bodies_are_read(small_limit_server: LiveServer, trained: Trained,
                                    how: str):
    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:50]
    encoding = how.removeprefix("raw-")
    body = COMPRESSORS[how](infer_json(matrix))
    with httpx.Client(base_url=small_limit_server.url) as http:
        response = http.post("/v2/models/hep/infer", content=body,
                             headers={"Content-Encoding": encoding})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["outputs"][0]["data"],
                                   bundle.predict_matrix(matrix), atol=1e-6)
        events = json.dumps({"events": trained.events[:5].to_list()}).encode()
        response = http.post("/v2/models/hep/events", content=COMPRESSORS[how](events),
                             headers={"Content-Encoding": encoding})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["scores"],
                                   bundle.predict_events(trained.events[:5]), atol=1e-6)


def test_gzip_bomb_is_refused_after_decompression(small_limit_server: LiveServer):
    """50 MB of spaces inside a valid request: about 50 kB of gzip, under the 1 MB limit as
    sent, refused with 413 once it decompresses past the limit."""
    bomb = gzip.compress(b'{"inputs": [' + b" " * 50_000_000 + b"]}", compresslevel=9)
    assert len(bomb) < LIMIT // 10
    with httpx.Client(base_url=small_limit_server.url) as http:
        response = http.post("/v2/models/hep/infer", content=bomb,
                             headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413, response.text
        assert "decompresses to more than 1000000 bytes" in response.json()["error"]
        # the server still answers
        assert http.get("/v2/health/ready").status_code == 200
        # just under the limit once decompressed: read
        fits = gzip.compress(b'{"inputs": [' + b" " * (LIMIT - 100) + b"]}")
        response = http.post("/v2/models/hep/infer", content=fits,
                             headers={"Content-Encoding": "gzip"})
        assert response.status_code == 400
        assert "needs 'inputs'" in response.json()["error"]


@pytest.mark.parametrize(
    "body,encoding,status,message",
    [
        (b"not gzip at all", "gzip", 400, "not valid gzip data"),
        (gzip.compress(b'{"inputs": []}')[:-12], "gzip", 400, "ends before its gzip stream"),
        (b"{}", "br", 415, "Content-Encoding 'br' is not supported; send the body "
                           "uncompressed or as gzip, deflate"),
    ],
    ids=["garbage", "truncated", "brotli"],
)
def test_bad_compressed_bodies_are_named(live_server: LiveServer, body: bytes, encoding: str,
                                         status: int, message: str):
    with httpx.Client(base_url=live_server.url) as http:
        response = http.post("/v2/models/hep/infer", content=body,
                             headers={"Content-Encoding": encoding})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(live_server: LiveServer, trained: Trained,
                                          algorithm: str):
    import tritonclient.http as triton

    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:100]
    client = triton.InferenceServerClient(f"127.0.0.1:{live_server.port}")
    try:
        for binary in (True, False):
            infer_input = triton.InferInput("features", list(matrix.shape), "FP32")
            infer_input.set_data_from_numpy(matrix, binary_data=binary)
            result = client.infer("hep", [infer_input],
                                  request_compression_algorithm=algorithm)
            np.testing.assert_allclose(result.as_numpy("score"),
                                       bundle.predict_matrix(matrix), atol=1e-6)
    finally:
        client.close()


def test_classification_is_refused_with_a_message(live_server: LiveServer, trained: Trained):
    import tritonclient.http as triton

    matrix = trained.matrix[:4]
    client = triton.InferenceServerClient(f"127.0.0.1:{live_server.port}")
    try:
        infer_input = triton.InferInput("features", list(matrix.shape), "FP32")
        infer_input.set_data_from_numpy(matrix)
        outputs = [triton.InferRequestedOutput("score", class_count=2)]
        with pytest.raises(triton.InferenceServerException,
                           match=r"classification extension \(class_count\), which this server "
                                 r"does not support") as caught:
            client.infer("hep", [infer_input], outputs=outputs)
        assert caught.value.status() == "400"
    finally:
        client.close()
