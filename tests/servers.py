"""Real data servers for the remote-reading tests and benchmarks, all on 127.0.0.1.

- :class:`XRootDServer`: Debian's ``xrootd`` daemon (it refuses to run as root, so it runs
  as the ``xrootd`` user), exporting folders read-only.
- :class:`NginxServer`: Debian's ``nginx`` over TLS (a self-signed certificate for
  127.0.0.1, trusted through ``X509_CERT_DIR``), serving files with byte-range requests;
  ``/secure/`` answers 401 without the right bearer token.
- :class:`FaultProxy`: a TCP proxy on loopback in front of either that adds latency, cuts
  connections in the middle of a transfer and refuses connections (closes its port).

Run ``python tests/servers.py proxy LISTEN_PORT TARGET_PORT --latency 0.01`` for a proxy in
its own process (the benchmark does this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

LOCALHOST = "127.0.0.1"


class MissingProgram(RuntimeError):
    """A daemon the tests need is not installed and could not be installed here."""


_install_tried: set[str] = set()


def ensure_program(program: str, *packages: str) -> None:
    """Make sure ``program`` is on PATH: install the Debian ``packages`` with apt-get when
    this process may (root, or passwordless sudo), else raise :class:`MissingProgram`
    whose message is the install command. ``MLAAS_NO_APT=1`` turns installing off."""
    if shutil.which(program):
        return
    command = f"apt-get install {' '.join(packages)}"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    may_install = (os.environ.get("MLAAS_NO_APT") != "1" and program not in _install_tried
                   and shutil.which("apt-get") and (not sudo or shutil.which("sudo")))
    _install_tried.add(program)
    if may_install:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", *packages]):
            done = subprocess.run([*sudo, *step], env=env, capture_output=True, text=True,
                                  timeout=900, check=False)
            if done.returncode != 0:
                raise MissingProgram(f"{program} is not installed and '{' '.join(step)}' "
                                     f"failed ({done.stderr.strip()[-300:]}); run: {command}")
    if not shutil.which(program):
        raise MissingProgram(f"{program} is not installed; run: {command} (.ci/run does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, process: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{text}")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOCALHOST}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> None:
    """Send ``sig`` to a running process, then kill it if it has not exited in time."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _set_pdeathsig() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _die_with_parent():
    """For Popen's preexec_fn: the server gets SIGTERM when the test process dies,
    however it dies. The signal follows the *thread* that started the server, so only
    servers started from the main thread get it."""
    return _set_pdeathsig if threading.current_thread() is threading.main_thread() else None


def served_dir(prefix: str = "mlaas-served-") -> Path:
    """A folder under /tmp that the server users (xrootd, nobody) can read: pytest's
    tmp_path is private to root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class XRootDServer:
    """``xrootd`` exporting ``exports`` read-only on 127.0.0.1:``port``, as user xrootd."""

    def __init__(self, exports: Sequence[str | Path], port: int | None = None,
                 localroot: Path | None = None) -> None:
        ensure_program("xrootd", "xrootd-server")
        self.exports = [str(e) for e in exports]
        self.localroot = localroot
        self.port = port or free_port()
        self.home = served_dir("mlaas-xrootd-")
        for sub in ("admin", "run"):
            (self.home / sub).mkdir()
        self.log = self.home / "xrootd.log"
        self.config = self.home / "xrootd.cfg"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"root://{LOCALHOST}:{self.port}"

    def start(self) -> XRootDServer:
        exports = "\n".join(f"all.export {e} r/o" for e in self.exports)
        if self.localroot is not None:  # paths in URLs are under this folder (like /store)
            exports += f"\noss.localroot {self.localroot}"
        self.config.write_text(
            f"xrd.port {self.port}\n"
            "xrd.allow host localhost\n"
            f"{exports}\n"
            f"all.adminpath {self.home / 'admin'}\n"
            f"all.pidpath {self.home / 'run'}\n"
        )
        user = pwd.getpwnam("xrootd")
        for path in (self.home, self.home / "admin", self.home / "run"):
            os.chown(path, user.pw_uid, user.pw_gid)
        if self.log.exists():
            os.chown(self.log, user.pw_uid, user.pw_gid)
        command = ["xrootd", "-c", str(self.config), "-l", str(self.log)]
        options: dict = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT,
                         "start_new_session": True, "preexec_fn": _die_with_parent()}
        if os.geteuid() == 0:
            options.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        # a restart right after a stop can find the old instance's port or pid file still
        # held for a moment, and xrootd then exits at once: try again, a few times
        for attempt in range(5):
            self.process = subprocess.Popen(command, **options)
            try:
                wait_for_port(self.port, process=self.process, log=self.log)
                return self
            except RuntimeError:
                if self.process.poll() is None or attempt == 4:
                    raise
                time.sleep(1.0)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def make_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 and a CA folder (hashed names, as
    /etc/grid-security/certificates) that trusts it. Returns (cert, key, ca_dir)."""
    cert, key, ca_dir = folder / "server.pem", folder / "server.key", folder / "ca"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    ca_dir.mkdir()
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
                            check=True, capture_output=True, text=True).stdout.strip()
    shutil.copy(cert, ca_dir / f"{digest}.0")
    return cert, key, ca_dir


class NginxServer:
    """nginx serving ``root`` over HTTPS with range requests on 127.0.0.1:``port``.

    Files under ``root/secure/`` need ``Authorization: Bearer <token>``. Every request is
    logged (method, URI, status, Range) to :attr:`access_log`.
    """

    def __init__(self, root: Path, token: str = "", port: int | None = None) -> None:
        ensure_program("nginx", "nginx-light", "openssl")
        self.root = Path(root)
        self.token = token
        self.port = port or free_port()
        self.home = served_dir("mlaas-nginx-")
        self.cert, self.key, self.ca_dir = make_certificate(self.home)
        self.access_log = self.home / "access.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    def start(self) -> NginxServer:
        home = self.home
        secure = ""
        if self.token:
            secure = (
                "location /secure/ {\n"
                f'  if ($http_authorization != "Bearer {self.token}") {{ return 401; }}\n'
                "}\n"
            )
        (home / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes 2;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 256; }}
http {{
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path {home}/body;
  proxy_temp_path {home}/proxy;
  fastcgi_temp_path {home}/fastcgi;
  uwsgi_temp_path {home}/uwsgi;
  scgi_temp_path {home}/scgi;
  log_format ranges '$request_method $uri $status "$http_range"';
  access_log {self.access_log} ranges;
  server {{
    listen {LOCALHOST}:{self.port} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    root {self.root};
    {secure}
  }}
}}
""")
        log = home / "stderr.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                ["nginx", "-c", str(home / "nginx.conf"), "-p", str(home)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent())  # noqa: PLW1509 - prctl must run in the child
        wait_for_port(self.port, process=self.process, log=log)
        return self

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``, running its own event loop
    in a thread.

    - ``latency``: seconds added in each direction (0.01 = 20 ms per round trip), as a
      delay line: throughput is not limited.
    - :meth:`drop_connections`: ``count`` times, the connection that carries the
      ``after_bytes``-th byte from the server (counted from now, over all connections,
      open or new) is cut there -- a transfer dropped in the middle.
    - :meth:`refuse`: close the port (clients get "connection refused") for ``seconds``,
      or until :meth:`accept` (``seconds=None``); open connections are cut.
    """

    def __init__(self, target_port: int, latency: float = 0.0, port: int | None = None) -> None:
        self.target_port = target_port
        self.latency = latency
        self.port = port or free_port()
        self.bytes_down = 0  # server -> client
        self.connections = 0
        self.dropped = 0
        self.refused_since: float | None = None
        self._drop_plan: list[int] = []
        self._budget: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, self.port,
                                                  reuse_address=True)
        self.refused_since = None

    async def _close_port(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self.refused_since = time.monotonic()

    def refuse(self, seconds: float | None = None) -> None:
        self._call(self._close_port())
        if seconds is not None:
            self._loop.call_soon_threadsafe(
                self._loop.call_later, seconds,
                lambda: asyncio.ensure_future(self._listen()))

    def accept(self) -> None:
        if self._server is None:
            self._call(self._listen())

    def drop_connections(self, count: int, after_bytes: int) -> None:
        def arm() -> None:
            self._drop_plan[:] = [after_bytes] * count
            self._budget = after_bytes if count else None
        self._call(_as_coroutine(arm))

    def reset_counters(self) -> None:
        self.bytes_down = self.connections = self.dropped = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOCALHOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer, False),
                                 self._pipe(up_reader, writer, True),
                                 return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    down: bool) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                delay = due - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                if down:
                    if self._budget is not None:
                        if len(data) >= self._budget:
                            data = data[:self._budget]
                            queue.put_nowait((self._loop.time() + self.latency, data))
                            self.dropped += 1
                            self._drop_plan.pop(0)
                            self._budget = self._drop_plan[0] if self._drop_plan else None
                            raise ConnectionResetError("dropped by the fault proxy")
                        self._budget -= len(data)
                    self.bytes_down += len(data)
                queue.put_nowait((self._loop.time() + self.latency, data))
        finally:
            queue.put_nowait((0.0, None))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, 30)

    async def _shutdown(self) -> None:
        self.latency = 0.0
        await self._close_port()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        _done, pending = await asyncio.wait(tasks, timeout=2) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
                self._loop.close()


async def _as_coroutine(function) -> None:
    function()


def _main() -> None:
    parser = argparse.ArgumentParser(description="fault proxy in its own process")
    parser.add_argument("what", choices=["proxy"])
    parser.add_argument("port", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    proxy = FaultProxy(args.target, args.latency, port=args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    proxy.close()


if __name__ == "__main__":
    _main()
