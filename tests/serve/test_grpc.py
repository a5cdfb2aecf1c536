"""KServe v2 / Triton gRPC beside the HTTP server (one uvicorn on 127.0.0.1, gRPC on an
ephemeral port): tritonclient.grpc sync and aio unchanged, typed and raw contents through
the service stub, one repository, batcher, token, limits and metrics shared with HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.serve import ServeConfig, create_app

from .conftest import AUTH, TOKEN, LiveServer, Trained

GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Servers:
    http: LiveServer
    grpc: str  # host:port


def start_both(make_repo: Callable[..., Path], start_server: Callable[..., LiveServer],
               **settings: Any) -> Servers:
    config = ServeConfig(models=make_repo(), threads=2, poll_s=0, grpc_port=0,
                         max_request_rows=5000, max_body_bytes=2_000_000, **settings)
    live = start_server(create_app(config, token=TOKEN))
    port = live.app.state.server.grpc_port
    assert port
    return Servers(live, f"127.0.0.1:{port}")


@pytest.fixture
def servers(make_repo: Callable[..., Path],
            start_server: Callable[..., LiveServer]) -> Servers:
    return start_both(make_repo, start_server)


@pytest.fixture
def triton_grpc(servers: Servers) -> Iterator[Any]:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(servers.grpc)
    try:
        yield client
    finally:
        client.close()


def infer_input(matrix: np.ndarray, datatype: str = "FP32") -> Any:
    import tritonclient.grpc as triton

    tensor = triton.InferInput("features", list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix)
    return tensor


def requested(name: str, **options: Any) -> Any:
    import tritonclient.grpc as triton

    return triton.InferRequestedOutput(name, **options)


def test_tritonclient_grpc_health_metadata_config(triton_grpc: Any, trained: Trained):
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    client = triton_grpc
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("hep") and client.is_model_ready("hep", "1")
    assert not client.is_model_ready("hep", "7") and not client.is_model_ready("nope")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "mlaas_dask" and "model_repository" in server["extensions"]
    meta = client.get_model_metadata("hep", as_json=True)
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "xgboost"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32",
                               "shape": [str(-1), str(trained.spec.n_features)]}]
    assert [o["name"] for o in meta["outputs"]] == ["score"]
    config = client.get_model_config("hep", "1").config
    assert config.max_batch_size == 5000
    assert list(config.input[0].dims) == [trained.spec.n_features]
    assert config.dynamic_batching.preferred_batch_size == [1024]
    as_json = client.get_model_config("hep", as_json=True)["config"]
    json_format.ParseDict(as_json, model_config_pb2.ModelConfig())


def test_tritonclient_grpc_infer_on_padded_events(triton_grpc: Any, trained: Trained):
    import tritonclient.grpc as triton

    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:300]
    assert np.isnan(matrix).any()
    outputs = [triton.InferRequestedOutput("score")]
    result = triton_grpc.infer("hep", [infer_input(matrix)], outputs=outputs,
                               model_version="2", request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("score"), bundle.predict_matrix(matrix),
                               atol=1e-6)
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "2"
    default = triton_grpc.infer("hep", [infer_input(matrix[:1])])  # every output
    np.testing.assert_allclose(default.as_numpy("score"), bundle.predict_matrix(matrix[:1]),
                               atol=1e-6)
    fp64 = triton_grpc.infer("hep", [infer_input(matrix.astype(np.float64), "FP64")])
    np.testing.assert_allclose(fp64.as_numpy("score"), bundle.predict_matrix(matrix),
                               atol=1e-6)


@pytest.mark.parametrize(
    "call,status,message",
    [
        (lambda c, m: c.infer("nope", [infer_input(m)]), "NOT_FOUND",
         "Unknown model 'nope'. Available models: hep"),
        (lambda c, m: c.infer("hep", [infer_input(m)], model_version="latest"),
         "INVALID_ARGUMENT", "Invalid model version 'latest'"),
        (lambda c, m: c.infer("hep", [infer_input(m[:, :5])]), "INVALID_ARGUMENT",
         r"has shape \[4, 5\]; expected \[n, 19\]"),
        (lambda c, m: c.infer("hep", [infer_input(m)], outputs=[
            requested("scores")]),
         "INVALID_ARGUMENT", "Unknown output 'scores'.*Did you mean 'score'"),
        (lambda c, m: c.infer("hep", [infer_input(m)], outputs=[
            requested("score", class_count=1)]),
         "INVALID_ARGUMENT", "classification extension"),
        (lambda c, m: c.infer("hep", [infer_input(np.zeros((5001, 19), np.float32))]),
         "RESOURCE_EXHAUSTED", "holds 5001 rows; at most 5000 are allowed"),
        (lambda c, m: c.infer("hep", [infer_input(np.zeros((30000, 19), np.float32))]),
         "RESOURCE_EXHAUSTED", "larger than max"),
        (lambda c, m: c.unload_model("hep"), "UNAUTHENTICATED", "needs a bearer token"),
        (lambda c, m: c.load_model("hep", headers={"authorization": "Bearer wrong"}),
         "UNAUTHENTICATED", "The bearer token is not valid"),
        (lambda c, m: c.load_model("hep", config="{}", headers=GRPC_AUTH),
         "INVALID_ARGUMENT", r"RepositoryModelLoad parameters \(config\) are not supported"),
        (lambda c, m: c.get_model_config("hep", "9"), "NOT_FOUND",
         "Model 'hep' has no loaded version '9'"),
    ],
    ids=["unknown-model", "bad-version", "shape", "output", "classification", "rows",
         "message-size", "no-token", "wrong-token", "load-config", "config-version"],
)
def test_grpc_errors_carry_the_servers_message(triton_grpc: Any, trained: Trained,
                                               call: Callable[..., Any], status: str,
                                               message: str):
    import re

    import tritonclient.grpc as triton

    with pytest.raises(triton.InferenceServerException) as caught:
        call(triton_grpc, np.nan_to_num(trained.matrix[:4]))
    assert caught.value.status() == f"StatusCode.{status}"
    assert re.search(message, caught.value.message()), caught.value.message()


def test_grpc_shares_repository_and_metrics_with_http(servers: Servers, triton_grpc: Any,
                                                      trained: Trained, bundle_archive: bytes):
    client = triton_grpc
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("hep", "1", "READY"), ("hep", "2", "READY")}
    with httpx.Client(base_url=servers.http.url, timeout=30) as http:
        response = http.post("/v2/repository/models/hep/upload", content=bundle_archive,
                             headers=AUTH)
        assert response.status_code == 201, response.text
        assert client.is_model_ready("hep", "3")  # uploaded over HTTP, served over gRPC
        client.unload_model("hep", headers=GRPC_AUTH)
        assert http.get("/v2/models/hep/ready").status_code == 404  # unloaded over gRPC
        assert not client.is_model_ready("hep")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {m["state"] for m in index} == {"UNAVAILABLE"}
        client.load_model("hep", headers=GRPC_AUTH)
        assert http.get("/v2/models/hep/versions/3/ready").status_code == 200
        client.infer("hep", [infer_input(np.nan_to_num(trained.matrix[:3]))])
        metrics = http.get("/metrics").text
    assert ('mlaas_requests_total{endpoint="grpc_infer",model="hep",status="200",'
            'version="3"} 1.0') in metrics
    assert 'endpoint="grpc_unload",model="",status="200"' in metrics
    assert 'mlaas_events_scored_total{model="hep",version="3"} 3.0' in metrics


def test_tritonclient_grpc_aio_concurrent_requests_are_batched(servers: Servers,
                                                               trained: Trained):
    """32 concurrent single-event requests from the aio client: each gets its own score,
    and the batcher merged some of them (fewer batches than requests)."""
    import tritonclient.grpc.aio as triton_aio

    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:32]
    expected = bundle.predict_matrix(matrix)

    async def run() -> list[np.ndarray]:
        client = triton_aio.InferenceServerClient(servers.grpc)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready("hep")
            results = await asyncio.gather(*[
                client.infer("hep", [infer_input(matrix[i:i + 1])]) for i in range(32)])
            return [r.as_numpy("score") for r in results]
        finally:
            await client.close()

    scores = asyncio.run(run())
    np.testing.assert_allclose(np.concatenate(scores), expected, atol=1e-6)
    with httpx.Client(base_url=servers.http.url) as http:
        metrics = http.get("/metrics").text
    batches = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("mlaas_batch_requests_count"))
    assert 1 <= batches <= 32


def stub(address: str) -> tuple[Any, Any]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def typed_request(datatype: str, field: str, values: list[Any], rows: int,
                  raw: bytes | None = None) -> Any:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="hep")
    tensor = request.inputs.add(name="features", datatype=datatype, shape=[rows, 19])
    if field:
        getattr(tensor.contents, field).extend(values)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def test_typed_contents(servers: Servers, trained: Trained):
    bundle = ModelBundle.load(trained.path)
    matrix = np.nan_to_num(trained.matrix[:5])
    expected = bundle.predict_matrix(matrix)
    channel, service = stub(servers.grpc)
    with channel:
        for datatype, field in (("FP32", "fp32_contents"), ("FP64", "fp64_contents")):
            response = service.ModelInfer(
                typed_request(datatype, field, matrix.ravel().tolist(), 5))
            scores = np.frombuffer(response.raw_output_contents[0], "<f4")
            np.testing.assert_allclose(scores, expected, atol=1e-6)
        whole = np.round(matrix).astype(np.int32)
        response = service.ModelInfer(typed_request("INT32", "int_contents",
                                                    whole.ravel().tolist(), 5))
        np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4"),
                                   bundle.predict_matrix(whole.astype(np.float32)), atol=1e-6)


@pytest.mark.parametrize(
    "request_args,message",
    [
        (("INT8", "int_contents", [300] + [0] * 18, 1),
         "contents.int_contents holds 300, out of the range of INT8"),
        (("FP32", "fp32_contents", [1.0] * 18, 1),
         "contents.fp32_contents holds 18 values but the shape needs 19"),
        (("FP16", "", [], 1), "FP16 tensors have no typed contents; send them in "
                              "raw_input_contents"),
        (("FP32", "", [], 1, b"\0" * 10), "raw_input_contents holds 10 bytes but the shape "
                                          "and datatype need 19 x 4 = 76 bytes"),
        (("FP32", "fp32_contents", [1.0] * 19, 1, b"\0" * 76),
         "has both typed contents and raw_input_contents"),
        (("BYTES", "", [], 1), "datatype 'BYTES' is not supported"),
    ],
    ids=["int8-range", "count", "fp16-typed", "raw-size", "both", "bytes"],
)
def test_bad_contents_are_named(servers: Servers, request_args: tuple, message: str):
    import grpc

    channel, service = stub(servers.grpc)
    with channel, pytest.raises(grpc.RpcError) as caught:
        service.ModelInfer(typed_request(*request_args))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_protected_reads_need_the_token_in_metadata(make_repo: Callable[..., Path],
                                                    start_server: Callable[..., LiveServer],
                                                    trained: Trained):
    import tritonclient.grpc as triton

    servers = start_both(make_repo, start_server, protect_reads=True)
    client = triton.InferenceServerClient(servers.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready()  # health stays open
        matrix = np.nan_to_num(trained.matrix[:2])
        with pytest.raises(triton.InferenceServerException, match="needs a bearer token"):
            client.infer("hep", [infer_input(matrix)])
        result = client.infer("hep", [infer_input(matrix)], headers=GRPC_AUTH)
        assert result.as_numpy("score").shape == (2,)
    finally:
        client.close()


# -- connections and compression ----------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\0\0\0\x04\0\0\0\0\0"  # an HTTP/2 SETTINGS frame without settings
GOAWAY = 7


def read_until_closed(address: str, sent: bytes, wait: float = 60.0) -> bytes:
    """Open a raw connection, send ``sent`` and read until the server closes it (a
    socket timeout after ``wait`` s means it kept the connection open: the test fails)."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(sent)
        sock.settimeout(wait)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def frame_types(data: bytes) -> list[int]:
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length:]
    return types


@pytest.mark.parametrize("sent", [b"", PREFACE[:10]], ids=["nothing", "partial-preface"])
def test_grpc_connection_without_a_preface_is_closed(make_repo: Callable[..., Path],
                                                    start_server: Callable[..., LiveServer],
                                                    sent: bytes):
    servers = start_both(make_repo, start_server, header_timeout_s=0.5)
    read_until_closed(servers.grpc, sent)  # returns: the server cut the connection


def test_idle_grpc_connection_is_closed_with_goaway(make_repo: Callable[..., Path],
                                                    start_server: Callable[..., LiveServer]):
    servers = start_both(make_repo, start_server, keep_alive_s=0.5)
    received = read_until_closed(servers.grpc, PREFACE + EMPTY_SETTINGS)
    assert GOAWAY in frame_types(received)


def test_grpc_connections_in_use_stay_open(make_repo: Callable[..., Path],
                                           start_server: Callable[..., LiveServer],
                                           trained: Trained):
    """Short timeouts close idle connections only: a client keeps working, reconnecting
    when its channel was closed while idle."""
    import time

    import tritonclient.grpc as triton

    servers = start_both(make_repo, start_server, header_timeout_s=0.5, keep_alive_s=0.5)
    client = triton.InferenceServerClient(servers.grpc)
    try:
        matrix = trained.matrix[:3]
        first = client.infer("hep", [infer_input(matrix)]).as_numpy("score")
        time.sleep(1.5)  # the idle connection is closed meanwhile
        again = client.infer("hep", [infer_input(matrix)]).as_numpy("score")
        np.testing.assert_array_equal(first, again)
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(triton_grpc: Any, trained: Trained,
                                          algorithm: str):
    matrix = trained.matrix[:50]
    expected = ModelBundle.load(trained.path).predict_matrix(matrix)
    result = triton_grpc.infer("hep", [infer_input(matrix)], compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("score"), expected, atol=1e-6)


def test_compressed_request_counts_its_decompressed_size(servers: Servers):
    """--max-body-mb (2 MB here) bounds the message after decompression: 3 MB of zeros
    sent gzip-compressed (a few kB) are refused."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    rows = 3_000_000 // (19 * 4)
    request = pb.ModelInferRequest(model_name="hep")
    request.inputs.add(name="features", datatype="FP32", shape=[rows, 19])
    request.raw_input_contents.append(b"\0" * (rows * 19 * 4))
    channel, service = stub(servers.grpc)
    with channel, pytest.raises(grpc.RpcError) as caught:
        service.ModelInfer(request, compression=grpc.Compression.Gzip)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_response_compression(make_repo: Callable[..., Path],
                                   start_server: Callable[..., LiveServer], trained: Trained):
    """--grpc-compression gzip: responses are compressed for clients that accept gzip
    (tritonclient, as every gRPC client, does) and read back unchanged; a client that
    accepts only identity gets them uncompressed. Bytes counted through a TCP proxy."""
    import grpc
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2 as pb

    from servers import FaultProxy

    servers = start_both(make_repo, start_server, grpc_compression="gzip")
    proxy = FaultProxy(int(servers.grpc.rsplit(":", 1)[1])).start()
    rows = 4000  # identical events: identical scores, 16 kB that compress to little
    matrix = np.repeat(np.nan_to_num(trained.matrix[:1]), rows, axis=0)
    expected = ModelBundle.load(trained.path).predict_matrix(matrix)
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{proxy.port}")
        try:
            proxy.reset_counters()
            scores = client.infer("hep", [infer_input(matrix)], compression_algorithm="gzip")
            np.testing.assert_allclose(scores.as_numpy("score"), expected, atol=1e-6)
            compressed = proxy.bytes_down
        finally:
            client.close()
        request = pb.ModelInferRequest(model_name="hep")
        request.inputs.add(name="features", datatype="FP32", shape=[rows, 19])
        request.raw_input_contents.append(matrix.astype("<f4").tobytes())
        identity_only = [("grpc.compression_enabled_algorithms_bitset", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=identity_only) as channel:
            from tritonclient.grpc import service_pb2_grpc

            proxy.reset_counters()
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            plain = proxy.bytes_down
        np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4"),
                                   expected, atol=1e-6)
    finally:
        proxy.close()
    assert plain > 4 * rows  # the scores as they are
    assert compressed < plain / 4


def test_unknown_grpc_compression_is_refused(tmp_path: Path):
    from mlaas_dask.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--grpc-compression.*none, gzip, deflate, not 'br'"):
        ServeConfig(models=tmp_path, grpc_compression="br")
