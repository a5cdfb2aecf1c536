"""Fuzz every endpoint of a real ``mlaas serve``: no request may get a 5xx or break a
connection.

Starts the server (the CLI, in its own process, on 127.0.0.1) over a repository with a
real XGBoost bundle and a real scikit-learn (skops) bundle trained on the CMS Open Data
tutorial files, then sends ``--requests`` fuzzed requests from ``--concurrency`` clients,
spread over every endpoint: inference (JSON and binary tensors), events, server and model
metadata, readiness, health, metrics, and repository index/load/unload/upload/delete.
Requests are valid ones mutated at random: malformed or truncated JSON, values of the
wrong type, huge, negative or >64-dimensional shapes, out-of-range numbers, unknown
datatypes, binary headers with wrong sizes, odd content types and encodings, bodies cut
short (the client hangs up), hostile archives, odd names and versions, wrong methods.

Prints the responses per endpoint by status class and exits 1 if any response was >= 500,
any connection failed unexpectedly, the server's own /metrics counted a 5xx, or its log
shows an error or a traceback::

    python benchmarks/fuzz_serve.py --requests 10000 --seed 1

tests/serve/test_fuzz.py runs the same fuzzer (a few hundred requests, fixed seed) against
the test server.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import random
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from mlaas_dask.serve import protocol

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
TUTORIAL = HERE.parent.parent / "shared" / "data" / "cms-hep-tutorial-2012"
TOKEN = "fuzz-token"
HEADER_LENGTH = protocol.HEADER_LENGTH
DATATYPES = protocol.DATATYPES
ENDPOINTS = ["infer", "events", "metadata", "ready", "server", "health", "metrics", "index",
             "load", "unload", "upload", "delete", "unknown"]
#: status classes; a class in FAILING fails the run
NO_RESPONSE = "aborted"  # the fuzzer hung up on purpose (a truncated body): no answer due
FAILING = ("5xx", "connection-error")


@dataclass
class Model:
    """What the fuzzer knows of a served model."""

    name: str
    n_features: int
    branches: list[str]
    events: list[dict[str, Any]]  # real events, row-wise


@dataclass
class Target:
    """A running server and what it serves."""

    url: str
    token: str
    models: list[Model]
    archive: bytes  # a valid bundle .tar.gz

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@dataclass
class Report:
    """Responses per endpoint and status class, and what went wrong."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, status: str, detail: str = "") -> None:
        with self.lock:
            self.counts[endpoint][status] += 1
            if status in FAILING and len(self.failures) < 50:
                self.failures.append(f"{endpoint}: {status} {detail}"[:600])

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def table(self) -> str:
        classes = ["2xx", "3xx", "4xx", "5xx", NO_RESPONSE, "connection-error"]
        rows = [f"{'endpoint':<10}" + "".join(f"{c:>17}" for c in classes) + f"{'total':>8}"]
        for endpoint in ENDPOINTS:
            counts = self.counts.get(endpoint, Counter())
            rows.append(f"{endpoint:<10}" + "".join(f"{counts[c]:>17}" for c in classes)
                        + f"{sum(counts.values()):>8}")
        totals = Counter()
        for counts in self.counts.values():
            totals.update(counts)
        rows.append(f"{'all':<10}" + "".join(f"{totals[c]:>17}" for c in classes)
                    + f"{self.total:>8}")
        return "\n".join(rows)


# -- random values ------------------------------------------------------------------------

NUMBERS = [0, 1, -1, 2, 7, 127, 128, 255, 256, -129, 300, 2**15, 2**31 - 1, 2**31, 2**32,
           2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1, 10**30, -10**30,
           0.5, -0.0, 1e-310, 3.4e38, 3.5e38, 1e308, 65504.0, 65520.0, 1e39, -1e39]
STRINGS = ["", "a", "features", "score", "hep", "FP32", "nl\n", "\u00e9\u00e8", "\x00",
           "..", "../x", "a" * 300, "NaN", "1", "[]", "{}", "\ud7ff", "\U0001f600"]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, nested a little."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice(NUMBERS)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return rng.choice(STRINGS)
    if kind in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [*STRINGS, "inputs", "events", "columns", "name", "shape", "data", "datatype",
            "parameters", "outputs", "id"]
    return {rng.choice(keys):
            random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, value: Any) -> Any:
    """``value`` with one random change somewhere inside (a copy)."""
    value = copy.deepcopy(value)
    if not isinstance(value, (dict, list)) or not value or rng.random() < 0.15:
        return random_json(rng)
    path: list[Any] = []
    node = value
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        node = node[key]
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1] if path else None
    action = rng.randrange(4)
    if key is None:
        return random_json(rng)
    if action == 0 and isinstance(parent, dict):
        parent.pop(key, None)
    elif action == 1 and isinstance(parent, list):
        parent.append(random_json(rng))
    elif action == 2 and isinstance(parent, dict):
        parent[rng.choice(STRINGS)] = random_json(rng)
    else:
        parent[key] = random_json(rng)
    return value


#: fields of an inference request that a fuzzed value replaces (created where missing)
INFER_FIELDS = [("id",), ("parameters",), ("parameters", "binary_data_output"), ("inputs",),
                ("inputs", 0), ("inputs", 0, "name"), ("inputs", 0, "shape"),
                ("inputs", 0, "datatype"), ("inputs", 0, "data"), ("inputs", 0, "parameters"),
                ("inputs", 0, "parameters", "binary_data_size"), ("outputs",),
                ("outputs", 0), ("outputs", 0, "name"), ("outputs", 0, "parameters"),
                ("outputs", 0, "parameters", "binary_data")]


def poke(rng: random.Random, value: Any, fields: list[tuple[Any, ...]]) -> Any:
    """``value`` with one of ``fields`` set to a random JSON value (a copy)."""
    value = copy.deepcopy(value)
    path = rng.choice(fields)
    node = value
    for key in path[:-1]:
        if isinstance(node, dict):
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [{}] if isinstance(key, int) or key in ("inputs", "outputs") \
                    else {}
            node = node[key]
        elif isinstance(node, list):
            if not node:
                node.append({})
            node = node[min(key, len(node) - 1)] if isinstance(key, int) else node[0]
        if not isinstance(node, (dict, list)):
            return value
    last = path[-1]
    new = random_json(rng)
    if isinstance(node, dict):
        node[last] = new
    elif isinstance(node, list) and isinstance(last, int) and node:
        node[min(last, len(node) - 1)] = new
    return value


def dumps(rng: random.Random, value: Any) -> bytes:
    """JSON bytes, sometimes with a JSON-breaking edit (NaN, cut, bytes flipped)."""
    body = json.dumps(value, separators=(",", ":")).encode()  # integers of any size
    roll = rng.random()
    if roll < 0.05:
        return body.replace(b"0", b"NaN", 1)
    if roll < 0.10 and body:
        return body[: rng.randrange(len(body))]
    if roll < 0.14 and body:
        data = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if roll < 0.16:
        return b"[" * 2000 + b"]" * 2000
    return body


# -- requests -----------------------------------------------------------------------------


@dataclass
class Request:
    endpoint: str
    method: str
    path: str
    content: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)
    truncate: bool = False  # send the head and part of the body, then hang up
    raw: bytes = b""  # send these bytes as they are (malformed HTTP), read the answer


class Generator:
    """Fuzzed requests for one client (deterministic for a seed)."""

    def __init__(self, target: Target, seed: int, client: int) -> None:
        self.target = target
        self.rng = random.Random(seed * 1000 + client)
        self.client = client
        self.auth = {"Authorization": f"Bearer {target.token}"}

    def next(self) -> Request:
        endpoint = self.rng.choices(ENDPOINTS, weights=[20, 15, 6, 5, 3, 4, 3, 4, 5, 4, 8, 5,
                                                        4])[0]
        request: Request = getattr(self, f"_{endpoint}")()
        roll = self.rng.random()
        if roll < 0.04:
            request.method = self.rng.choice(["GET", "PUT", "PATCH", "DELETE", "OPTIONS",
                                              "HEAD", "POST"])
        elif roll < 0.08:
            request.headers["content-type"] = self.rng.choice(
                ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                 "application/json; charset=latin-1", "\u00e9/\u00e8".encode("latin-1"), ""])
        elif roll < 0.10:
            request.headers["content-encoding"] = self.rng.choice(["gzip", "br", "identity",
                                                                   "x"])
        elif roll < 0.12:
            request.headers["authorization"] = self.rng.choice(
                ["Bearer", "Bearer wrong", "Basic eA==", "", "Bearer " + "x" * 1000])
        if request.content and self.rng.random() < 0.05:
            request.truncate = True
        return request

    # -- helpers -----------------------------------------------------------------------

    def _model(self) -> Model:
        return self.rng.choice(self.target.models)

    def _name(self) -> str:
        roll = self.rng.random()
        if roll < 0.7:
            return self._model().name
        if roll < 0.8:
            return f"fz{self.client}-{self.rng.randrange(3)}"
        return quote(self.rng.choice([*STRINGS, "nope", "hep\n", "x" * 200, "-a", ".h"]),
                     safe="")

    def _version(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.5:
            return None
        if roll < 0.8:
            return str(self.rng.choice([1, 2, 3]))
        return quote(self.rng.choice(["0", "-1", "01", "2\n", "9" * 12, "latest", "1.0",
                                      "", " 1"]), safe="")

    def _model_path(self, suffix: str = "") -> str:
        name, version = self._name(), self._version()
        base = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")
        return base + suffix

    # -- one generator per endpoint ----------------------------------------------------

    def _infer(self) -> Request:
        model = self._model()
        rows = self.rng.choice([0, 1, 2, 5, 50])
        matrix = np.asarray([e["__matrix__"] for e in self.rng.choices(model.events, k=rows)]
                            or np.zeros((0, model.n_features)), dtype=np.float32)
        datatype = self.rng.choice(list(DATATYPES) + ["FP32"] * 6)
        shape: Any = [rows, model.n_features]
        if self.rng.random() < 0.2:
            shape = self.rng.choice([[2**63, 0], [0, 2**63], [1] * 65, [0] * 70, [-1, 19],
                                     [rows], [], [rows, model.n_features, 1], "2x19",
                                     [rows, 1.5], [True, 19], [2**64, 19], [100001, 19]])
        path = f"/v2/models/{model.name}" + ("/versions/1" if self.rng.random() < 0.3 else "")
        if self.rng.random() < 0.5:
            return self._binary_infer(path + "/infer", matrix, shape, datatype)
        data = np.nan_to_num(matrix).ravel().tolist()
        if datatype != "FP32" and self.rng.random() < 0.7:
            data = [self.rng.choice(NUMBERS) for _ in data]
        elif datatype == "BOOL":
            data = [self.rng.random() < 0.5 for _ in data]
        body: dict[str, Any] = {"inputs": [{"name": "features", "shape": shape,
                                            "datatype": datatype, "data": data}]}
        if self.rng.random() < 0.3:
            body["outputs"] = [{"name": "score", "parameters": {"binary_data":
                                                                self.rng.random() < 0.5}}]
        if self.rng.random() < 0.2:
            body["id"] = self.rng.choice(["req-1", 7, None, ["x"], "\u00e9"])
        roll = self.rng.random()
        if roll < 0.4:
            body = poke(self.rng, body, INFER_FIELDS)
        elif roll < 0.7:
            body = mutate(self.rng, body)
        return Request("infer", "POST", path + "/infer", dumps(self.rng, body),
                       {"content-type": "application/json"})

    def _binary_infer(self, path: str, matrix: np.ndarray, shape: Any,
                      datatype: str) -> Request:
        dtype = DATATYPES[datatype]
        with np.errstate(invalid="ignore", over="ignore"):
            blob = np.nan_to_num(matrix).astype(dtype).tobytes()
        if self.rng.random() < 0.3 and datatype.startswith("FP"):
            values = np.frombuffer(bytearray(blob), dtype=dtype).copy()
            if values.size:
                with np.errstate(over="ignore"):
                    values[self.rng.randrange(values.size)] = self.rng.choice(
                        [np.nan, np.inf, -np.inf, 1e300])
            blob = values.tobytes()
        size: Any = len(blob)
        if self.rng.random() < 0.25:
            size = self.rng.choice([len(blob) + 1, len(blob) - 1, -1, 2**63, "12", None, 1.5,
                                    0, 2**70])
        header: dict[str, Any] = {"inputs": [{"name": "features", "shape": shape,
                                              "datatype": datatype,
                                              "parameters": {"binary_data_size": size}}]}
        if self.rng.random() < 0.5:
            header["parameters"] = {"binary_data_output": self.rng.random() < 0.7}
        roll = self.rng.random()
        if roll < 0.3:
            header = poke(self.rng, header, INFER_FIELDS)
        elif roll < 0.5:
            header = mutate(self.rng, header)
        head = dumps(self.rng, header)
        length: Any = len(head)
        if self.rng.random() < 0.2:
            length = self.rng.choice([len(head) + 5, len(head) - 3, 0, -1, "x", 2**64, ""])
        body = head + blob
        if self.rng.random() < 0.1:
            body = body[: self.rng.randrange(len(body) + 1)]
        return Request("infer", "POST", path, body,
                       {"content-type": "application/octet-stream",
                        HEADER_LENGTH: str(length)})

    def _events(self) -> Request:
        model = self._model()
        events = [{k: v for k, v in e.items() if k != "__matrix__"}
                  for e in self.rng.choices(model.events, k=self.rng.choice([1, 3, 20]))]
        if self.rng.random() < 0.4:
            event = self.rng.choice(events)
            branch = self.rng.choice(model.branches)
            event[branch] = self.rng.choice([
                None, [], [2**63, 2**63 + 1], [2**64], 2**63, -2**63 - 1, 10**30, "x", [None],
                [[1.0]], True, [True, 2], {"a": 1}, [1e308, -1e308], list(range(200))])
        if self.rng.random() < 0.3:
            body: Any = {"columns": {b: [e.get(b) for e in events] for b in model.branches}}
        else:
            body = {"events": events}
        roll = self.rng.random()
        if roll < 0.2:
            body = poke(self.rng, body, [("events",), ("columns",), ("events", 0),
                                         ("columns", self.rng.choice(model.branches))])
        elif roll < 0.5:
            body = mutate(self.rng, body)
        path = f"/v2/models/{model.name}" + ("/versions/1" if self.rng.random() < 0.3 else "")
        return Request("events", "POST", path + "/events", dumps(self.rng, body),
                       {"content-type": "application/json"})

    def _metadata(self) -> Request:
        return Request("metadata", "GET", self._model_path())

    def _ready(self) -> Request:
        return Request("ready", "GET", self._model_path("/ready"))

    def _server(self) -> Request:
        return Request("server", "GET", self.rng.choice(["/v2", "/v2/", "/v2?x=1"]))

    def _health(self) -> Request:
        return Request("health", "GET", self.rng.choice(
            ["/v2/health/live", "/v2/health/ready", "/v2/health/live?verbose=%00"]))

    def _metrics(self) -> Request:
        return Request("metrics", "GET", self.rng.choice(["/metrics", "/metrics?name[]=x"]))

    def _index(self) -> Request:
        body = self.rng.choice([b"", b"{}", b'{"ready": true}', b"[]", b"null",
                                dumps(self.rng, random_json(self.rng))])
        return Request("index", "POST", "/v2/repository/index", body)

    def _load(self) -> Request:
        body = self.rng.choice([b"", b"{}", dumps(self.rng, random_json(self.rng))])
        return Request("load", "POST", f"/v2/repository/models/{self._name()}/load", body,
                       dict(self.auth))

    def _unload(self) -> Request:
        name = self._name()
        if name in {m.name for m in self.target.models} and self.rng.random() < 0.7:
            name = f"fz{self.client}-{self.rng.randrange(3)}"  # keep the real ones served
        return Request("unload", "POST", f"/v2/repository/models/{name}/unload",
                       self.rng.choice([b"", b"{}", b"[1]"]), dict(self.auth))

    def _upload(self) -> Request:
        name = f"fz{self.client}-{self.rng.randrange(3)}" if self.rng.random() < 0.7 else \
            self._name()
        query = ""
        if self.rng.random() < 0.3:
            query = "?version=" + (self._version() or "4")
        return Request("upload", "POST", f"/v2/repository/models/{name}/upload{query}",
                       self._archive(), {**self.auth, "content-type": "application/gzip"})

    def _archive(self) -> bytes:
        archive = self.target.archive
        roll = self.rng.random()
        if roll < 0.3:
            return archive
        if roll < 0.45:
            data = bytearray(archive)
            for _ in range(self.rng.randrange(1, 20)):
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
            return bytes(data)
        if roll < 0.55:
            return archive[: self.rng.randrange(len(archive))]
        if roll < 0.6:
            return self.rng.choice([b"", b"\x1f\x8b", b"not gzip", bytes(1000)])
        return _tar(self.rng, self.target.archive)

    def _delete(self) -> Request:
        name = self._name()
        if name in {m.name for m in self.target.models}:
            version = self.rng.choice(["99", "0", "x", "2%0A"])  # never a real one
            return Request("delete", "DELETE",
                           f"/v2/repository/models/{name}/versions/{version}",
                           headers=dict(self.auth))
        version = self._version()
        path = f"/v2/repository/models/{name}" + (f"/versions/{version}" if version else "")
        return Request("delete", "DELETE", path, headers=dict(self.auth))

    def _unknown(self) -> Request:
        if self.rng.random() < 0.3:
            return Request("unknown", "RAW", "", raw=self.rng.choice(RAW_REQUESTS))
        path = self.rng.choice(["/", "/v1/models/hep", "/v2/models", "/v2/models/",
                                "/v2/repository", "/v2/models/hep/versions", "/%00",
                                "/v2/models/hep/infer/extra", "/" + "a" * 3000,
                                "/v2/models/%2e%2e/ready", "/v2/repository/models//load"])
        return Request("unknown", self.rng.choice(["GET", "POST", "DELETE", "PUT"]), path,
                       dumps(self.rng, random_json(self.rng)))


RAW_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"GET /v2 HTTP/9.9\r\n\r\n",
    b"GET /v2\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: \x00\x01\r\n\r\n",
    b"POST /v2/models/hep/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v2/models/hep/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 7\r\n\r\n{}",
    b"POST /v2/models/hep/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    b"POST /v2/models/hep/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    b"POST /v2/models/hep/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n0\r\n\r\n",
    b"GET /v2/models/hep HTTP/1.1\r\nHost: x\r\n\r\nGET /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\n" + b"X-A: b\r\n" * 10000 + b"\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
]


def _tar(rng: random.Random, valid: bytes) -> bytes:
    """A .tar.gz with odd members: links, devices, deep or absolute paths, many members,
    oversized declared sizes, duplicates, long names, pax headers, the valid files mixed in."""
    with tarfile.open(fileobj=io.BytesIO(valid), mode="r:gz") as source:
        files = [(m, source.extractfile(m).read()) for m in source.getmembers() if m.isfile()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz",
                      format=rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])) as tar:
        for member, data in files:
            if rng.random() < 0.8:
                tar.addfile(member, io.BytesIO(data))
        for _ in range(rng.randrange(1, 4)):
            kind = rng.randrange(9)
            info = tarfile.TarInfo(rng.choice(["b/x", "/etc/x", "b/../x", "a/b/c/d", "b/" +
                                               "n" * 300, "b/model.ubj", "", "./", "b/\x01"]))
            if kind == 0:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif kind == 1:
                info.type = tarfile.CHRTYPE
            elif kind == 2:
                info.type = tarfile.DIRTYPE
            elif kind == 3:
                info.type = tarfile.LNKTYPE
                info.linkname = "b/model.ubj"
            elif kind == 4:
                info.pax_headers = {"comment": "c" * rng.choice([10, 70000])}
            elif kind == 5:
                for i in range(70):
                    tar.addfile(tarfile.TarInfo(f"b/m{i}"), io.BytesIO(b""))
                continue
            elif kind == 6:
                info.type = tarfile.FIFOTYPE
            data = bytes(rng.randrange(64)) if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


# -- sending ------------------------------------------------------------------------------


def classify(status: int) -> str:
    return f"{status // 100}xx"


def send(http: httpx.Client, target: Target, request: Request, report: Report) -> None:
    if request.truncate:
        _send_truncated(target, request, report)
        return
    if request.raw:
        _send_raw(target, request, report)
        return
    try:
        response = http.request(request.method, request.path, content=request.content,
                                headers=request.headers)
    except httpx.HTTPError as err:
        report.add(request.endpoint, "connection-error",
                   f"{request.method} {request.path[:100]}: {type(err).__name__}: {err}")
        return
    detail = f"{request.method} {request.path[:100]} -> {response.text[:300]}"
    report.add(request.endpoint, classify(response.status_code), detail)


def _send_truncated(target: Target, request: Request, report: Report) -> None:
    """The head and part of the body, then hang up: the server must count a client abort
    (it cannot answer); the fuzzer checks its /metrics and log for 5xx afterwards."""
    head = [f"{request.method} {request.path} HTTP/1.1", "Host: 127.0.0.1",
            f"Content-Length: {len(request.content)}"]
    head += [f"{k}: {v}" for k, v in request.headers.items()
             if k.lower() != "content-length" and v.isascii()]
    cut = len(request.content) // 2
    try:
        with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + request.content[:cut])
    except OSError as err:
        report.add(request.endpoint, "connection-error", f"truncated send: {err}")
        return
    report.add(request.endpoint, NO_RESPONSE)


def _send_raw(target: Target, request: Request, report: Report) -> None:
    """Malformed HTTP: the server must answer (a 4xx) and close, or just close."""
    try:
        with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
            sock.sendall(request.raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError as err:
        report.add(request.endpoint, "connection-error", f"raw {request.raw[:60]!r}: {err}")
        return
    if not answer.startswith(b"HTTP/1.1 "):
        report.add(request.endpoint, NO_RESPONSE)
        return
    status = int(answer[9:12])
    report.add(request.endpoint, classify(status), f"raw {request.raw[:60]!r} -> {answer[:200]!r}")


def run_fuzz(target: Target, requests: int, seed: int, concurrency: int = 4,
             log: Callable[[str], None] = print) -> Report:
    """Send ``requests`` fuzzed requests from ``concurrency`` clients; the report counts
    the responses per endpoint and status class."""
    report = Report()
    per_client = [requests // concurrency + (i < requests % concurrency)
                  for i in range(concurrency)]

    def client(index: int) -> None:
        generator = Generator(target, seed, index)
        try:
            with httpx.Client(base_url=target.url, timeout=60) as http:
                for i in range(per_client[index]):
                    send(http, target, generator.next(), report)
                    if i % 100 == 99:
                        _restore(http, target)
        except Exception as err:
            report.add("fuzzer", "connection-error", f"client {index} crashed: {err!r}")
            raise

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log(f"{report.total} requests in {time.perf_counter() - started:.1f} s")
    return report


def _restore(http: httpx.Client, target: Target) -> None:
    """Load the real models again (a fuzzed unload may have taken them away)."""
    for model in target.models:
        http.post(f"/v2/repository/models/{model.name}/load",
                  headers={"Authorization": f"Bearer {target.token}"})


def server_errors(target: Target) -> dict[str, float]:
    """The server's own 5xx counts by /metrics line (truncated requests included)."""
    text = httpx.get(f"{target.url}/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mlaas_requests_total") and 'status="5' in line}


def new_server_errors(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """The 5xx counted between two :func:`server_errors` (the readiness polls before the
    fuzzing may have seen a 503 while the models loaded)."""
    return [f"{line} +{count - before.get(line, 0):g}" for line, count in after.items()
            if count > before.get(line, 0)]


def real_events(model_name: str, trained: Any, n: int = 200) -> Model:
    """A :class:`Model` from a trained test bundle (``tests/serve/conftest.Trained``)."""
    import awkward as ak

    events = ak.to_list(trained.events[:n])
    for event, row in zip(events, np.nan_to_num(trained.matrix[:n]).tolist(), strict=True):
        event["__matrix__"] = row
    return Model(model_name, trained.spec.n_features, trained.spec.branches(), events)


# -- the benchmark: a CLI server over a repository of two real bundles --------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from serve.conftest import tar_bytes, train_bundle, train_sklearn_bundle

    with tempfile.TemporaryDirectory(prefix="mlaas-fuzz-") as folder:
        root = Path(folder)
        xgb = train_bundle(root / "repo" / "hep" / "1", ["background", "signal"], ["ww", "zz"],
                           tutorial=TUTORIAL)
        skl = train_sklearn_bundle(root / "repo" / "skl" / "1", xgb)
        archive = tar_bytes({f"bundle/{p.name}": p.read_bytes() for p in xgb.path.iterdir()})
        (root / "token").write_text(TOKEN)
        port = free_port()
        log_path = root / "server.log"
        with open(log_path, "wb") as server_log:
            server = subprocess.Popen(
                [sys.executable, "-m", "mlaas_dask", "serve", "--models", str(root / "repo"),
                 "--port", str(port), "--token-file", str(root / "token"), "--threads", "2",
                 "--log-level", "info"], stdout=server_log, stderr=subprocess.STDOUT)
            try:
                target = Target(f"http://127.0.0.1:{port}", TOKEN,
                                [real_events("hep", xgb), real_events("skl", skl)], archive)
                wait_ready(target.url, server)
                before = server_errors(target)
                report = run_fuzz(target, args.requests, args.seed, args.concurrency)
                errors = new_server_errors(before, server_errors(target))
            finally:
                server.terminate()
                server.wait(30)
        log_text = log_path.read_text(errors="replace")
    print(report.table())
    bad_log = [line for line in log_text.splitlines()
               if "Traceback" in line or "ERROR" in line or "unexpected error" in line]
    for failure in report.failures[:20]:
        print("FAIL", failure)
    for line in errors:
        print("SERVER", line)
    lines = log_text.splitlines()
    for start in [i for i, line in enumerate(lines) if "ERROR" in line or
                  "unexpected error" in line][:5]:  # the tracebacks, to fix them
        print("SERVER LOG", *lines[start:start + 40], sep="\n  ")
    failed = any(c[k] for c in report.counts.values() for k in FAILING) or errors or bad_log
    print("FAILED" if failed else "OK: no response >= 500, no connection error, no server "
          "error logged")
    return 1 if failed else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until the server in ``process`` answers ready at ``url``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


if __name__ == "__main__":
    sys.exit(main())
