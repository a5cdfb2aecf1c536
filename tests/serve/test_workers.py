"""``mlaas serve --workers 2`` as a real process tree on 127.0.0.1: one Prometheus view over
the worker processes, a load, unload and delete reaching every worker, gRPC served by both,
and SIGTERM draining the requests in flight before exiting 0."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from .conftest import AUTH, TOKEN, Trained
from .test_integration import _free_port, _start_cli, _stop, _wait_up


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{.*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def every_worker_sees(url: str, check: Callable[[httpx.Response], bool], path: str,
                      timeout: float = 15.0) -> bool:
    """Whether 12 requests in a row on new connections (so on either process) pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(check(httpx.get(f"{url}{path}", timeout=5)) for _ in range(12)):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_two_workers_one_view_one_repository(make_repo: Callable[..., Path], tmp_path: Path,
                                            trained: Trained):
    import tritonclient.grpc as triton

    port, grpc_port = _free_port(), _free_port()
    metrics_dir = tmp_path / "metrics"
    process = _start_cli(
        ["--models", str(make_repo()), "--port", str(port), "--grpc-port", str(grpc_port),
         "--workers", "2", "--poll", "0.2", "--threads", "1", "--log-level", "warning"],
        env={"MLAAS_SERVE_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    url = f"http://127.0.0.1:{port}"
    matrix = np.nan_to_num(trained.matrix[:2])
    body = orjson.dumps({"inputs": [{"name": "features", "shape": [2, 19],
                                     "datatype": "FP32", "data": matrix.ravel()}]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    try:
        with httpx.Client(base_url=url, timeout=5) as http:
            _wait_up(http, process)
        assert every_worker_sees(url, lambda r: r.status_code == 200, "/v2/health/ready")
        for _ in range(40):  # new connections: either process answers
            assert httpx.post(f"{url}/v2/models/hep/infer", content=body).status_code == 200
        # every scrape, whichever process answers, sums both processes' values
        for _ in range(10):
            text = httpx.get(f"{url}/metrics").text
            assert metric_sum(text, "mlaas_requests_total", endpoint="infer",
                              status="200") == 40
            assert metric_sum(text, "mlaas_model_loads_total", result="ok") == 4  # 2 x 2
            assert metric_sum(text, "mlaas_models_loaded") == 4
        assert len({p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}) >= 2

        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            grpc_input = triton.InferInput("features", [2, 19], "FP32")
            grpc_input.set_data_from_numpy(matrix)
            scores = client.infer("hep", [grpc_input]).as_numpy("score")
            assert scores.shape == (2,)
            client.unload_model("hep", headers={"authorization": f"Bearer {TOKEN}"})
        finally:
            client.close()
        # unloaded through one process (over gRPC): every process stops serving it
        assert every_worker_sees(url, lambda r: r.status_code == 404, "/v2/models/hep/ready")
        assert httpx.post(f"{url}/v2/repository/models/hep/load", headers=AUTH).is_success
        assert every_worker_sees(url, lambda r: r.status_code == 200, "/v2/models/hep/ready")
        assert httpx.delete(f"{url}/v2/repository/models/hep/versions/2",
                            headers=AUTH).is_success
        assert every_worker_sees(url, lambda r: r.json().get("versions") == ["1"],
                                 "/v2/models/hep")
    finally:
        output = _stop(process)
    assert process.returncode == 0, output


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight(make_repo: Callable[..., Path], trained: Trained):
    """A request whose body is still arriving when SIGTERM comes is answered 200, then the
    server exits 0; new connections are refused meanwhile."""
    port = _free_port()
    process = _start_cli(["--models", str(make_repo()), "--port", str(port), "--workers", "2",
                          "--log-level", "warning"])
    matrix = np.nan_to_num(trained.matrix[:3])
    body = orjson.dumps({"inputs": [{"name": "features", "shape": [3, 19],
                                     "datatype": "FP32", "data": matrix.ravel()}]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            _wait_up(http, process)
        # one process ready is not both: the raw connection may land on either
        assert every_worker_sees(f"http://127.0.0.1:{port}", lambda r: r.status_code == 200,
                                 "/v2/health/ready")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /v2/models/hep/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:40])
            time.sleep(0.5)  # the request is in flight in one worker
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            sock.sendall(body[40:])
            response = b""
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        scores = orjson.loads(response.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"]
        assert len(scores) == 3
        process.wait(30)
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
