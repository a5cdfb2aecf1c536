"""NaN in JSON: ``NaN``, ``Infinity``, ``-Infinity`` and ``null`` in float inputs of the infer
and events endpoints, NaN written back in outputs, tritonclient JSON on padded events --
against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re

import awkward as ak
import httpx
import numpy as np
import orjson
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.serve import protocol

from .conftest import LiveServer, Trained


def infer_body(data: str, datatype: str = "FP32", rows: int = 1) -> bytes:
    """An infer request for the 19-feature model whose 'data' is the JSON text ``data``."""
    return (f'{{"inputs": [{{"name": "features", "shape": [{rows}, 19], '
            f'"datatype": "{datatype}", "data": {data}}}]}}').encode()


def matrix_text(matrix: np.ndarray) -> str:
    """The matrix as JSON text with NaN literals, as Python's json module writes it."""
    return json.dumps(matrix.astype(np.float64).tolist())


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_literals_and_null_are_missing_values(live_server: LiveServer, trained: Trained,
                                                  datatype: str):
    bundle = ModelBundle.load(trained.path)
    padded = trained.matrix[:8].copy()
    assert np.isnan(padded).any()  # events without a third jet, without muons
    padded[0, 0] = np.inf
    padded[1, 1] = -np.inf
    if datatype == "FP16":  # keep the values FP16 can hold
        padded = padded.astype(np.float16).astype(np.float32)
    expected = bundle.predict_matrix(padded)
    literal = matrix_text(padded)
    as_null = literal.replace("NaN", "null")
    with httpx.Client(base_url=live_server.url) as http:
        for text in (literal, as_null):
            response = http.post("/v2/models/hep/infer",
                                 content=infer_body(text, datatype, rows=8))
            assert response.status_code == 200, response.text
            scores = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_every_spelling_in_one_payload(live_server: LiveServer, trained: Trained):
    """The literal payload: NaN, Infinity, -Infinity, null, spaces and nesting."""
    bundle = ModelBundle.load(trained.path)
    row = "[NaN, Infinity, -Infinity, null, 1.5, 2, " + ", ".join(["NaN"] * 13) + "]"
    body = infer_body(f"[{row}, {row.replace('null', 'NaN')}]", rows=2)
    values = [np.nan, np.inf, -np.inf, np.nan, 1.5, 2.0] + [np.nan] * 13
    expected = bundle.predict_matrix(np.array([values, values], dtype=np.float32))
    with httpx.Client(base_url=live_server.url) as http:
        response = http.post("/v2/models/hep/infer", content=body)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, atol=1e-6)


def test_events_with_nan_literals_and_null(live_server: LiveServer, trained: Trained):
    bundle = ModelBundle.load(trained.path)
    events = trained.events[:4].to_list()
    events[0]["MET_px"] = float("nan")
    events[1]["MET_py"] = None
    events[2]["Jet_Px"] = [float("nan")] * len(events[2]["Jet_Px"])
    body = json.dumps({"events": events}).encode()
    assert b"NaN" in body and b"null" in body
    with httpx.Client(base_url=live_server.url) as http:
        response = http.post("/v2/models/hep/events", content=body)
    assert response.status_code == 200, response.text
    reference = ak.Array([{**e, "MET_py": np.nan if e["MET_py"] is None else e["MET_py"]}
                          for e in events])
    np.testing.assert_allclose(response.json()["scores"], bundle.predict_events(reference),
                               atol=1e-6)


@pytest.mark.parametrize(
    "body,message",
    [
        (infer_body("[" + ", ".join(["nan"] * 19) + "]"), "Write missing values as NaN or null"),
        (infer_body("[" + ", ".join(["-inf"] * 19) + "]"), "infinite ones as Infinity"),
        (infer_body("[" + ", ".join(["null"] * 19) + "]", "INT32"),
         "holds null or NaN but the datatype is INT32.*missing values need a float "
         "datatype"),
        (infer_body("[" + ", ".join(["NaN"] * 19) + "]", "INT64"),
         "holds null or NaN but the datatype is INT64.*missing values need a float"),
        (infer_body("[NaN, " + ", ".join(['"x"'] * 18) + "]"),
         "holds a string but the datatype is FP32"),
        (infer_body("[NaN, " + "[" * 100_000 + "]" * 100_000 + "]"), "nests lists or objects"),
        (infer_body("[NaN, 1,]"), "not valid JSON: Expecting value"),
    ],
    ids=["lowercase-nan", "lowercase-inf", "null-int", "nan-int", "string", "deep", "comma"],
)
def test_wrong_spellings_and_types_are_named(live_server: LiveServer, body: bytes,
                                             message: str):
    with httpx.Client(base_url=live_server.url) as http:
        response = http.post("/v2/models/hep/infer", content=body)
    assert response.status_code == 400, response.text
    assert re.search(message, response.json()["error"]), response.json()["error"]


def test_tritonclient_json_on_padded_events(live_server: LiveServer, trained: Trained):
    """tritonclient.http with JSON tensors (binary_data=False) on real padded events."""
    import tritonclient.http as triton

    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:200]
    assert np.isnan(matrix).mean() > 0.1
    client = triton.InferenceServerClient(f"127.0.0.1:{live_server.port}")
    try:
        infer_input = triton.InferInput("features", list(matrix.shape), "FP32")
        infer_input.set_data_from_numpy(matrix, binary_data=False)
        outputs = [triton.InferRequestedOutput("score", binary_data=False)]
        result = client.infer("hep", [infer_input], outputs=outputs)
        assert "data" in result.get_response()["outputs"][0]  # JSON, not binary
        np.testing.assert_allclose(result.as_numpy("score"), bundle.predict_matrix(matrix),
                                   atol=1e-6)
    finally:
        client.close()


def test_nan_outputs_are_written_as_nan_and_tritonclient_reads_them():
    """A model output holding NaN and infinities: JSON literals, read back by tritonclient's
    own response parser."""
    from tritonclient.http import InferResult

    request = protocol.InferRequest(np.zeros((4, 3), np.float32))
    scores = np.array([0.5, np.nan, np.inf, -np.inf], np.float32)
    body, headers = protocol.encode_infer_response(request, "m", "1", {"score": scores})
    assert headers["content-type"] == "application/json"
    assert b"[0.5, NaN, Infinity, -Infinity]" in body
    assert b"null" not in body
    result = InferResult.from_response_body(body)
    np.testing.assert_array_equal(result.as_numpy("score"), scores)
    np.testing.assert_array_equal(protocol.decode_infer_response(body, None)["score"], scores)


def test_dumps_leaves_strings_alone():
    """A string that looks like a placeholder or NaN is not touched."""
    data = {"id": "NaN", "name": "mlaas-non-finite-0", "v": np.array([np.nan], np.float32),
            "w": float("-inf"), "ok": [1.0, 2.0]}
    text = protocol.dumps(data)
    assert orjson.loads(text.replace(b"NaN]", b"null]").replace(b"-Infinity", b"null")) == {
        "id": "NaN", "name": "mlaas-non-finite-0", "v": [None], "w": None, "ok": [1.0, 2.0]}


def test_the_fast_nan_path_keeps_strings():
    """NaN literals are read as null for speed, never inside strings: a request id holding
    "NaN" is kept as sent."""
    names = [f"f{i}" for i in range(19)]
    for spacing in ("", " "):
        body = infer_body("[" + f",{spacing}".join(["NaN"] * 18 + ["2.5"]) + "]").replace(
            b'{"inputs"', b'{"id": "NaN, \\"NaN]", "inputs"')
        parsed = protocol.parse_infer_request(body, None, names, 10)
        assert parsed.request_id == 'NaN, "NaN]'
        assert np.isnan(parsed.matrix[0, :18]).all() and parsed.matrix[0, 18] == 2.5
    fast = protocol.loads_tensors(b'{"a": [NaN, 1], "b": "x"}', "body")
    assert fast == {"a": [None, 1], "b": "x"}
    slow = protocol.loads_tensors(b'{"a": [NaN, 1], "b": "NaN"}', "body")
    assert math.isnan(slow["a"][0]) and slow["b"] == "NaN"
