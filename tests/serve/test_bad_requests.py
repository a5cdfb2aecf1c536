"""Requests that once got a 500 or a silently wrong answer, over real HTTP (uvicorn on
127.0.0.1): each is now a 4xx whose message names what is wrong, and the server keeps
serving. Names and versions are whole-string matches; messages never show server paths."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from mlaas_dask.serve import protocol

from .conftest import AUTH, LiveServer, tar_bytes
from .test_app import F, event
from .test_uploads import _wait_for_metric

INFER = "/v2/models/hep/infer"


def tensor(shape: Any, data: Any = None, datatype: str = "FP32", **extra: Any) -> dict:
    entry: dict[str, Any] = {"name": "features", "shape": shape, "datatype": datatype}
    if data is not None:
        entry["data"] = data
    return {"inputs": [entry], **extra}


def binary(shape: list[int], blob: bytes, datatype: str = "FP32") -> tuple[bytes, dict]:
    header = orjson.dumps({"inputs": [{"name": "features", "shape": shape, "datatype": datatype,
                                       "parameters": {"binary_data_size": len(blob)}}]})
    return header + blob, {protocol.HEADER_LENGTH: str(len(header)),
                           "content-type": "application/octet-stream"}


@pytest.fixture
def http(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield client
        # whatever the test sent, the server still serves
        assert client.post("/v2/models/hep/events", json={"events": [event()]}).is_success


def error_of(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


ROW = [1.0] * F
BAD = [
    # outputs[i].parameters not an object
    (tensor([1, F], ROW, outputs=[{"name": "score", "parameters": ["binary_data"]}]),
     r"^outputs\[0\]\.parameters must be a JSON object, got a list\.$"),
    (tensor([1, F], ROW, outputs=[{"name": "score", "parameters": "yes"}]),
     r"outputs\[0\]\.parameters must be a JSON object, got a string"),
    # zero-element shapes with a dimension >= 2**63; more than 64 dimensions
    (tensor([2**63, 0], []), r"has shape \[9223372036854775808, 0\]; expected \[n, 19\]"),
    (tensor([0, 2**63], []), r"has shape \[0, 9223372036854775808\]; expected \[n, 19\]"),
    (tensor([2**64 - 1, 0, 0], []), r"has shape \[18446744073709551615, 0, 0\]"),
    (tensor([1] * 65, [0.0]), r"has shape of 65 dimensions; expected \[n, 19\]"),
    (tensor([0] * 70, []), r"has shape of 70 dimensions"),
    # a numeric id (the protocol's id is a string)
    (tensor([1, F], ROW, id=7), r"^The request 'id' must be a string, got a number\.$"),
    (tensor([1, F], ROW, id={"a": 1}), r"The request 'id' must be a string, got an object"),
    (tensor([1, F], ROW, parameters=[1]), r"The request 'parameters' must be a JSON object"),
    ({"inputs": [{"name": "features", "shape": [1, F], "datatype": "FP32", "data": ROW,
                  "parameters": "x"}]}, r"Input 'features': 'parameters' must be a JSON object"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[m[:30] for _, m in BAD])
def test_malformed_requests_are_400(http: httpx.Client, body: dict, message: str):
    assert re.search(message, error_of(http.post(INFER, json=body))), message


@pytest.mark.parametrize("shape", [[2**63, 0], [0, 2**63], [1] * 65])
def test_binary_shapes_are_checked_before_the_data(http: httpx.Client, shape: list[int]):
    content, headers = binary(shape, b"")
    assert "has shape" in error_of(http.post(INFER, content=content, headers=headers))


INTEGERS = {"INT8": (-128, 127), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
            "INT64": (-2**63, 2**63 - 1), "UINT8": (0, 255), "UINT16": (0, 2**16 - 1),
            "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1)}


@pytest.mark.parametrize("datatype", list(INTEGERS))
def test_integers_out_of_their_datatype_are_refused(http: httpx.Client, datatype: str):
    """INT8 300 and UINT8 -1 used to wrap around and be scored; each integer type now takes
    exactly its range (both ends accepted, one beyond refused, naming input and type)."""
    low, high = INTEGERS[datatype]
    ok = http.post(INFER, json=tensor([2, F], [low] * F + [high] * F, datatype))
    assert ok.status_code == 200, ok.text
    for value in (low - 1, high + 1):
        message = error_of(http.post(INFER, json=tensor([1, F], [value] * F, datatype)))
        assert message.startswith((f"Input 'features': 'data' holds {value}",
                                   f"Input 'features': 'data' holds {float(value)}")), message
        assert f"out of the range of {datatype} ({low} to {high})" in message


def test_int8_300_and_uint8_minus_one(http: httpx.Client):
    assert error_of(http.post(INFER, json=tensor([1, F], [300] + [0] * (F - 1), "INT8"))) == (
        "Input 'features': 'data' holds 300, out of the range of INT8 (-128 to 127); declare "
        "a wider datatype, or FP32.")
    assert "holds -1, out of the range of UINT8 (0 to 255)" in error_of(
        http.post(INFER, json=tensor([1, F], [-1] + [0] * (F - 1), "UINT8")))


@pytest.mark.parametrize("datatype,value,message", [
    ("BOOL", 2, "'data' holds a number but the datatype is BOOL"),
    ("BOOL", 1, "'data' holds a number but the datatype is BOOL"),
    ("FP16", 70000.0, "70000.0 is beyond the range of FP16"),
    ("FP32", 1e39, "1e+39 is beyond the range of FP32"),
    ("FP64", 1e300, "1e+300 is beyond the range of the model's FP32 input"),
    ("INT32", 1.5, "numbers with a fraction but the datatype is INT32"),
])
def test_bools_and_floats_out_of_range(http: httpx.Client, datatype: str, value: Any,
                                       message: str):
    assert message in error_of(http.post(INFER, json=tensor([1, F], [value] * F, datatype)))


def test_bool_and_fp64_in_range_are_scored(http: httpx.Client):
    for datatype, values in (("BOOL", [True, False] * 9 + [True]), ("FP64", [1e30] * F)):
        response = http.post(INFER, json=tensor([1, F], values, datatype))
        assert response.status_code == 200, response.text


def test_binary_fp64_beyond_fp32_is_refused(http: httpx.Client):
    content, headers = binary([1, F], np.full(F, 1e300, "<f8").tobytes(), "FP64")
    assert "beyond the range of the model's FP32 input" in error_of(
        http.post(INFER, content=content, headers=headers))


def test_string_id_is_echoed_exactly(http: httpx.Client):
    body = http.post(INFER, json=tensor([1, F], ROW, id="run-7 \u00e9")).json()
    assert body["id"] == "run-7 \u00e9"


def test_jagged_values_beyond_int64_are_scored_as_floats(http: httpx.Client):
    """All jagged values >= 2**63 (numpy makes them uint64, which reached awkward's sum
    kernel): they are numbers, read as floats like any beyond 64 bits."""
    big = [2**63, 2**63 + 1]
    response = http.post("/v2/models/hep/events", json={"events": [event(
        Jet_Px=big, Jet_Py=big, Jet_E=big, Jet_btag=big)]})
    assert response.status_code == 200, response.text
    assert len(response.json()["scores"]) == 1


def test_client_disconnecting_mid_body_is_a_client_abort(live_server: LiveServer,
                                                         caplog: pytest.LogCaptureFixture):
    caplog.set_level("INFO", logger="mlaas_dask.serve")
    body = orjson.dumps(tensor([1, F], ROW))
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 100}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(head.encode() + body)
    metrics = _wait_for_metric(live_server, 'endpoint="infer",model="hep",status="499"')
    assert 'status="500"' not in metrics
    records = [r for r in caplog.records if r.name == "mlaas_dask.serve"]
    assert [r.levelname for r in records if "disconnected" in r.getMessage()] == ["INFO"]
    assert not [r for r in records if r.levelno >= 40]


# -- names and versions ---------------------------------------------------------------


@pytest.mark.parametrize("path,message", [
    ("/v2/repository/models/nl%0A/upload", r"Invalid model name 'nl\\n'"),
    ("/v2/repository/models/hep/upload?version=2%0A", r"Invalid model version '2\\n'"),
    ("/v2/repository/models/nl%0A/load", r"Invalid model name 'nl\\n'"),
    ("/v2/repository/models/hep%0A/unload", r"Invalid model name 'hep\\n'"),
])
def test_names_and_versions_ending_in_a_newline_are_refused(http: httpx.Client, path: str,
                                                            message: str,
                                                            bundle_archive: bytes):
    content = bundle_archive if path.endswith("upload") else b""
    assert re.search(message, error_of(http.post(path, content=content, headers=AUTH))), message
    assert re.search(r"Invalid model version '2\\n'",
                     error_of(http.get("/v2/models/hep/versions/2%0A")))
    assert re.search(r"Invalid model name 'hep\\n'",
                     error_of(http.delete("/v2/repository/models/hep%0A", headers=AUTH)))


def test_folders_with_a_newline_are_not_models(live_server: LiveServer, http: httpx.Client,
                                              trained):
    import shutil

    root: Path = live_server.app.state.server.config.models
    shutil.copytree(trained.path, root / "nl\n" / "1")
    shutil.copytree(trained.path, root / "hep" / "2\n")
    assert http.post("/v2/repository/models/hep/load", headers=AUTH).json() == {
        "name": "hep", "versions": ["1", "2"]}
    index = {(r["name"], r["version"]) for r in http.post("/v2/repository/index").json()}
    assert index == {("hep", "1"), ("hep", "2")}


def test_messages_name_bundles_relative_to_the_repository(live_server: LiveServer,
                                                          http: httpx.Client, trained):
    root: Path = live_server.app.state.server.config.models
    (root / "hep" / "2" / "features.json").write_text("{broken")
    message = error_of(http.post("/v2/repository/models/hep/load", headers=AUTH))
    assert "Model bundle hep/2: features.json is invalid" in message
    members = {f"b/{p.name}": p.read_bytes() for p in trained.path.iterdir()}
    members["b/metadata.json"] = b'{"format": "other"}'
    upload = error_of(http.post("/v2/repository/models/x/upload", content=tar_bytes(members),
                                headers=AUTH))
    assert upload.startswith("<upload>/metadata.json does not mark an mlaas_dask bundle")
    index = http.post("/v2/repository/index").json()
    for text in (message, upload, str(index)):
        assert str(root) not in text and "/tmp" not in text
