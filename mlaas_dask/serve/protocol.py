"""Open Inference Protocol (KServe v2) REST: JSON tensors and the binary tensor extension.

An inference request is a JSON object; with the binary tensor data extension (what
``tritonclient.http`` sends by default) the JSON header is followed in the same body by the
raw little-endian bytes of the tensors, and the ``Inference-Header-Content-Length`` HTTP
header says where the JSON ends. Responses use the same layout when binary outputs are
asked for (``"binary_data": true`` on an output, or ``"binary_data_output": true`` on the
request).

These functions are pure (bytes and numpy in, bytes and numpy out) and are shared by the
server and by :mod:`mlaas_dask.client`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from mlaas_dask.errors import did_you_mean
from mlaas_dask.serve.errors import BadRequest, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
#: the model input every bundle exposes through the protocol
INPUT_NAME = "features"

#: protocol datatype -> little-endian numpy dtype (BYTES is not a number and is refused)
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}

#: the datatypes in which null, NaN and Infinity are values
FLOAT_TYPES = ("FP16", "FP32", "FP64")


@dataclass
class InferRequest:
    """A parsed inference request.

    Attributes
    ----------
    matrix
        The ``features`` input as float32, shape ``(n, F)``.
    request_id
        The client's ``id``, echoed in the response.
    outputs
        Requested output names with their binary flag, or ``None`` for all outputs.
    binary_default
        Whether outputs without their own flag are returned as binary.
    """

    matrix: np.ndarray
    request_id: str | None = None
    outputs: list[tuple[str, bool | None]] | None = None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


# -- JSON ---------------------------------------------------------------------------------


def loads(body: bytes | memoryview, what: str = "request body") -> Any:
    """Parse JSON with a message that says what is wrong.

    The literals ``NaN``, ``Infinity`` and ``-Infinity`` (what Python's json module and
    tritonclient write for missing and infinite values) are read as floats: orjson refuses
    them, so a body holding them is parsed again by the standard library.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        at = bytes(body[err.pos:err.pos + 9]) if err.pos is not None else b""
        if at.startswith(_CONSTANTS):
            return _loads_constants(body, what)
        hint = ""
        if at.lower().startswith((b"nan", b"inf", b"-inf")):
            hint = " Write missing values as NaN or null, infinite ones as Infinity or -Infinity."
        elif not body:
            hint = " The body is empty."
        raise BadRequest(f"The {what} is not valid JSON: {err}.{hint}") from None


#: the non-standard literals accepted in numbers (Python's json module reads them)
_CONSTANTS = (b"NaN", b"Infinity", b"-Infinity")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def loads_tensors(body: bytes | memoryview, what: str) -> Any:
    """:func:`loads` for inference requests, fast with NaN padding.

    Padded events make JSON tensors full of ``NaN``, which the standard library reads 8x
    slower than orjson: when no string holds "NaN" and no ``Infinity`` is present, the
    literals are replaced by ``null`` (NaN in a float tensor too) and orjson parses the body.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = bytes(body)
        if (b"NaN" in raw and b"Infinity" not in raw
                and not any(b"NaN" in m.group() for m in _JSON_STRING.finditer(raw))):
            try:
                return orjson.loads(raw.replace(b"NaN", b"null"))
            except orjson.JSONDecodeError:
                pass  # another mistake: the standard path says which
        return loads(raw, what)


def _loads_constants(body: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(body))
    except json.JSONDecodeError as err:
        raise BadRequest(f"The {what} is not valid JSON: {err}.") from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise BadRequest(f"The {what} holds a number that cannot be read: {err}.") from None
    except RecursionError:
        raise BadRequest(f"The {what} nests lists or objects too deeply.") from None


def dumps(data: Any) -> bytes:
    """Serialise to JSON bytes (numpy arrays included).

    Non-finite floats are written as ``NaN``, ``Infinity`` and ``-Infinity`` (as Python's
    json module and Triton do, and tritonclient reads), not as ``null``.
    """
    holes: dict[str, Any] = {}
    marked = _mark_non_finite(data, holes)
    text = orjson.dumps(marked, option=orjson.OPT_SERIALIZE_NUMPY)
    for key, value in holes.items():
        listed = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
        text = text.replace(orjson.dumps(key), json.dumps(listed).encode())
    return text


def _mark_non_finite(data: Any, holes: dict[str, Any]) -> Any:
    """``data`` with each float (array) holding NaN or infinity replaced by a unique key
    string, recorded in ``holes``; ``data`` itself when there is none."""
    if isinstance(data, dict):
        items = {k: _mark_non_finite(v, holes) for k, v in data.items()}
        return items if any(items[k] is not v for k, v in data.items()) else data
    if isinstance(data, list):
        values = [_mark_non_finite(v, holes) for v in data]
        return values if any(a is not b for a, b in zip(values, data, strict=True)) else data
    finite = (np.isfinite(data).all() if isinstance(data, np.ndarray) and data.dtype.kind == "f"
              else math.isfinite(data) if isinstance(data, (float, np.floating)) else True)
    if finite:
        return data
    key = f"mlaas-non-finite-{secrets.token_hex(8)}-{len(holes)}"
    holes[key] = data
    return key


def _expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {kind_of(value)}.")
    return value


def kind_of(value: Any) -> str:
    """How a JSON value is named in error messages ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- requests -----------------------------------------------------------------------------


def split_binary(body: bytes, header_length: str | None) -> tuple[Any, memoryview | None]:
    """The JSON header and the binary part of a body (``None`` when there is none)."""
    if header_length is None:
        return loads(body), None
    return _split(body, header_length)


def _split(body: bytes, header_length: str) -> tuple[Any, memoryview]:
    try:
        size = int(header_length)
    except ValueError:
        raise BadRequest(
            f"The {HEADER_LENGTH} header must be a whole number of bytes, not "
            f"{header_length!r}."
        ) from None
    if not 0 <= size <= len(body):
        raise BadRequest(
            f"The {HEADER_LENGTH} header says {size} bytes of JSON but the body has "
            f"{len(body)} bytes."
        )
    view = memoryview(body)
    return loads(view[:size], "JSON header of the request"), view[size:]


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    feature_names: Sequence[str],
    max_rows: int,
) -> InferRequest:
    """Parse and check an inference request against a model with ``feature_names``.

    Raises
    ------
    BadRequest
        With a message naming the expected input, shape and datatype.
    PayloadTooLarge
        When the request holds more than ``max_rows`` rows.
    """
    if header_length is None:
        header, binary = loads_tensors(body, "request body"), None
    else:
        header, binary = _split(body, header_length)
    header = _expect_object(header, "The inference request")
    inputs = header.get("inputs")
    n_features = len(feature_names)
    expected = f"one input {INPUT_NAME!r}, datatype FP32, shape [n, {n_features}]"
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(f"The inference request needs 'inputs': a list with {expected}.")
    if len(inputs) != 1:
        raise BadRequest(f"The inference request has {len(inputs)} inputs; expected {expected}.")
    tensor = _expect_object(inputs[0], "inputs[0]")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise BadRequest(f"Unknown input {name!r}; expected {expected}.")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        # the protocol's id is a string; Triton refuses other types the same way
        raise BadRequest(f"The request 'id' must be a string, got {kind_of(request_id)}.")
    shape = _declared_shape(tensor)
    check_shape(shape, n_features, max_rows)
    matrix, used = _read_tensor(tensor, shape, binary, 0)
    if binary is not None and used != len(binary):
        raise BadRequest(
            f"The body has {len(binary) - used} bytes of binary data that no input claims "
            "(check each input's binary_data_size)."
        )
    parameters = _expect_object(header.get("parameters") or {}, "The request 'parameters'")
    return InferRequest(
        matrix=matrix,
        request_id=request_id,
        outputs=_requested_outputs(header.get("outputs")),
        binary_default=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _declared_shape(tensor: Mapping[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        shown = repr(shape) if len(repr(shape)) <= 80 else repr(shape)[:80] + "..."
        raise BadRequest(
            f"Input {tensor.get('name')!r}: 'shape' must be a list of non-negative integers, "
            f"e.g. [n, F]; got {shown}."
        )
    return shape


def check_shape(shape: list[int], n_features: int, max_rows: int) -> None:
    """The declared shape, checked before any data is read: [n, F], n within the limit.

    Raises
    ------
    BadRequest
        A shape other than ``[n, n_features]``.
    PayloadTooLarge
        More than ``max_rows`` rows.
    """
    if len(shape) != 2 or shape[1] != n_features:
        shown = str(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
        raise BadRequest(
            f"Input {INPUT_NAME!r} has shape {shown}; expected [n, {n_features}] "
            f"(n events, {n_features} features each)."
        )
    if shape[0] > max_rows:
        raise PayloadTooLarge(
            f"The request holds {shape[0]} rows; at most {max_rows} are allowed per "
            "request. Split it into smaller requests."
        )


def _read_tensor(
    tensor: Mapping[str, Any], shape: list[int], binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """The tensor as float32 in its (checked) ``shape``, and the binary bytes it used."""
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(datatype, str):
        raise BadRequest(
            f"Input {name!r}: datatype {datatype!r} is not supported; use FP32 (or another "
            f"numeric type: {', '.join(DATATYPES)})."
        )
    count = math.prod(shape)
    parameters = _expect_object(tensor.get("parameters") or {}, f"Input {name!r}: 'parameters'")
    size = parameters.get("binary_data_size")
    if size is not None:
        array = _binary_data(name, size, binary, offset, count, dtype)
        used = int(size)
    else:
        if "data" not in tensor:
            raise BadRequest(
                f"Input {name!r} has neither 'data' nor a binary_data_size parameter."
            )
        array = _json_data(name, tensor["data"], count, dtype, datatype)
        used = 0
    return as_matrix(name, array, shape), used


def as_matrix(name: Any, array: np.ndarray, shape: list[int]) -> np.ndarray:
    """A tensor's values (flat, in its datatype) as the model's float32 matrix.

    Raises
    ------
    BadRequest
        For FP64 values beyond the range of float32.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = array.reshape(shape).astype(np.float32, copy=False)
    if array.dtype == np.float64 and array.size:
        _check_fits(name, array, matrix, "the model's FP32 input")
    return matrix


def _check_fits(name: Any, values: np.ndarray, converted: np.ndarray, what: str) -> None:
    """Refuse finite ``values`` that became infinite in ``converted``."""
    overflow = np.isinf(converted.reshape(-1)) & np.isfinite(values.reshape(-1))
    if overflow.any():
        value = _python(values.reshape(-1)[np.argmax(overflow)])
        raise BadRequest(f"Input {name!r}: {value!r} is beyond the range of {what}.")


def _binary_data(
    name: Any, size: Any, binary: memoryview | None, offset: int, count: int,
    dtype: np.dtype[Any],
) -> np.ndarray:
    if binary is None:
        raise BadRequest(
            f"Input {name!r} has binary_data_size but the request has no binary part (the "
            f"{HEADER_LENGTH} header is missing)."
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"Input {name!r}: binary_data_size must be a byte count, not {size!r}.")
    if size != count * dtype.itemsize:
        raise BadRequest(
            f"Input {name!r}: binary_data_size is {size} bytes but the shape and datatype "
            f"need {count} x {dtype.itemsize} = {count * dtype.itemsize} bytes."
        )
    if offset + size > len(binary):
        raise BadRequest(
            f"Input {name!r}: binary_data_size is {size} bytes but only "
            f"{len(binary) - offset} bytes of binary data follow the JSON header."
        )
    return np.frombuffer(binary[offset:offset + size], dtype=dtype)


def _json_data(
    name: Any, data: Any, count: int, dtype: np.dtype[Any], datatype: str
) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"Input {name!r}: 'data' must be a list of numbers, got {kind_of(data)}.")
    fast = _float_data(data, count) if datatype in FLOAT_TYPES else None
    if fast is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = fast.astype(dtype, copy=False)
        _check_fits(name, fast, converted, datatype)
        return converted
    try:
        array = np.array(data)
    except (ValueError, TypeError):
        raise BadRequest(
            f"Input {name!r}: 'data' must be a flat list of numbers or nested lists of equal "
            "length (row-major)."
        ) from None
    numbers = array.dtype.kind in "iuf" or (
        array.dtype.kind == "O" and _only_numbers(array, datatype))
    if array.size and not (array.dtype.kind == "b" if datatype == "BOOL" else numbers):
        bad = _first_bad(data, datatype) or "values of mixed kinds"
        bad = "null or NaN" if bad == "null" else bad  # NaN may have been read as null
        missing = (" (null, NaN, Infinity and -Infinity are read as floats)"
                   if datatype in FLOAT_TYPES else "; missing values need a float datatype")
        raise BadRequest(
            f"Input {name!r}: 'data' holds {bad} but the datatype is {datatype}; send "
            f"numbers only{missing}."
        )
    if array.size != count:
        raise BadRequest(
            f"Input {name!r}: 'data' holds {array.size} values but the shape needs {count}."
        )
    if dtype.kind in "iu" and array.size:
        return _integers(name, data, array.reshape(-1), dtype, datatype)
    if array.dtype.kind == "O":  # null (NaN) or integers beyond 64 bits: as floats
        array = np.array(data, dtype=np.float64)
    array = array.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype, copy=False)
    if dtype.kind == "f" and array.size:
        _check_fits(name, array, converted, datatype)
    return converted


def _integers(name: Any, data: list[Any], array: np.ndarray, dtype: np.dtype[Any],
              datatype: str) -> np.ndarray:
    """Integer data, exactly: each value a JSON integer within the datatype's range (300
    is not an INT8, -1 not a UINT8; nothing wraps around)."""
    if array.dtype.kind not in "iu":
        # floats, or integers numpy could not keep in one integer type ([0, 2**64 - 1]
        # becomes float64): look at the values themselves
        values = np.array(data, dtype=object).reshape(-1)
        fraction = next((v for v in values if isinstance(v, float)), None)
        if fraction is not None:
            if not fraction.is_integer() or abs(fraction) < 2**63:
                raise BadRequest(
                    f"Input {name!r}: 'data' holds numbers with a fraction but the datatype "
                    f"is {datatype}; declare FP32 for real numbers."
                )
            _out_of_range(name, fraction, dtype, datatype)  # an integer beyond 64 bits
        array = values
    info = np.iinfo(dtype)
    low, high = (_python(v) for v in (array.min(), array.max()))  # exact comparisons
    if low < info.min or high > info.max:
        _out_of_range(name, low if low < info.min else high, dtype, datatype)
    return array.astype(dtype)


def _out_of_range(name: Any, value: Any, dtype: np.dtype[Any], datatype: str) -> None:
    info = np.iinfo(dtype)
    raise BadRequest(
        f"Input {name!r}: 'data' holds {value}, out of the range of {datatype} "
        f"({info.min} to {info.max}); declare a wider datatype, or FP32."
    )


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _float_data(data: list[Any], count: int) -> np.ndarray | None:
    """Float data, flat or one level nested, of numbers and nulls (NaN) only, as float64;
    ``None`` for anything else (the general path then names the problem)."""
    flat = list(chain.from_iterable(data)) if data and type(data[0]) is list else data
    if len(flat) != count or not set(map(type, flat)) <= _FLOAT_DATA_TYPES:
        return None
    return np.array(flat, dtype=np.float64)


_FLOAT_DATA_TYPES = {int, float, type(None)}


def _only_numbers(array: np.ndarray, datatype: str) -> bool:
    """Whether an object array holds only numbers (and null in a float tensor)."""
    allowed = _NUMBER_TYPES | ({type(None)} if datatype in FLOAT_TYPES else set())
    return set(map(type, array.reshape(-1))) <= allowed


_NUMBER_TYPES = {int, float}


def _first_bad(data: Any, datatype: str) -> str | None:
    """What the first value of the wrong kind is ("a string"), ``None`` if there is none."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif _wrong_kind(value, datatype):
            return kind_of(value)
    return None


def _wrong_kind(value: Any, datatype: str) -> bool:
    if value is None:  # null: a missing value, NaN in a float tensor
        return datatype not in FLOAT_TYPES
    if datatype == "BOOL":
        return not isinstance(value, bool)
    return isinstance(value, bool) or not _is_number(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _requested_outputs(outputs: Any) -> list[tuple[str, bool | None]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects.")
    requested = []
    for i, entry in enumerate(outputs):
        output = _expect_object(entry, f"outputs[{i}]")
        name = output.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"outputs[{i}] needs a 'name' (a string).")
        parameters = _expect_object(output.get("parameters") or {}, f"outputs[{i}].parameters")
        if parameters.get("classification") is not None:
            refuse_classification(name)
        binary = parameters.get("binary_data")
        requested.append((name, None if binary is None else bool(binary)))
    return requested


def refuse_classification(output: str) -> None:
    """The classification extension (tritonclient's ``class_count``) is not served: say so.

    Raises
    ------
    BadRequest
        Always, naming the output and what to ask for instead.
    """
    raise BadRequest(
        f"Output {output!r} asks for the classification extension (class_count), which this "
        "server does not support: each class's score is its own output (see the model "
        "metadata's outputs). Ask for those outputs without class_count and take the top "
        "classes from the scores."
    )


# -- responses ----------------------------------------------------------------------------


def output_columns(scores: np.ndarray, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Model scores as one float32 vector per output name."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 1:
        return {output_names[0]: scores}
    return {name: np.ascontiguousarray(scores[:, i]) for i, name in enumerate(output_names)}


def encode_infer_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    columns: Mapping[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``columns`` (output name -> vector).

    Raises
    ------
    BadRequest
        When the request asked for an output the model does not have.
    """
    wanted = request.outputs or [(name, None) for name in columns]
    header_outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        if name not in columns:
            raise BadRequest(
                f"Unknown output {name!r}." + did_you_mean(name, columns, "outputs")
            )
        values = columns[name]
        output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
        if request.binary_default if binary is None else binary:
            blob = values.astype("<f4", copy=False).tobytes()
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = values
        header_outputs.append(output)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        header["id"] = request.request_id
    header["outputs"] = header_outputs
    body = dumps(header)
    if not blobs:
        return body, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(body))}
    return b"".join([body, *blobs]), headers


# -- the client side ----------------------------------------------------------------------


def encode_infer_request(
    matrix: np.ndarray, binary: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a request for the ``features`` input (used by the client)."""
    matrix = np.ascontiguousarray(matrix, dtype="<f4")
    tensor: dict[str, Any] = {"name": INPUT_NAME, "shape": list(matrix.shape), "datatype": "FP32"}
    header: dict[str, Any] = {"inputs": [tensor]}
    if request_id is not None:
        header["id"] = request_id
    if not binary:  # NaN and infinities are written as NaN, Infinity, -Infinity
        tensor["data"] = matrix.reshape(-1)
        return dumps(header), {"content-type": "application/json"}
    blob = matrix.tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header["parameters"] = {"binary_data_output": True}
    head = dumps(header)
    return head + blob, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def decode_infer_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Output name -> array from a response body (JSON or binary)."""
    header, binary = split_binary(body, header_length)
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for output in header.get("outputs", []):
        dtype = DATATYPES[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None and binary is not None:
            array = np.frombuffer(binary[offset:offset + size], dtype=dtype)
            offset += size
        else:
            array = np.asarray(output["data"], dtype=dtype)
        outputs[output["name"]] = array.reshape(output["shape"])
    return outputs
