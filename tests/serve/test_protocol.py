"""Open Inference Protocol parsing and encoding (pure functions, no server)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlaas_dask.serve import protocol
from mlaas_dask.serve.errors import BadRequest, PayloadTooLarge

NAMES = ["a", "b", "c"]


def parse(body: dict | bytes, header: str | None = None, max_rows: int = 100):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return protocol.parse_infer_request(raw, header, NAMES, max_rows)


def tensor(**overrides):
    base = {"name": "features", "shape": [2, 3], "datatype": "FP32",
            "data": [1, 2, 3, 4, 5, 6]}
    base.update(overrides)
    return {"inputs": [base]}


def test_json_flat_and_nested_data():
    flat = parse(tensor())
    nested = parse(tensor(data=[[1, 2, 3], [4, 5, 6]]))
    expected = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(flat.matrix, expected)
    np.testing.assert_array_equal(nested.matrix, expected)
    assert flat.matrix.dtype == np.float32


def test_other_numeric_datatypes_are_converted():
    parsed = parse(tensor(datatype="INT64"))
    assert parsed.matrix.dtype == np.float32
    parsed = parse(tensor(datatype="FP64", data=[0.5] * 6))
    assert parsed.matrix[0, 0] == np.float32(0.5)


def test_binary_round_trip_keeps_nan():
    matrix = np.array([[1, np.nan, 3], [4, 5, np.inf]], dtype=np.float32)
    body, headers = protocol.encode_infer_request(matrix, binary=True, request_id="r1")
    parsed = protocol.parse_infer_request(body, headers[protocol.HEADER_LENGTH], NAMES, 10)
    np.testing.assert_array_equal(parsed.matrix, matrix)
    assert parsed.request_id == "r1" and parsed.binary_default


def test_binary_response_layout_and_decode():
    request = protocol.InferRequest(np.zeros((2, 3), np.float32), "x", None, True)
    columns = {"score": np.array([0.25, 0.75], np.float32)}
    body, headers = protocol.encode_infer_response(request, "m", "1", columns)
    size = int(headers[protocol.HEADER_LENGTH])
    header = orjson.loads(body[:size])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert header["id"] == "x"
    decoded = protocol.decode_infer_response(body, headers[protocol.HEADER_LENGTH])
    np.testing.assert_array_equal(decoded["score"], columns["score"])


def test_per_output_binary_flag_and_json_output():
    request = parse({**tensor(), "outputs": [{"name": "score",
                                             "parameters": {"binary_data": False}}]})
    body, headers = protocol.encode_infer_response(
        request, "m", "1", {"score": np.array([0.5, 0.25], np.float32)})
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5, 0.25]


def test_unknown_output_is_named():
    request = parse({**tensor(), "outputs": [{"name": "scores"}]})
    with pytest.raises(BadRequest, match=r"Unknown output 'scores'.*Did you mean 'score'"):
        protocol.encode_infer_response(request, "m", "1", {"score": np.zeros(2, np.float32)})


def test_multiclass_scores_become_one_output_per_class():
    scores = np.array([[0.1, 0.9], [0.6, 0.4]], np.float32)
    columns = protocol.output_columns(scores, ["score_a", "score_b"])
    np.testing.assert_array_equal(columns["score_b"], scores[:, 1])


@pytest.mark.parametrize(
    "body,header,message",
    [
        (b"{not json", None, "The request body is not valid JSON"),
        (b'{"inputs": [{"data": [inf]}]}', None, "infinite ones as Infinity or -Infinity"),
        (b"", None, "The body is empty"),
        (b"[1, 2]", None, "The inference request must be a JSON object, got a list"),
        ({"inputs": []}, None, "needs 'inputs': a list with one input 'features', datatype "
                               "FP32, shape \\[n, 3\\]"),
        (tensor(name="input__0"), None, "Unknown input 'input__0'; expected one input "
                                        "'features'"),
        (tensor(shape=[3, 2]), None, r"has shape \[3, 2\]; expected \[n, 3\]"),
        (tensor(shape=[6], data=[1] * 6), None, r"has shape \[6\]; expected \[n, 3\]"),
        (tensor(shape="2x3"), None, "'shape' must be a list of non-negative integers"),
        (tensor(datatype="BYTES"), None, "datatype 'BYTES' is not supported; use FP32"),
        (tensor(datatype="FLOAT"), None, "datatype 'FLOAT' is not supported"),
        (tensor(data=[1, 2, 3]), None, "'data' holds 3 values but the shape needs 6"),
        (tensor(data=[1, 2, "x", 4, 5, 6]), None, "'data' holds a string but the datatype is "
                                                  "FP32"),
        (tensor(data=[1, 2, None, 4, 5, 6], datatype="INT32"), None,
         "'data' holds null or NaN but the datatype is INT32; send numbers only; "
         "missing values"),
        (tensor(data=[[1, 2, 3], [4, 5]]), None, "nested lists of equal length"),
        (tensor(data="123456"), None, "'data' must be a list of numbers, got a string"),
        (tensor(datatype="INT32", data=[0.5] * 6), None, "numbers with a fraction but the "
                                                        "datatype is INT32"),
        ({"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32"}]}, None,
         "has neither 'data' nor a binary_data_size"),
        (tensor(), "abc", "must be a whole number of bytes"),
        (tensor(), "99999", "says 99999 bytes of JSON but the body has"),
    ],
)
def test_bad_requests_say_what_was_expected(body, header, message):
    with pytest.raises(BadRequest, match=message):
        parse(body, header)


def test_binary_size_mismatches():
    matrix = np.ones((2, 3), np.float32)
    body, headers = protocol.encode_infer_request(matrix)
    size = headers[protocol.HEADER_LENGTH]
    with pytest.raises(BadRequest, match="only 20 bytes of binary data follow"):
        parse(body[:-4], size)
    with pytest.raises(BadRequest, match="4 bytes of binary data that no input claims"):
        parse(body + b"\0\0\0\0", size)
    with pytest.raises(BadRequest, match="has no binary part"):
        parse(body[: int(size)])
    header = orjson.loads(body[: int(size)])
    header["inputs"][0]["parameters"]["binary_data_size"] = 20
    head = orjson.dumps(header)
    with pytest.raises(BadRequest, match=r"need 6 x 4 = 24 bytes"):
        parse(head + body[int(size):], str(len(head)))


def test_too_many_rows_is_413():
    with pytest.raises(PayloadTooLarge, match="holds 2 rows; at most 1 are allowed"):
        parse(tensor(), max_rows=1)
