"""Against a real uvicorn on 127.0.0.1 (ephemeral port): httpx, tritonclient (JSON and
binary), the mlaas client, a reload under load with zero failed requests, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.client import Client, ServerError

from .conftest import AUTH, TOKEN, LiveServer, Trained, read_events, wait_ready
from servers import stop_process


def test_httpx_events_and_infer(live_server: LiveServer, trained: Trained):
    bundle = ModelBundle.load(trained.path)
    events = trained.events[:20]
    with Client(live_server.url, token=TOKEN) as client:
        assert client.live() and client.ready()
        scores = client.score_events("hep", events)
        np.testing.assert_allclose(scores, bundle.predict_events(events), atol=1e-6)
        matrix = trained.matrix[:20]  # NaN padding, sent as NaN literals
        assert np.isnan(matrix).any()
        outputs = client.infer("hep", matrix, binary=False)
        np.testing.assert_allclose(outputs["score"], bundle.predict_matrix(matrix), atol=1e-6)
    with httpx.Client(base_url=live_server.url) as http:
        response = http.post("/v2/models/hep/events", content=b"[NaN]")
        assert response.status_code == 400 and "Send events as" in response.json()["error"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient(live_server: LiveServer, trained: Trained, binary: bool):
    import tritonclient.http as triton

    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:64]  # NaN padding, in JSON too
    client = triton.InferenceServerClient(f"127.0.0.1:{live_server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("hep") and client.is_model_ready("hep", "1")
        meta = client.get_model_metadata("hep")
        assert meta["inputs"][0]["shape"] == [-1, 19]
        infer_input = triton.InferInput("features", list(matrix.shape), "FP32")
        infer_input.set_data_from_numpy(matrix, binary_data=binary)
        outputs = [triton.InferRequestedOutput("score", binary_data=binary)]
        result = client.infer("hep", [infer_input], outputs=outputs, model_version="2",
                              request_id="abc")
        np.testing.assert_allclose(result.as_numpy("score"), bundle.predict_matrix(matrix),
                                   atol=1e-6)
        assert result.get_response()["id"] == "abc"
        default = client.infer("hep", [infer_input])  # no outputs: binary by default
        np.testing.assert_array_equal(default.as_numpy("score"), result.as_numpy("score"))
        index = client.get_model_repository_index()
        assert {(m["name"], m["version"]) for m in index} == {("hep", "1"), ("hep", "2")}
        with pytest.raises(triton.InferenceServerException, match="Unknown model 'nope'"):
            client.infer("nope", [infer_input])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        client.unload_model("hep", headers=headers)
        assert not client.is_model_ready("hep")
        client.load_model("hep", headers=headers)
        assert client.is_model_ready("hep")
        with pytest.raises(triton.InferenceServerException, match="needs a bearer token"):
            client.unload_model("hep")
    finally:
        client.close()


def test_reload_under_load_fails_no_request(live_server: LiveServer, trained: Trained,
                                            bundle_archive: bytes):
    """Eight clients score events and matrices while the model is reloaded, a new version
    is uploaded and an old one deleted: every request succeeds."""
    rows = [trained.events[i:i + 1].to_list()[0] for i in range(8)]
    matrix = np.nan_to_num(trained.matrix[:4]).tolist()
    infer = {"inputs": [{"name": "features", "shape": [4, 19], "datatype": "FP32",
                         "data": matrix}]}
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def hammer(kind: str) -> None:
        with httpx.Client(base_url=live_server.url, timeout=10) as http:
            for _ in range(2000):  # bounded
                if stop.is_set():
                    break
                if kind == "events":
                    response = http.post("/v2/models/hep/events", json={"events": rows})
                else:
                    response = http.post("/v2/models/hep/infer", json=infer)
                with lock:
                    if response.status_code == 200:
                        counts["ok"] += 1
                    else:
                        counts["failed"] += 1
                        failures.append(response.text)

    threads = [threading.Thread(target=hammer, args=("events" if i % 2 else "infer",))
               for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        with Client(live_server.url, token=TOKEN) as admin:
            time.sleep(0.3)
            for _ in range(3):
                admin.load("hep")
                time.sleep(0.2)
            assert admin.upload("hep", bundle_archive) == "3"
            time.sleep(0.2)
            admin.delete("hep", 1)
            admin.load("hep")
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == [] and counts["failed"] == 0
    assert counts["ok"] > 50
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert 'mlaas_model_loads_total{model="hep",result="ok"}' in metrics


# Starting the shared Dask cluster (the ``client`` fixture) now and then drops a socket
# whose connection attempt was refused while a worker came up (inside distributed), which
# surfaces as an unraisable ResourceWarning wherever the garbage collector next runs. It is
# collected here, inside this test, where it is ignored, not in an unrelated test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_event_endpoint_equals_mlaas_predict(client, live_server: LiveServer, trained: Trained,
                                             tmp_path: Path, hep_tutorial: Path):
    """The event endpoint and batch scoring on the Dask cluster (``mlaas predict``) agree
    to 1e-6 on every event of a real file."""
    import gc

    import pyarrow.parquet as pq

    from mlaas_dask.predict import predict_files

    source = hep_tutorial / "ww.root"
    result = predict_files(trained.path, [str(source)], tmp_path / "scores", tree="events",
                           cluster=client, progress=False)
    table = pq.read_table(result.parquet).to_pandas().sort_values("entry")
    events = read_events(source, trained.spec)
    assert len(table) == len(events) == 4580
    with Client(live_server.url) as http:
        served = http.score_events("hep", events)
    np.testing.assert_allclose(served, table["score"].to_numpy(), rtol=0, atol=1e-6)
    gc.collect()


# -- the command line ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlaas_dask", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _stop(process: subprocess.Popen[bytes]) -> str:
    stop_process(process, signal.SIGINT, timeout=20)
    assert process.stdout is not None
    with process.stdout:
        return process.stdout.read().decode()


def test_cli_serves_and_stops(make_repo, trained: Trained, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = _free_port()
    process = _start_cli(["--models", str(make_repo()), "--port", str(port),
                          "--token-file", str(token_file), "--max-request-rows", "10",
                          "--log-level", "warning"])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            _wait_up(http, process)
            client = Client(http=http, token=TOKEN)
            assert client.score_events("hep", trained.events[:3]).shape == (3,)
            with pytest.raises(ServerError, match="at most 10 are allowed"):
                client.score_events("hep", trained.events[:11])
            assert http.post("/v2/repository/models/hep/unload", headers=AUTH).is_success
    finally:
        output = _stop(process)
    assert process.returncode == 0, output


def _wait_up(http: httpx.Client, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {_stop(process)}")
        try:
            wait_ready(http.get, timeout=0.5)
            return
        except (httpx.TransportError, AssertionError):
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    from mlaas_dask.cli import main

    assert main(["serve", "--models", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    assert main(["serve", "--models", str(tmp_path), "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["serve", "--models", str(tmp_path), "--workers", "0"]) == 2
    assert "workers (--workers): must be at least 1, not 0" in capsys.readouterr().err
    assert main(["serve", "--models", str(tmp_path), "--header-timeout", "0"]) == 2
    assert "(--header-timeout): must be above 0, not 0" in capsys.readouterr().err
    assert main(["serve", "--models", str(tmp_path), "--max-connections", "0"]) == 2
    assert "max_connections (--max-connections): must be at least 1" in capsys.readouterr().err


def test_cli_connection_and_upload_limits(tmp_path: Path):
    from mlaas_dask.cli import build_parser
    from mlaas_dask.cli.serve import config_from_args
    from mlaas_dask.serve.connections import uvicorn_options

    args = build_parser().parse_args([
        "serve", "--models", str(tmp_path), "--max-connections", "50", "--header-timeout",
        "2.5", "--keep-alive", "4", "--max-header-kb", "16", "--max-unpacked-mb", "100"])
    config = config_from_args(args)
    assert (config.max_connections, config.header_timeout_s, config.keep_alive_s,
            config.max_header_bytes) == (50, 2.5, 4.0, 16 * 1024)
    assert config.upload_limits.unpacked_bytes == config.upload_limits.member_bytes == \
        100 * 1024 * 1024
    options = uvicorn_options(config)
    assert options["limit_concurrency"] == 50 and options["timeout_keep_alive"] == 4.0
    assert options["http"].header_timeout_s == 2.5
    assert options["http"].max_header_bytes == 16 * 1024
    defaults = config_from_args(build_parser().parse_args(["serve", "--models", str(tmp_path)]))
    assert (defaults.max_connections, defaults.header_timeout_s, defaults.keep_alive_s) == \
        (1000, 10.0, 30.0)


@pytest.mark.slow
def test_cli_workers_share_the_repository(make_repo, trained: Trained, bundle_archive: bytes):
    """With two worker processes, an upload through one is served by both within the
    poll interval."""
    port = _free_port()
    process = _start_cli(["--models", str(make_repo()), "--port", str(port), "--workers",
                          "2", "--log-level", "warning"], env={"MLAAS_SERVE_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as http:
            _wait_up(http, process)
            assert Client(http=http, token=TOKEN).upload("hep", bundle_archive) == "3"
        deadline = time.monotonic() + 15
        seen: list[list[str]] = []
        while time.monotonic() < deadline:
            # new connections land on either process (503 while one is still loading)
            seen = [httpx.get(f"{url}/v2/models/hep").json().get("versions", [])
                    for _ in range(12)]
            if all(versions == ["1", "2", "3"] for versions in seen):
                break
            time.sleep(0.2)
        assert all(versions == ["1", "2", "3"] for versions in seen), seen
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
