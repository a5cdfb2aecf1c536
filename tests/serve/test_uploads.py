"""Uploads against a real uvicorn on 127.0.0.1: hostile archives are refused at the first
member over a limit (413, naming it) while they stream in, other repository writes go on
during an upload, and nothing of a refused or aborted upload stays in the repository."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlaas_dask.client import Client
from mlaas_dask.serve import ServeConfig, create_app

from .archives import gzip_bomb, many_members
from .conftest import AUTH, TOKEN, LiveServer, Trained, tar_bytes

UPLOAD = "/v2/repository/models/{}/upload"
GIB = 1024**3


def _repo_left(live: LiveServer) -> list[str]:
    """Everything in the repository folder but the state file."""
    root: Path = live.app.state.server.config.models
    return sorted(p.name for p in root.iterdir() if p.name != ".mlaas-repository.json")


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_gzip_bomb_is_refused_at_its_header(live_server: LiveServer):
    """8.5 MB that unpack to 8 GiB (one file): refused from the member's header."""
    bomb = gzip_bomb([("bundle/model.ubj", 8 * GIB)])
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        response = http.post(UPLOAD.format("bomb"), content=bomb, headers=AUTH)
        message = _error(response, 413)
        assert "member 'bundle/model.ubj' unpacks to 8589934592 bytes" in message
        assert "at most 536870912 bytes per file are allowed (the per-file limit)" in message
        assert http.get("/v2/models/hep").json()["versions"] == ["1", "2"]
    assert _repo_left(live_server) == ["hep"]


def test_bomb_of_small_files_stops_at_the_total(start_server, make_repo):
    """Files each under the per-file limit: refused at the first one beyond the total,
    with the files unpacked so far removed."""
    config = ServeConfig(models=make_repo(), threads=1, poll_s=0,
                         max_upload_unpacked_bytes=8 * 1024 * 1024)
    live = start_server(create_app(config, token=TOKEN))
    bomb = gzip_bomb([(f"bundle/part{i}", 4 * 1024 * 1024) for i in range(64)])  # 256 MiB
    with httpx.Client(base_url=live.url, timeout=60) as http:
        message = _error(http.post(UPLOAD.format("hep"), content=bomb, headers=AUTH), 413)
    assert message == ("The uploaded archive unpacks to more than 8388608 bytes (the limit "
                       "on all files together), reached at member 'bundle/part2'.")
    assert _repo_left(live) == ["hep"]
    assert sorted(p.name for p in (live.app.state.server.config.models / "hep").iterdir()) \
        == ["1", "2"]


def test_many_members_are_refused_at_the_first_beyond_the_limit(live_server: LiveServer):
    archive = many_members(300_000)
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        message = _error(http.post(UPLOAD.format("many"), content=archive, headers=AUTH), 413)
        assert message.startswith("The uploaded archive has more than 64 members (the limit)")
        assert http.get("/v2/health/ready").is_success
    assert _repo_left(live_server) == ["hep"]


def _held_upload(url: str, archive: bytes, gate: threading.Event,
                 sent: threading.Event, result: dict[str, httpx.Response]) -> threading.Thread:
    """An upload whose body stops half-way until ``gate`` is set."""

    def body() -> Iterator[bytes]:
        yield archive[: len(archive) // 2]
        sent.set()
        gate.wait(60)
        yield archive[len(archive) // 2:]

    def post() -> None:
        with httpx.Client(base_url=url, timeout=90) as http:
            result["response"] = http.post(UPLOAD.format("hep"), content=body(), headers=AUTH)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_other_writes_go_on_during_an_upload(live_server: LiveServer, bundle_archive: bytes,
                                             trained: Trained):
    """While an upload is being unpacked (its body half received), a delete, a reload,
    another upload and predictions all complete; then the held upload completes too."""
    root: Path = live_server.app.state.server.config.models
    gate, sent = threading.Event(), threading.Event()
    result: dict[str, httpx.Response] = {}
    thread = _held_upload(live_server.url, bundle_archive, gate, sent, result)
    try:
        assert sent.wait(30)
        staging = _wait_for(lambda: [p for p in root.iterdir() if p.name.startswith(".upload-")])
        assert len(staging) == 1  # the held upload, being unpacked as it arrives
        http = httpx.Client(base_url=live_server.url, timeout=10)  # a lock would time out
        with Client(http=http, token=TOKEN) as admin:
            admin.delete("hep", 1)
            assert admin.load("hep") == {"name": "hep", "versions": ["2"]}
            assert admin.upload("other", bundle_archive) == "1"
            assert admin.score_events("other", trained.events[:5]).shape == (5,)
        assert "response" not in result  # the held upload is still waiting for its body
    finally:
        gate.set()
        thread.join(60)
    assert result["response"].status_code == 201, result["response"].text
    assert result["response"].json() == {"name": "hep", "version": "3"}
    assert _repo_left(live_server) == ["hep", "other"]
    assert sorted(p.name for p in (root / "hep").iterdir()) == ["2", "3"]


def _wait_for(found: Callable[[], list[Path]]) -> list[Path]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.01)
    return []


def test_client_disconnecting_mid_upload_is_a_client_abort(live_server: LiveServer,
                                                           bundle_archive: bytes,
                                                           caplog: pytest.LogCaptureFixture):
    """A client that sends half its upload and disconnects: one INFO line, counted as 499
    (not an ERROR with a traceback and a 500), and no staging folder is left."""
    caplog.set_level("INFO", logger="mlaas_dask.serve")
    head = (f"POST {UPLOAD.format('hep')} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(bundle_archive)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(head.encode() + bundle_archive[: len(bundle_archive) // 2])
    metrics = _wait_for_metric(live_server, 'endpoint="upload",model="",status="499"')
    assert 'status="500"' not in metrics
    assert _repo_left(live_server) == ["hep"]
    records = [r for r in caplog.records if r.name == "mlaas_dask.serve"]
    assert [r.levelname for r in records if "disconnected" in r.getMessage()] == ["INFO"]
    assert not [r for r in records if r.levelno >= 40]


def _wait_for_metric(live: LiveServer, label: str) -> str:
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{live.url}/metrics").text
        if label in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{label} never appeared in /metrics:\n{text}")


def test_uploaded_versions_are_0755_like_trained_bundles(live_server: LiveServer,
                                                         bundle_archive: bytes,
                                                         trained: Trained):
    with Client(live_server.url, token=TOKEN) as admin:
        assert admin.upload("hep", bundle_archive) == "3"
    root: Path = live_server.app.state.server.config.models
    assert (root / "hep" / "3").stat().st_mode & 0o777 == 0o755
    assert trained.path.stat().st_mode & 0o777 == 0o755


def test_failed_upload_leaves_no_model_folder(live_server: LiveServer, trained: Trained):
    members = {f"b/{p.name}": p.read_bytes() for p in trained.path.iterdir()}
    members["b/model.ubj"] = b"{garbage"
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        for archive in (b"not an archive", tar_bytes(members), tar_bytes({"b/x": b"1"})):
            assert http.post(UPLOAD.format("fresh"), content=archive,
                             headers=AUTH).status_code == 400
        assert "Unknown model 'fresh'" in _error(http.get("/v2/models/fresh"), 404)
    assert _repo_left(live_server) == ["hep"]


def test_leftovers_of_an_interrupted_upload_are_removed_at_start(start_server, make_repo):
    """A server killed mid-upload leaves a hidden staging folder: the next start removes
    it once it is old (a fresh one may be another process's upload in progress)."""
    import os

    root = make_repo()
    old, fresh = root / ".upload-hep-old", root / ".upload-hep-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "model.ubj").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    start_server(create_app(ServeConfig(models=root, threads=1, poll_s=0), token=TOKEN))
    assert not old.exists() and fresh.exists()
