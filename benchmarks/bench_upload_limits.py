"""How fast hostile uploads are refused, and what they cost the server.

Starts ``mlaas serve`` (its own process, 127.0.0.1, default limits: 64 members, 512 MiB
unpacked) over a repository with one real XGBoost bundle and uploads:

- a gzip bomb: 8.5 MB that unpack to 8 GiB, one file (refused at its header);
- a bomb of 16 files of 512 MiB (8 GiB): the first is unpacked, the second is refused at
  its header (the most work an archive can make the server do under the default limits);
- 300,000 empty members (2.9 MB; refused at the 65th);
- the valid bundle (for comparison).

For each it prints the status, the time from sending to the answer (the client's view),
and the server's peak RSS growth (sampled every 5 ms). While the 16-file bomb is being
unpacked, another client unloads and loads a model over and over: its latency shows that
the upload holds no lock::

    python benchmarks/bench_upload_limits.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE.parent.parent / "shared" / "data" / "cms-hep-tutorial-2012"
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from common import PeakMemory  # noqa: E402
from fuzz_serve import free_port, wait_ready  # noqa: E402
from serve.archives import gzip_bomb, many_members  # noqa: E402
from serve.conftest import tar_bytes, train_bundle  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GIB = 1024**3


def upload(http: httpx.Client, pid: int, name: str, archive: bytes) -> tuple[int, float, float,
                                                                             str]:
    baseline = psutil.Process(pid).memory_info().rss
    with PeakMemory(pid, interval=0.005) as rss:
        start = time.perf_counter()
        response = http.post(f"/v2/repository/models/{name}/upload", content=archive,
                             headers=AUTH)
        seconds = time.perf_counter() - start
    message = response.json().get("error", "") if response.status_code >= 400 else ""
    return response.status_code, seconds, max(0, rss.peak - baseline) / 2**20, message


def writes_meanwhile(url: str, results: list[float], stop: threading.Event) -> None:
    """Unload and load a model over and over, recording each write's latency."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            for action in ("unload", "load"):
                start = time.perf_counter()
                http.post(f"/v2/repository/models/hep/{action}", headers=AUTH).raise_for_status()
                results.append(time.perf_counter() - start)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mlaas-bench-upload-") as folder:
        root = Path(folder)
        bundle = train_bundle(root / "repo" / "hep" / "1", ["background", "signal"],
                              ["ww", "zz"], tutorial=TUTORIAL)
        valid = tar_bytes({f"bundle/{p.name}": p.read_bytes() for p in bundle.path.iterdir()})
        bomb16 = gzip_bomb([(f"bundle/part{i}", GIB // 2) for i in range(16)])
        cases = [  # label, model name, archive, whether another client writes meanwhile
            ("bomb: 1 file of 8 GiB", "bomb1", gzip_bomb([("bundle/model.ubj", 8 * GIB)]),
             False),
            ("bomb: 16 files of 512 MiB", "bomb16", bomb16, False),
            ("  the same, writes meanwhile", "bomb16", bomb16, True),
            ("300,000 empty members", "many", many_members(300_000), False),
            ("valid bundle", "valid", valid, False),
        ]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlaas_dask", "serve", "--models", str(root / "repo"),
             "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "MLAAS_SERVE_TOKEN": TOKEN})
        try:
            wait_ready(url, server)
            print(f"{'upload':<30}{'compressed':>12}{'status':>8}{'answer s':>10}"
                  f"{'RSS +MB':>9}  message")
            with httpx.Client(base_url=url, timeout=300) as http:
                for label, name, archive, writes in cases:
                    latencies: list[float] = []
                    stop = threading.Event()
                    writer = threading.Thread(target=writes_meanwhile,
                                              args=(url, latencies, stop))
                    if writes:
                        writer.start()
                    status, seconds, growth, message = upload(http, server.pid, name,
                                                              archive)
                    if writes:
                        stop.set()
                        writer.join()
                    print(f"{label:<30}{len(archive) / 1e6:>10.1f}MB{status:>8}"
                          f"{seconds:>10.3f}{growth:>9.1f}  {message[:90]}")
                    if latencies:
                        print(f"  {len(latencies)} repository writes (unload/load) by another "
                              f"client meanwhile, the slowest {max(latencies):.3f} s")
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
