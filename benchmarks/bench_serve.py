"""Prediction service benchmark: ``mlaas serve`` against Seldon MLServer 1.7, same run.

What it does, all on 127.0.0.1:

1. trains an XGBoost model on the shared CMS Open Data (WW against ZZ, the FeatureSpec of
   the serving tests; the project's default model size: depth 6, 300 rounds) and writes
   a bundle into a model repository;
2. measures the in-process ceiling: ``ModelBundle.predict_matrix`` (XGBoost
   ``inplace_predict``) on 1000-row matrices, one thread and one thread per core, with the
   real missing values (NaN: padded jets and muons) and with them set to 0 (what JSON
   requests carry; XGBoost predicts faster without missing values);
3. starts ``mlaas serve`` and MLServer (``mlserver`` + ``mlserver-xgboost`` 1.7 in their own
   virtual environment, created here when missing) serving the same ``model.ubj``; MLServer
   runs in several configurations (``parallel_workers`` 1, its default, and 0; with
   ``OMP_NUM_THREADS=1``, which avoids XGBoost's OpenMP threads spinning against each other
   on a small machine, and unset) and its best one is the baseline;
4. drives each with one load generator for every server and protocol, by default h2load
   (nghttp2's C load generator, ``apt-get install nghttp2-client``; ``--client python``
   falls back to this script's own, below): REST as HTTP/1.1 with ``concurrency``
   keep-alive connections, gRPC as h2c with ``concurrency`` streams over 8 connections,
   posting a fixed gRPC-framed body (5-byte prefix + serialized ModelInferRequest,
   ``content-type: application/grpc``, ``te: trailers``); closed loop, ``--duration``
   seconds after ``--warmup``, latencies from h2load's per-request log. h2load counts
   HTTP statuses only and a failed gRPC call is HTTP 200 with its error in the trailers
   and no message, so (i) one call per server and shape is checked by hand first with the
   grpc Python client (status OK, the right number of scores: ``grpc_answer_bytes``), and
   (ii) a gRPC response counts as an error unless its DATA holds at least the scores
   (5 + 4 x rows bytes; ``response_bytes`` is h2load's average). Scenarios:
   (a) one event per request at concurrency 64, (b) 1000 events per request at
   concurrency 4; plus, for mlaas only, binary tensors and the event endpoint (raw jagged
   events, FeatureSpec on the server). All servers run at once and the scenarios alternate
   between them, ``--repeats`` times (medians), so background load hits them alike;
5. gRPC (KServe v2 ModelInfer with raw_input_contents, the same serialized request bytes
   to both servers) against mlaas's REST binary tensors and MLServer's gRPC: (a) and (b)
   as above; JSON tensors with the real NaN padding (``NaN`` literals) against binary
   tensors; with ``--workers-compare``, the same on ``mlaas serve --workers 2`` against 1;
   and the load generator against a server that answers fixed bytes without work
   (``grpc_client_ceiling``: the client's and grpc.aio's own limit, which also bounds any
   grpc.aio server). With h2load, ``python_grpc_client`` adds (a) through the Python
   grpc.aio load generator (8 channels; it tops out near 2,500 calls/s here, so it
   measures itself more than the server) on mlaas and on the echo server;
6. prints one JSON line with every figure, the targets and whether they are met.

The OIP JSON requests shared with MLServer send missing features as 0 (MLServer does not
read ``NaN``; same bytes to both servers) and are compared with the ceiling on zeros;
binary tensors, gRPC, ``b_oip_json_nan`` and events carry the real missing values.

Usage::

    python benchmarks/bench_serve.py [--duration 6] [--repeats 2] [--skip-mlserver]
                                     [--workers-compare] [--client h2load|python]
                                     [--scenarios a_grpc,a_oip_binary] [--out result.json]

Not run in CI. On a shared 2-core machine the figures move by +-30 % from run to run:
compare ratios measured side by side in one run, over ``--repeats 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "cms-hep-tutorial-2012"
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/work/mlserver-venv"))
# uvloop 0.22+ breaks MLServer 1.7's parallel inference workers ("There is no current event
# loop in thread 'MainThread'"), so the last release before it is pinned beside MLServer.
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-xgboost==1.7.1", "uvloop==0.21.0"]
MAX_REQUESTS = 2_000_000  # hard bound per scenario, on top of the time bound


# -- load generator (runs in its own process) ---------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending requests back to back (closed loop)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        run = self.run
        if time.perf_counter() >= run.stop_at or run.sent >= MAX_REQUESTS:
            assert self.transport is not None
            self.transport.close()
            return
        request = run.requests[run.sent % len(run.requests)]
        run.sent += 1
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                self.status = int(head[9:12])
                length = head.split(b"\r\ncontent-length:", 1)
                if len(length) != 2:
                    raise RuntimeError("response without Content-Length")
                self.need = end + 4 + int(length[1].split(b"\r\n", 1)[0])
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = None
            self.run.record(self.started, self.status)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.open -= 1
        if self.run.open == 0:
            self.run.done.set()


class _Run:
    def __init__(self, requests: list[bytes], warmup: float, duration: float) -> None:
        self.requests = requests
        self.sent = 0
        now = time.perf_counter()
        self.measure_from = now + warmup
        self.stop_at = self.measure_from + duration
        self.latencies: list[float] = []
        self.errors = 0
        self.open = 0
        self.done = asyncio.Event()

    def record(self, started: float, status: int) -> None:
        if started < self.measure_from:
            return
        self.latencies.append(time.perf_counter() - started)
        if status != 200:
            self.errors += 1


async def _drive(config: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = _Run(requests, config["warmup"], config["duration"])
    for _ in range(config["concurrency"]):
        await loop.create_connection(lambda: _Connection(run), "127.0.0.1", config["port"])
        run.open += 1
    await asyncio.wait_for(run.done.wait(), config["warmup"] + config["duration"] + 60)
    return _figures(run, config)


def _figures(run: _Run, config: dict[str, Any]) -> dict[str, Any]:
    latencies = np.array(run.latencies)
    seconds = config["duration"]
    return {
        "requests": int(latencies.size),
        "errors": run.errors,
        "rps": round(latencies.size / seconds, 1),
        "rows_per_s": round(latencies.size * config["rows"] / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3) if latencies.size else None,
    }


GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_CHANNELS = 8


async def _drive_grpc(config: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    """Closed loop of ``concurrency`` ModelInfer calls over a few channels; the requests are
    sent as serialized bytes and the answers not parsed (the client's cost stays low and the
    same for every server); a failed call counts as an error."""
    import grpc

    run = _Run(requests, config["warmup"], config["duration"])
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1),
               ("grpc.max_receive_message_length", -1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{config['port']}", options=options)
                for _ in range(min(GRPC_CHANNELS, config["concurrency"]))]
    calls = [channel.unary_unary(GRPC_INFER) for channel in channels]

    async def caller(index: int) -> None:
        call = calls[index % len(calls)]
        while time.perf_counter() < run.stop_at and run.sent < MAX_REQUESTS:
            request = run.requests[run.sent % len(run.requests)]
            run.sent += 1
            started = time.perf_counter()
            try:
                await call(request, timeout=60)
                status = 200
            except grpc.aio.AioRpcError:
                status = 500
            run.record(started, status)

    await asyncio.gather(*[caller(i) for i in range(config["concurrency"])])
    for channel in channels:
        await channel.close()
    return _figures(run, config)


def echo_grpc_main(port: int, response_path: str) -> None:
    """A gRPC server answering every ModelInfer with fixed bytes, doing no work: what the
    load generator reaches against it is its own ceiling (client and transport)."""
    import grpc

    response = Path(response_path).read_bytes()

    async def infer(request: bytes, context: Any) -> bytes:
        return response

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def start_echo_grpc(port: int, workdir: Path, rows: int) -> subprocess.Popen[bytes]:
    from tritonclient.grpc import service_pb2 as pb

    response = pb.ModelInferResponse(model_name="hep", model_version="1")
    response.outputs.add(name="score", datatype="FP32", shape=[rows])
    response.raw_output_contents.append(b"\0" * 4 * rows)
    path = workdir / f"echo-{rows}.bin"
    path.write_bytes(response.SerializeToString())
    process = subprocess.Popen([sys.executable, __file__, "echo-grpc", str(port), str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    raise RuntimeError("the gRPC echo server did not start")


def client_ceiling(bodies: dict[str, list[Body]], args: argparse.Namespace,
                   workdir: Path) -> dict[str, Any]:
    """The gRPC load generator against the echo server: (a) and (b) request shapes."""
    result = {}
    for scenario in ("a_grpc", "b_grpc"):
        if scenario not in SCENARIOS:
            continue
        _, rows, concurrency, _ = SCENARIOS[scenario]
        rows = rows or args.big_rows
        port = free_port()
        process = start_echo_grpc(port, workdir, rows)
        try:
            result[scenario] = run_scenario(
                workdir, f"echo-{scenario}", port, GRPC_INFER, bodies[scenario], rows,
                concurrency or args.big_concurrency, args)
        finally:
            stop(process)
    return result


def python_grpc_figure(bodies: dict[str, list[Body]], args: argparse.Namespace,
                       workdir: Path, mlaas_grpc_port: int) -> dict[str, Any]:
    """The a_grpc scenario through the Python grpc.aio load generator, on mlaas and on the
    echo server (one run each): what a Python client sees, and its own ceiling."""
    _, rows, concurrency, _ = SCENARIOS["a_grpc"]
    out = {"mlaas": run_scenario(workdir, "py-mlaas-a_grpc", mlaas_grpc_port, GRPC_INFER,
                                 bodies["a_grpc"], rows, concurrency, args, client="python")}
    port = free_port()
    process = start_echo_grpc(port, workdir, rows)
    try:
        out["echo"] = run_scenario(workdir, "py-echo-a_grpc", port, GRPC_INFER,
                                   bodies["a_grpc"], rows, concurrency, args, client="python")
    finally:
        stop(process)
    out["mlaas_fraction_of_client_ceiling"] = round(out["mlaas"]["rps"] / out["echo"]["rps"], 3)
    return out


def loadgen_main(spec_path: str) -> None:
    """Entry of the load-generator process: run one scenario, print its JSON figures."""
    config = json.loads(Path(spec_path).read_text())
    requests = [Path(p).read_bytes() for p in config["files"]]
    if config.get("protocol") == "grpc":  # grpc.aio runs its own loop integration
        print(json.dumps(asyncio.run(_drive_grpc(config, requests))))
        return
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_drive(config, requests))))


def http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- model, ceiling -----------------------------------------------------------------------


def train(out: Path, rounds: int, depth: int) -> tuple[Any, np.ndarray, Any]:
    """Train and write a bundle; returns (events, matrix, booster)."""
    import awkward as ak
    import uproot
    import xgboost

    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from mlaas_dask.bundle import write_bundle

    from conftest import make_spec  # the serving tests' FeatureSpec

    spec = make_spec()
    parts = []
    for name in ("ww", "zz"):
        with uproot.open(DATA / f"{name}.root") as handle:
            parts.append(handle["events"].arrays(spec.branches()))
    events = ak.concatenate(parts)
    matrix = spec.transform(events)
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "nthread": 2,
              "seed": 1}
    booster = xgboost.train(params, xgboost.DMatrix(matrix, labels, missing=np.nan), rounds)
    write_bundle(out, model=bytes(booster.save_raw("ubj")), spec=spec,
                 metadata={"classes": ["background", "signal"]},
                 metrics={"rounds": rounds, "max_depth": depth})
    return events, matrix, booster


def ceiling(bundle_path: Path, matrix: np.ndarray, seconds: float = 3.0) -> dict[str, Any]:
    """In-process rows/s of the bundle's predict_matrix on 1000-row matrices, one thread and
    one per core: with the real missing values (NaN), and with them set to 0 as the JSON
    requests carry them (XGBoost is faster without missing values)."""
    from mlaas_dask.bundle import ModelBundle

    bundle = ModelBundle.load(bundle_path)
    result: dict[str, Any] = {}
    for label, data in (("nan", matrix), ("zeros", np.nan_to_num(matrix))):
        rows = _tile(data, 1000)
        bundle.predict_matrix(rows)
        figures = {}
        for threads in (1, os.cpu_count() or 1):
            figures[f"rows_per_s_{threads}_thread"] = _rows_per_s(bundle, rows, threads,
                                                                  seconds)
        figures["rows_per_s"] = max(figures.values())
        result[label] = figures
    return result


def _rows_per_s(bundle: Any, rows: np.ndarray, threads: int, seconds: float) -> float:
    counters = [[0] for _ in range(threads)]
    stop_at = time.perf_counter() + seconds

    def worker(counter: list[int]) -> None:
        while time.perf_counter() < stop_at:
            bundle.predict_matrix(rows)
            counter[0] += 1

    pool = [threading.Thread(target=worker, args=(c,)) for c in counters]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return round(sum(c[0] for c in counters) * len(rows) / seconds, 1)


def _tile(matrix: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(matrix, (n, matrix.shape[1])))


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_mlaas(repo: Path, port: int, log: Path, grpc_port: int,
                workers: int = 1) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlaas_dask", "serve", "--models", str(repo), "--port",
         str(port), "--grpc-port", str(grpc_port), "--workers", str(workers),
         "--log-level", "warning"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
    )


def ensure_mlserver() -> Path:
    """The ``mlserver`` executable, installing MLServer into its own venv when missing."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    marker = MLSERVER_VENV / ".bench-serve-pins"
    pins = " ".join(MLSERVER_PINS)
    if not exe.exists():
        print(f"creating {MLSERVER_VENV}", file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
    if not marker.exists() or marker.read_text() != pins:
        print(f"installing {pins} into {MLSERVER_VENV}", file=sys.stderr)
        subprocess.run([str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", *MLSERVER_PINS],
                       check=True)
        marker.write_text(pins)
    return exe


def start_mlserver(bundle: Path, root: Path, port: int, workers: int, log: Path,
                   grpc_port: int, omp_threads: str | None = None) -> subprocess.Popen[bytes]:
    exe = ensure_mlserver()
    model_dir = root / "hep"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle / "model.ubj", model_dir / "model.ubj")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "hep", "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.ubj", "version": "1"},
    }))
    (root / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port,
        "metrics_port": free_port(), "parallel_workers": workers,
    }))
    env = dict(os.environ)
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = omp_threads
    return subprocess.Popen([str(exe), "start", str(root)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, cwd=root, env=env)


# -- scenarios ----------------------------------------------------------------------------


def oip_json(matrix: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps({"inputs": [{
        "name": "features", "shape": list(matrix.shape), "datatype": "FP32",
        "data": np.nan_to_num(matrix).ravel(),
    }]}, option=orjson.OPT_SERIALIZE_NUMPY)


def oip_binary(matrix: np.ndarray) -> tuple[bytes, dict[str, str]]:
    from mlaas_dask.serve.protocol import encode_infer_request

    return encode_infer_request(matrix, binary=True)


def oip_json_nan(matrix: np.ndarray) -> bytes:
    """JSON tensors with the real missing values, as NaN literals (what tritonclient and
    Python's json module send)."""
    return json.dumps({"inputs": [{
        "name": "features", "shape": list(matrix.shape), "datatype": "FP32",
        "data": matrix.astype(np.float64).ravel().tolist(),
    }]}).encode()


def grpc_infer(matrix: np.ndarray) -> bytes:
    """A serialized ModelInferRequest with the matrix in raw_input_contents."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="hep")
    request.inputs.add(name="features", datatype="FP32", shape=list(matrix.shape))
    request.raw_input_contents.append(np.ascontiguousarray(matrix, "<f4").tobytes())
    return request.SerializeToString()


def events_json(events: Any) -> bytes:
    import awkward as ak
    import orjson

    return orjson.dumps({"events": ak.to_list(events)})


def run_scenario(workdir: Path, name: str, port: int, path: str,
                 bodies: list[tuple[bytes, dict[str, str]]], rows: int, concurrency: int,
                 args: argparse.Namespace, client: str | None = None) -> dict[str, Any]:
    """One scenario through the chosen load generator (``client``, default ``--client``)."""
    folder = workdir / name
    folder.mkdir()
    if (client or args.client) == "h2load":
        result = run_h2load(folder, port, path, bodies[0], rows, concurrency, args)
        result["concurrency"] = concurrency
        print(f"  {name}: {result}", file=sys.stderr)
        return result
    files = []
    protocol = "grpc" if path == GRPC_INFER else "http"
    for i, (body, headers) in enumerate(bodies):
        file = folder / f"{i}.{protocol}"
        file.write_bytes(body if protocol == "grpc" else http_request(port, path, body,
                                                                      headers))
        files.append(str(file))
    spec = {"files": files, "port": port, "concurrency": concurrency, "rows": rows,
            "warmup": args.warmup, "duration": args.duration, "protocol": protocol}
    (folder / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, "loadgen", str(folder / "spec.json")],
                          capture_output=True, text=True, timeout=args.duration + 120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed for {name}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["concurrency"] = concurrency
    print(f"  {name}: {result}", file=sys.stderr)
    return result


H2LOAD_GRPC_CONNECTIONS = 8  # gRPC: the concurrency as streams over this many connections


def run_h2load(folder: Path, port: int, path: str, body: Body, rows: int, concurrency: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """One scenario driven by h2load (nghttp2, C): HTTP/1.1 with ``concurrency``
    keep-alive connections for REST, h2c with ``concurrency`` streams over
    :data:`H2LOAD_GRPC_CONNECTIONS` connections for gRPC (the request a fixed gRPC-framed
    message: 5-byte prefix + serialized ModelInferRequest). Every run posts the same body.

    h2load counts HTTP statuses only, and a failed gRPC call is HTTP 200 with the error in
    its trailers and no message; so a gRPC response counts as an error unless its DATA
    carries at least the scores of ``rows`` events (``5 + 4 * rows`` bytes each: only
    real answers do), on top of the check by hand (:func:`check_grpc_answer`)."""
    data, headers = body
    grpc_call = path == GRPC_INFER
    request = folder / "body.bin"
    request.write_bytes(b"\0" + len(data).to_bytes(4, "big") + data if grpc_call else data)
    log = folder / "requests.tsv"
    command = ["h2load", "-D", f"{args.duration * 1000:.0f}ms",
               "--warm-up-time", f"{args.warmup * 1000:.0f}ms",
               "-d", str(request), f"--log-file={log}"]
    if grpc_call:
        connections = min(H2LOAD_GRPC_CONNECTIONS, concurrency)
        command += ["-c", str(connections), "-m", str(concurrency // connections),
                    "-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        command += ["--h1", "-c", str(concurrency), "-m", "1"]
        command += [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    command.append(f"http://127.0.0.1:{port}{path}")
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=args.warmup + args.duration + 120, check=False)
    out = done.stdout
    if done.returncode != 0 or "requests:" not in out:
        raise RuntimeError(f"h2load failed: {done.stderr[-2000:]}{out[-2000:]}")
    import re

    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    data_bytes = int(re.search(r"\((\d+)\) data", out).group(1))  # type: ignore[union-attr]
    assert counts is not None
    total, succeeded = int(counts.group(2)), int(counts.group(3))
    errors = total - succeeded
    if grpc_call:
        errors = max(errors, succeeded - data_bytes // (5 + 4 * rows))
    elapsed = np.loadtxt(log, usecols=2, ndmin=1) / 1e6 if total else np.zeros(0)
    seconds = args.duration
    return {
        "requests": total, "errors": int(errors), "rps": round(total / seconds, 1),
        "rows_per_s": round(total * rows / seconds, 1),
        "p50_ms": round(float(np.percentile(elapsed, 50)) * 1e3, 3) if total else None,
        "p99_ms": round(float(np.percentile(elapsed, 99)) * 1e3, 3) if total else None,
        "response_bytes": round(data_bytes / max(succeeded, 1), 1),
        "client": "h2load",
    }


def check_grpc_answer(port: int, request: bytes, rows: int) -> int:
    """One ModelInfer by hand (grpc Python client): the server answers status OK with
    ``rows`` scores; returns the size of the answer, gRPC-framed."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_INFER)
        answer, state = call.with_call(request, timeout=30)
    if state.code() != grpc.StatusCode.OK:
        raise RuntimeError(f"gRPC ModelInfer on port {port}: {state.code()}")
    response = pb.ModelInferResponse.FromString(answer)
    scores = np.frombuffer(response.raw_output_contents[0], "<f4") \
        if response.raw_output_contents else np.asarray(response.outputs[0].contents.fp32_contents)
    if scores.size != rows:
        raise RuntimeError(f"gRPC ModelInfer on port {port}: {scores.size} scores for {rows}")
    return 5 + len(answer)


def check_same_scores(port_a: int, port_b: int, matrix: np.ndarray) -> float:
    """Max |score difference| between the two servers on the same JSON request."""
    import httpx

    body = oip_json(matrix)
    scores = []
    for port in (port_a, port_b):
        response = httpx.post(f"http://127.0.0.1:{port}/v2/models/hep/infer", content=body,
                              headers={"content-type": "application/json"}, timeout=30)
        response.raise_for_status()
        scores.append(np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64))
    return float(np.max(np.abs(scores[0] - scores[1])))


Body = tuple[bytes, dict[str, str]]
JSON_HEADERS = {"Content-Type": "application/json"}


def request_bodies(events: Any, matrix: np.ndarray, big_rows: int) -> dict[str, list[Body]]:
    """The request bodies of each scenario (several distinct ones, sent in turn)."""
    bigs = [_tile(np.roll(matrix, -k * 37, axis=0), big_rows) for k in range(8)]
    return {
        "a_oip_json": [(oip_json(matrix[i:i + 1]), JSON_HEADERS) for i in range(256)],
        "b_oip_json": [(oip_json(big), JSON_HEADERS) for big in bigs],
        "b_oip_binary": [oip_binary(big) for big in bigs],
        "b_oip_json_nan": [(oip_json_nan(big), JSON_HEADERS) for big in bigs],
        "a_oip_binary": [oip_binary(matrix[i:i + 1]) for i in range(256)],
        "a_grpc": [(grpc_infer(matrix[i:i + 1]), {}) for i in range(256)],
        "b_grpc": [(grpc_infer(big), {}) for big in bigs],
        "a_events": [(events_json(events[i:i + 1]), JSON_HEADERS) for i in range(256)],
        "b_events": [(events_json(events[k * 100:k * 100 + big_rows]), JSON_HEADERS)
                     for k in range(4)],
    }


#: scenario -> (path, rows per request or None for --big-rows, concurrency or None for
#: --big-concurrency, served by MLServer too); GRPC_INFER: to the server's gRPC port
SCENARIOS = {
    "a_oip_json": ("/v2/models/hep/infer", 1, 64, True),
    "b_oip_json": ("/v2/models/hep/infer", None, None, True),
    "b_oip_binary": ("/v2/models/hep/infer", None, None, False),
    "b_oip_json_nan": ("/v2/models/hep/infer", None, None, False),
    "a_oip_binary": ("/v2/models/hep/infer", 1, 64, False),
    "a_grpc": (GRPC_INFER, 1, 64, True),
    "b_grpc": (GRPC_INFER, None, None, True),
    "a_events": ("/v2/models/hep/events", 1, 64, False),
    "b_events": ("/v2/models/hep/events", None, None, False),
}
#: the scenarios run on mlaas --workers 2 too (--workers-compare)
WORKER_SCENARIOS = ("a_oip_binary", "b_oip_binary", "a_grpc", "b_grpc")


def run_all(servers: dict[str, int], bodies: dict[str, list[Body]], args: argparse.Namespace,
            workdir: Path, grpc_ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Every scenario on every server, servers interleaved, ``--repeats`` times; the
    median of each figure over the repeats."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {tag: {} for tag in servers}
    for repeat in range(args.repeats):
        for scenario, (path, rows, concurrency, shared) in SCENARIOS.items():
            for tag, port in servers.items():
                if tag == "mlaas_workers2" and scenario not in WORKER_SCENARIOS:
                    continue
                if not tag.startswith("mlaas") and not shared:
                    continue
                target = grpc_ports[tag] if path == GRPC_INFER else port
                figures = run_scenario(
                    workdir, f"{tag}-{scenario}-{repeat}", target, path, bodies[scenario],
                    rows or args.big_rows, concurrency or args.big_concurrency, args)
                runs[tag].setdefault(scenario, []).append(figures)
    return {tag: {scenario: _median(figures) for scenario, figures in by_scenario.items()}
            for tag, by_scenario in runs.items()}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if key == "errors":
            merged[key] = sum(values)
        elif isinstance(value, (int, float)) and None not in values:
            merged[key] = round(float(np.median(values)), 3)
        else:
            merged[key] = value
    merged["repeats"] = len(runs)
    return merged


def summarise(result: dict[str, Any]) -> None:
    """The targets and ratios of the figures measured (those of the scenarios run)."""
    targets: dict[str, Any] = {}
    try:
        rest_targets(result, targets)
    except KeyError as missing:  # --scenarios left one out
        targets["rest_targets_skipped"] = f"needs {missing}"
    try:
        targets.update(grpc_targets(result))
    except KeyError as missing:
        targets["grpc_targets_skipped"] = f"needs {missing}"
    result["targets"] = targets


def rest_targets(result: dict[str, Any], targets: dict[str, Any]) -> None:
    mlaas = result["mlaas"]
    nan_ceiling = result["ceiling"]["nan"]["rows_per_s"]
    zero_ceiling = result["ceiling"]["zeros"]["rows_per_s"]
    binary = mlaas["b_oip_binary"]["rows_per_s"] / nan_ceiling
    json_b = mlaas["b_oip_json"]["rows_per_s"] / zero_ceiling
    targets.update({
        "b_binary_fraction_of_ceiling": round(binary, 3),
        "b_json_fraction_of_ceiling": round(json_b, 3),
        "b_target_met": min(binary, json_b) >= 0.5,
        "a_vs_tfaas_rps": "400-480 on 16-24 cores (published)",
    })
    baselines = {k: v for k, v in result.items() if k.startswith("mlserver")}
    if baselines:
        name, base = max(baselines.items(), key=lambda kv: kv[1]["a_oip_json"]["rps"])
        targets["mlserver_baseline"] = name
        targets["a_rps_ratio"] = round(mlaas["a_oip_json"]["rps"] / base["a_oip_json"]["rps"], 2)
        targets["a_p99_ratio"] = round(
            mlaas["a_oip_json"]["p99_ms"] / base["a_oip_json"]["p99_ms"], 3)
        targets["a_target_met"] = targets["a_rps_ratio"] >= 2 and targets["a_p99_ratio"] <= 1
        best_base_b = max(v["b_oip_json"]["rows_per_s"] for v in baselines.values())
        targets["b_json_rows_ratio_vs_mlserver"] = round(
            mlaas["b_oip_json"]["rows_per_s"] / best_base_b, 2)


def grpc_targets(result: dict[str, Any]) -> dict[str, Any]:
    """gRPC against REST binary and MLServer's gRPC, JSON with NaN against binary, and
    --workers 2 against 1: ratios of figures measured in this run."""
    mlaas = result["mlaas"]
    out: dict[str, Any] = {
        "a_grpc_vs_rest_binary_rps": round(mlaas["a_grpc"]["rps"]
                                           / mlaas["a_oip_binary"]["rps"], 3),
        "b_grpc_vs_rest_binary_rows": round(mlaas["b_grpc"]["rows_per_s"]
                                            / mlaas["b_oip_binary"]["rows_per_s"], 3),
        "b_json_nan_vs_binary_rows": round(mlaas["b_oip_json_nan"]["rows_per_s"]
                                           / mlaas["b_oip_binary"]["rows_per_s"], 3),
    }
    out["grpc_vs_rest_target_met"] = min(out["a_grpc_vs_rest_binary_rps"],
                                         out["b_grpc_vs_rest_binary_rows"]) >= 1
    out["json_nan_target_met"] = out["b_json_nan_vs_binary_rows"] >= 0.5
    baselines = {k: v for k, v in result.items() if k.startswith("mlserver")}
    if baselines:
        for scenario in ("a_grpc", "b_grpc"):  # MLServer's best configuration for each
            name, base = max(baselines.items(), key=lambda kv: kv[1][scenario]["rps"])
            out[f"{scenario}_mlserver_baseline"] = name
            out[f"{scenario}_rps_vs_mlserver"] = round(
                mlaas[scenario]["rps"] / base[scenario]["rps"], 3)
            out[f"{scenario}_p99_vs_mlserver"] = round(
                mlaas[scenario]["p99_ms"] / base[scenario]["p99_ms"], 3)
        out["grpc_vs_mlserver_target_met"] = all(
            out[f"{s}_rps_vs_mlserver"] >= 2 and out[f"{s}_p99_vs_mlserver"] < 1
            for s in ("a_grpc", "b_grpc"))
    ceiling = result.get("grpc_client_ceiling", {})
    for scenario in ("a_grpc", "b_grpc"):
        if scenario in ceiling:
            out[f"{scenario}_fraction_of_client_ceiling"] = round(
                mlaas[scenario]["rps"] / ceiling[scenario]["rps"], 3)
    if "mlaas_workers2" in result:
        two = result["mlaas_workers2"]
        for scenario in WORKER_SCENARIOS:
            out[f"workers2_vs_1_{scenario}_rps"] = round(
                two[scenario]["rps"] / mlaas[scenario]["rps"], 3)
    return out


def start_servers(repo: Path, bundle: Path, matrix: np.ndarray, args: argparse.Namespace,
                  workdir: Path, processes: list[subprocess.Popen[bytes]],
                  result: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Start mlaas and every MLServer configuration; returns tag -> HTTP port and tag ->
    gRPC port."""
    servers = {"mlaas": free_port()}
    grpc_ports = {"mlaas": free_port()}
    processes.append(start_mlaas(repo, servers["mlaas"], workdir / "mlaas.log",
                                 grpc_ports["mlaas"]))
    if args.workers_compare:
        tag = "mlaas_workers2"
        servers[tag], grpc_ports[tag] = free_port(), free_port()
        processes.append(start_mlaas(repo, servers[tag], workdir / f"{tag}.log",
                                     grpc_ports[tag], workers=2))
    if not args.skip_mlserver:
        for item in args.mlserver_configs.split(","):
            workers_text, _, omp = item.partition(":")
            omp_threads = None if omp in ("", "default") else omp
            tag = f"mlserver_pw{workers_text}_omp{omp or 'default'}"
            servers[tag], grpc_ports[tag] = free_port(), free_port()
            processes.append(start_mlserver(bundle, workdir / tag, servers[tag],
                                            int(workers_text), workdir / f"{tag}.log",
                                            grpc_ports[tag], omp_threads))
    for (tag, port), process in zip(servers.items(), processes, strict=True):
        try:  # several servers start at once on a small machine: give them time
            wait_ready(port, process, timeout=300)
        except RuntimeError as err:
            log = (workdir / f"{tag}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{tag}: {err}; its log ends:\n{log}") from None
    big = _tile(matrix, args.big_rows)
    for tag, port in grpc_ports.items():  # real answers, checked by hand (grpc-status 0)
        result.setdefault("grpc_answer_bytes", {})[tag] = {
            "a": check_grpc_answer(port, grpc_infer(matrix[:1]), 1),
            "b": check_grpc_answer(port, grpc_infer(big), args.big_rows)}
    for tag, port in servers.items():
        if tag != "mlaas":  # the same model must give the same scores
            result.setdefault("max_abs_score_diff_vs_mlaas", {})[tag] = check_same_scores(
                servers["mlaas"], port, matrix[:500])
    return servers, grpc_ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all scenarios (servers interleaved); medians")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--big-rows", type=int, default=1000)
    parser.add_argument("--big-concurrency", type=int, default=4)
    parser.add_argument("--mlserver-configs", default="1:1,0:1,1:default",
                        help="MLServer configurations, comma-separated "
                             "parallel_workers:OMP_NUM_THREADS ('default': unset); the best "
                             "one is the baseline")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--workers-compare", action="store_true",
                        help="also run mlaas serve --workers 2 (binary REST and gRPC)")
    parser.add_argument("--client", choices=["h2load", "python"],
                        default="h2load" if shutil.which("h2load") else "python",
                        help="load generator: h2load (nghttp2-client; the default when on "
                             "PATH) or this script's Python ones")
    parser.add_argument("--no-python-figure", action="store_true",
                        help="with --client h2load, skip the second gRPC figure from the "
                             "Python grpc.aio client (mlaas and the echo server, 1 event)")
    parser.add_argument("--scenarios", help="comma-separated subset of the scenarios")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    args = parser.parse_args(argv)
    if args.scenarios:
        for name in set(SCENARIOS) - set(args.scenarios.split(",")):
            del SCENARIOS[name]

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        repo = workdir / "repo"
        bundle = repo / "hep" / "1"
        started = time.perf_counter()
        events, matrix, booster = train(bundle, args.rounds, args.depth)
        result: dict[str, Any] = {
            "benchmark": "bench_serve", "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0],
            "model": {"trees": booster.num_boosted_rounds(), "max_depth": args.depth,
                      "features": int(matrix.shape[1]),
                      "missing_fraction": round(float(np.isnan(matrix).mean()), 3)},
            "ceiling": ceiling(bundle, matrix),
        }
        servers, grpc_ports = start_servers(repo, bundle, matrix, args, workdir, processes,
                                            result)
        bodies = request_bodies(events, matrix, args.big_rows)
        result.update(run_all(servers, bodies, args, workdir, grpc_ports))
        result["grpc_client_ceiling"] = client_ceiling(bodies, args, workdir)
        if args.client == "h2load" and not args.no_python_figure and "a_grpc" in SCENARIOS:
            result["python_grpc_client"] = python_grpc_figure(bodies, args, workdir,
                                                              grpc_ports["mlaas"])
        summarise(result)
        result["load_average_at_end"] = os.getloadavg()[0]
        result["seconds"] = round(time.perf_counter() - started, 1)
        line = json.dumps(result)
        print(line)
        if args.out:
            args.out.write_text(line + "\n")
        return 0
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "echo-grpc":
        echo_grpc_main(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
