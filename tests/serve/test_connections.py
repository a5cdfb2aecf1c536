"""Connection limits against a real uvicorn on 127.0.0.1: slow request heads (slowloris)
are closed, a full server answers 503 at once instead of hanging, idle keep-alive
connections make room for active clients, oversized heads are refused."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import httpx

from mlaas_dask.serve import ServeConfig, create_app

from .conftest import TOKEN, LiveServer

HEAD = (b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"
        b"X-Padding: " + b"a" * 200 + b"\r\n\r\n")


def _server(start_server: Callable[..., LiveServer], make_repo: Callable[..., object],
            **settings: object) -> LiveServer:
    config = ServeConfig(models=make_repo(), threads=1, poll_s=0, **settings)
    return start_server(create_app(config, token=TOKEN))


def _connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def _read_until_closed(sock: socket.socket, wait: float) -> bytes | None:
    """What the server sent before closing ``sock``, or ``None`` if it is still open
    after ``wait`` seconds (a bound against hanging, not a measurement)."""
    received = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_slowloris_heads_are_closed_before_they_complete(start_server, make_repo):
    """Twenty clients send their request head one byte per second, five send nothing:
    the server answers 408 and closes every one of them long before a head completes
    (it would take 270 s), and keeps serving."""
    live = _server(start_server, make_repo, header_timeout_s=2.0)
    slow = _connect(live.port, 20)
    silent = _connect(live.port, 5)
    answers: dict[socket.socket, bytes] = {}
    sent = 0
    while sent < len(HEAD) and len(answers) < len(slow):
        for sock in slow:
            if sock not in answers:
                try:
                    sock.send(HEAD[sent:sent + 1])
                except OSError:  # closed by the server meanwhile
                    answers[sock] = _read_until_closed(sock, 1.0) or b""
        sent += 1
        readable, _, _ = select.select([s for s in slow if s not in answers], [], [], 1.0)
        for sock in readable:
            answer = _read_until_closed(sock, 1.0)
            if answer is not None:
                answers[sock] = answer
    assert len(answers) == len(slow), f"{len(slow) - len(answers)} slow clients still open"
    assert sent < len(HEAD)  # closed before any head was complete
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 2 s" in a
               for a in answers.values()), set(answers.values())
    for sock in silent:
        assert (_read_until_closed(sock, 30) or b"").startswith(b"HTTP/1.1 408 ")
    with httpx.Client(base_url=live.url, timeout=5) as http:
        assert http.get("/v2/health/live").json() == {"live": True}
    for sock in slow + silent:
        sock.close()


def test_full_server_answers_503_at_once_and_recovers(start_server, make_repo):
    """With the connection cap taken by slow clients, another client gets a 503 at once
    (not a hang); once the slow clients are dropped, clients are served again."""
    live = _server(start_server, make_repo, max_connections=8, header_timeout_s=3.0)
    slow = _connect(live.port, 8)
    for sock in slow:
        sock.send(b"GET /v2/health/live HTTP/1.1\r\n")  # and never the rest
    with httpx.Client(base_url=live.url, timeout=5) as http:
        response = http.get("/v2/health/live")
        assert response.status_code == 503, response.text
        for sock in slow:  # the head timeout drops them
            assert (_read_until_closed(sock, 30) or b"").startswith(b"HTTP/1.1 408 ")
            sock.close()
        assert http.get("/v2/health/live").json() == {"live": True}


def test_idle_keep_alive_connections_make_room(start_server, make_repo):
    """Clients that keep idle connections open never lock out a new one: at the cap, the
    connection idle the longest is closed and the new request is served."""
    live = _server(start_server, make_repo, max_connections=4, keep_alive_s=60.0)
    idle = [httpx.Client(base_url=live.url, timeout=5) for _ in range(3)]
    try:
        for client in idle:  # three kept-alive connections, idle after one request
            assert client.get("/v2/health/live").is_success
        with httpx.Client(base_url=live.url, timeout=5) as fresh:
            for _ in range(3):
                assert fresh.get("/v2/health/live").json() == {"live": True}
        for client in idle:  # and the clients whose connection was closed reconnect
            assert client.get("/v2/health/live").is_success
    finally:
        for client in idle:
            client.close()


def test_oversized_request_head_is_431(start_server, make_repo):
    live = _server(start_server, make_repo, max_header_bytes=4096)
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(20):
                sock.sendall(b"X-Filler: " + b"b" * 1000 + b"\r\n")
        except OSError:
            pass  # closed by the server
        answer = _read_until_closed(sock, 10) or b""
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"larger than 4096 bytes" in answer
    with httpx.Client(base_url=live.url, timeout=5) as http:  # normal heads pass
        assert http.get("/v2/health/live", headers={"X-Big": "c" * 3000}).is_success
