"""Remote reading against real servers on 127.0.0.1: XRootD (Debian's xrootd, as user
xrootd), HTTPS with range requests (Debian's nginx), and a TCP fault proxy in front of
them that adds latency, cuts transfers and refuses connections.

Each test asserts what the job did -- retried and succeeded, fell back to the next
redirector, skipped with the right report, or failed with the right message -- and a
successful remote job must score exactly like the same job on the local files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
import yaml

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.data.dataset import Dataset, Group
from mlaas_dask.data.remote import ReadPolicy
from mlaas_dask.errors import DataError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train

from conftest import LogLines, logged, require_programs, write_events
from servers import FaultProxy, NginxServer, XRootDServer, served_dir

pytestmark = pytest.mark.xrootd

TOKEN = "tok-" + "7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"  # what nginx wants on /secure/
N = 3000


def _sample(root: Path, nanoaod: Path) -> None:
    rng = np.random.default_rng(7)
    for sub in ("store/mc", "store/bad", "secure/store/mc", "shared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_events(root / "store/mc/sig.root", n=N, seed=1,
                 extra={"MET_pt": rng.exponential(60, N).astype(np.float32)})
    write_events(root / "store/mc/bkg.root", n=N, seed=2)
    write_events(root / "store/mc/bkg2.root", n=N, seed=3)
    shutil.copy(root / "store/mc/sig.root", root / "secure/store/mc/sig.root")
    shutil.copy(root / "store/mc/bkg.root", root / "secure/store/mc/bkg.root")
    data = (root / "store/mc/bkg2.root").read_bytes()
    (root / "store/bad/truncated.root").write_bytes(data[: len(data) // 3])
    shutil.copy(root / "store/mc/bkg2.root", root / "store/bad/unreadable.root")
    shutil.copy(nanoaod, root / "shared" / nanoaod.name)  # a real CMS NanoAOD file
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    os.chmod(root / "store/bad/unreadable.root", 0o000)


@pytest.fixture(scope="module")
def served(nanoaod: Path) -> Iterator[Path]:
    """The folder both servers export; the daemons are installed first (or skip)."""
    require_programs(("xrootd", "xrootd-server"), ("nginx", "nginx-light", "openssl"))
    root = served_dir()
    _sample(root, nanoaod)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def xrootd(served: Path) -> Iterator[XRootDServer]:
    """Paths in URLs are as on a CMS site: root://127.0.0.1:PORT//store/mc/sig.root."""
    server = XRootDServer(["/store", "/shared"], localroot=served).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def https(served: Path) -> Iterator[NginxServer]:
    server = NginxServer(served, token=TOKEN).start()
    yield server
    server.close()


@pytest.fixture
def trust(https: NginxServer, monkeypatch: pytest.MonkeyPatch) -> NginxServer:
    """Trust the test server's certificate the grid way (X509_CERT_DIR); the variable
    reaches the workers with the credentials."""
    monkeypatch.setenv("X509_CERT_DIR", str(https.ca_dir))
    return https


@pytest.fixture
def proxy(xrootd: XRootDServer) -> Iterator[FaultProxy]:
    p = FaultProxy(xrootd.port).start()
    yield p
    p.close()


quiet = {"progress": False}


def train_on(cluster: Any, job: Any, **kwargs: Any) -> Any:
    """``train`` with ``cluster`` as the current client: with two clients in one process
    xgboost.dask's internal ``wait`` would otherwise use the newest one and deadlock."""
    with cluster.as_current():
        return train(job, cluster=cluster, **kwargs)


@pytest.fixture(scope="module")
def one() -> Iterator[Any]:
    """A one-worker cluster: XGBoost on one worker is deterministic, so a remote job
    must give exactly the local job's model and scores (on two workers the split of
    the data between them moves the quantile sketches a little)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as dask_client:
        yield dask_client


def job(sig: list[str], bkg: list[str], dataset_extra: str = "", **kw: Any) -> Any:
    settings = {"step_size": 1000, "retries": 2, "backoff": 0.05, "timeout": 10,
                **(yaml.safe_load(textwrap.dedent(dataset_extra)) or {})}
    lines = "\n".join(f"  {key}: {json.dumps(value)}" for key, value in settings.items())
    text = f"""
dataset:
{lines}
  groups:
    - {{name: sig, files: {json.dumps(sig)}, label: 1}}
    - {{name: bkg, files: {json.dumps(bkg)}, label: 0}}
features: {{flat: [MET_pt], collections: {{Jet: {{fields: [pt, eta], n: 3}}}}}}
model: {{num_boost_round: 15, early_stopping_rounds: 0, params: {{max_depth: 3}}}}
"""
    return job_from_text(text, **kw)


def run(client: Any, tmp_path: Path, name: str, sig: list[str], bkg: list[str],
        dataset_extra: str = "") -> tuple[Any, LogLines]:
    with logged() as log:
        result = train_on(client, job(sig, bkg, dataset_extra), out=tmp_path / name,
                          **quiet)
    return result, log


@pytest.fixture(scope="module")
def local_result(served: Path, one: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("local")
    return train_on(one, job([str(served / "store/mc/sig.root")],
                             [str(served / "store/mc/bkg.root")]),
                    out=out / "bundle", **quiet)


def same_scores(local: Any, remote: Any, served: Path) -> None:
    """Same data, same features, same split -> the same model and the same scores."""
    assert remote.metrics["auc"] == local.metrics["auc"]
    assert remote.metrics["events_per_class"] == local.metrics["events_per_class"]
    with uproot.open(served / "store/mc/sig.root") as handle:
        events = handle["Events"].arrays()
    a = ModelBundle.load(local.bundle).predict_events(events)
    b = ModelBundle.load(remote.bundle).predict_events(events)
    np.testing.assert_array_equal(a, b)


def report(result: Any) -> dict[str, Any]:
    metadata = json.loads((result.bundle / "metadata.json").read_text())
    return metadata["data_summary"]["read_report"]


# -- sources ---------------------------------------------------------------------------

def test_root_and_https_jobs_score_like_local(one: Any, tmp_path: Path, xrootd: Any,
                                              trust: Any, local_result: Any,
                                              served: Path) -> None:
    for name, base in (("root", f"{xrootd.url}/"), ("https", trust.url)):
        result, log = run(one, tmp_path, name, [f"{base}/store/mc/sig.root"],
                          [f"{base}/store/mc/bkg.root"])
        same_scores(local_result, result, served)
        rep = report(result)
        assert rep["events_read"] == rep["events_planned"] == 2 * N
        assert rep["events_skipped"] == 0 and rep["partitions_skipped"] == []
        assert rep["recovered"] == [] and "Skipped" not in log.text
        files = json.loads((result.bundle / "metadata.json").read_text())["dataset"]["groups"]
        assert files[0]["files"][0]["path"].startswith(f"{name}://127.0.0.1:")
    # nginx answered range requests, never whole files
    gets = [r for r in trust.requests() if r.startswith("GET /store/mc/")]
    assert gets and all(" 206 " in r and '"bytes=' in r for r in gets)


def test_real_nanoaod_file_reads_the_same_everywhere(xrootd: Any, trust: Any,
                                                     nanoaod: Path) -> None:
    branches = ["Jet_pt", "Jet_eta", "MET_pt", "nMuon"]
    arrays = []
    for where in (str(nanoaod), f"{xrootd.url}//shared/{nanoaod.name}",
                  f"davs://127.0.0.1:{trust.port}/shared/{nanoaod.name}"):
        ds = Dataset([Group("g", (where,))], "Events", branches, step_size=70)
        assert ds.entries == 200 and len(ds.partitions) == 3
        arrays.append(ds.read(0, branches, 10, 150))
    for other in arrays[1:]:
        for branch in branches:
            assert other[branch].tolist() == arrays[0][branch].tolist()


def test_root_glob_and_file_list(tmp_path: Path, xrootd: Any, served: Path) -> None:
    ds = Dataset([Group("g", (f"{xrootd.url}//store/mc/bkg*.root",))], "Events", ["MET_pt"])
    assert [f.path for f in ds.files] == [f"{xrootd.url}//store/mc/bkg.root",
                                         f"{xrootd.url}//store/mc/bkg2.root"]
    listing = tmp_path / "files.txt"
    listing.write_text(f"# background\n{xrootd.url}//store/mc/bkg.root\n\n"
                       "/store/mc/bkg2.root  # an LFN\n")
    loaded = job_from_text(f"""
dataset:
  redirectors: ['{xrootd.url}/']
  groups:
    - {{name: sig, files: [{xrootd.url}//store/mc/sig.root], label: 1}}
    - {{name: bkg, file_list: files.txt, label: 0}}
features: {{flat: [MET_pt]}}
""", base=tmp_path)
    assert loaded.dataset.groups[1].files == [f"{xrootd.url}//store/mc/bkg.root",
                                               "/store/mc/bkg2.root"]
    ds = Dataset([Group("g", tuple(loaded.dataset.groups[1].files))], "Events", ["MET_pt"],
                 policy=loaded.dataset.policy)
    assert [f.url for f in ds.files] == [f"{xrootd.url}//store/mc/bkg.root",
                                        f"{xrootd.url}//store/mc/bkg2.root"]
    assert ds.entries == 2 * N


def test_predict_on_remote_files_scores_like_local(client: Any, tmp_path: Path, xrootd: Any,
                                                   local_result: Any, served: Path) -> None:
    import pyarrow.parquet as pq

    from mlaas_dask.predict import predict_files

    tables = []
    for name, base in (("local", str(served)), ("root", f"{xrootd.url}/")):
        files = [f"{base}/store/mc/sig.root", f"{base}/store/mc/bkg.root"]
        predict_files(local_result.bundle, files, tmp_path / name, cluster=client,
                      step_size=1000, progress=False)
        tables.append(pq.read_table(tmp_path / name / "scores.parquet"))
    assert tables[0].num_rows == tables[1].num_rows == 2 * N
    np.testing.assert_array_equal(tables[0].column("score").to_numpy(),
                                  tables[1].column("score").to_numpy())


# -- redirectors and retries -------------------------------------------------------------

def test_lfn_falls_back_to_the_next_redirector(one: Any, tmp_path: Path, xrootd: Any,
                                               trust: Any, proxy: FaultProxy,
                                               local_result: Any, served: Path) -> None:
    """Regional redirector down (refused: retried, then given up), the next one does not
    have the file (404: not retried), the global one has it."""
    proxy.refuse()
    down, missing = f"root://127.0.0.1:{proxy.port}/", f"{trust.url}/elsewhere"
    result, log = run(one, tmp_path, "b", ["/store/mc/sig.root"], ["/store/mc/bkg.root"],
                      f"  redirectors: ['{down}', '{missing}', '{xrootd.url}/']")
    same_scores(local_result, result, served)
    rep = report(result)
    opened = {r["file"]: r for r in rep["recovered"] if r.get("when") == "opening"}
    assert set(opened) == {"/store/mc/sig.root", "/store/mc/bkg.root"}
    sig = opened["/store/mc/sig.root"]
    assert sig["url"] == f"{xrootd.url}//store/mc/sig.root" and sig["fallbacks"] == 2
    causes = [(a["url"], a["transient"]) for a in sig["attempts"]]
    assert causes == [(f"root://127.0.0.1:{proxy.port}//store/mc/sig.root", True)] * 3 + [
        (f"{trust.url}/elsewhere/store/mc/sig.root", False)]
    assert "Connection" in sig["attempts"][0]["error"]
    assert sig["attempts"][3]["error"] == "no such file"
    # partitions were then read where the file was found, first time
    assert all(r.get("when") == "opening" for r in rep["recovered"])
    assert "read from another place" in log.text
    meta = json.loads((result.bundle / "metadata.json").read_text())
    assert meta["dataset"]["reading"]["redirectors"] == [down, missing, f"{xrootd.url}/"]


def test_refused_and_dropped_connections_are_retried(one: Any, tmp_path: Path,
                                                     trust: Any, local_result: Any,
                                                     served: Path) -> None:
    """HTTPS through the proxy: connections refused for a while, then transfers cut in
    the middle; the job retries with backoff and scores like the local one."""
    p = FaultProxy(trust.port).start()
    try:
        p.refuse(seconds=0.6)
        p.drop_connections(count=3, after_bytes=30_000)
        base = f"https://127.0.0.1:{p.port}"
        t0 = time.monotonic()
        result, log = run(one, tmp_path, "r", [f"{base}/store/mc/sig.root"],
                          [f"{base}/store/mc/bkg.root"],
                          "  retries: 6\n  backoff: 0.2")
        assert time.monotonic() - t0 < 60
        assert p.dropped == 3
    finally:
        p.close()
    same_scores(local_result, result, served)
    rep = report(result)
    assert rep["events_read"] == 2 * N and rep["events_skipped"] == 0
    attempts = [a for r in rep["recovered"] for a in r["attempts"]]
    assert all(a["transient"] for a in attempts)
    causes = " ".join(a["error"] for a in attempts)
    assert "cannot connect" in causes  # refused
    assert any(r["tries"] > 1 and r["fallbacks"] == 0 for r in rep["recovered"])
    assert "Recovered" in log.text and "retried" in log.text


def test_server_stopped_mid_job_then_back(one: Any, tmp_path: Path, served: Path,
                                          local_result: Any) -> None:
    """The server stops once the files are opened, as reading starts, and comes back
    1.5 s later: partitions retry with backoff until it answers."""
    server = XRootDServer(["/store"], localroot=served).start()
    restart = threading.Timer(1.5, server.start)

    def stop_when_reading(line: str) -> None:
        if "Reading events" in line:
            server.stop()
            restart.start()

    try:
        base = f"{server.url}/"
        with logged(stop_when_reading):
            result = train_on(one, job([f"{base}/store/mc/sig.root"],
                                       [f"{base}/store/mc/bkg.root"],
                                       "  retries: 8\n  backoff: 0.25"),
                              out=tmp_path / "b", **quiet)
    finally:
        restart.cancel()
        if restart.is_alive():
            restart.join()
        server.close()
    same_scores(local_result, result, served)
    rep = report(result)
    assert rep["events_read"] == 2 * N and rep["partitions_skipped"] == []
    assert rep["recovered"] and all(r["tries"] > 1 for r in rep["recovered"])
    assert all(a["transient"] for r in rep["recovered"] for a in r["attempts"])


def test_server_stopped_mid_job_fails_naming_file_and_cause(client: Any, tmp_path: Path,
                                                            served: Path) -> None:
    server = XRootDServer(["/store"], localroot=served).start()

    def stop_when_reading(line: str) -> None:
        if "Reading events" in line:
            server.stop()

    t0 = time.monotonic()
    try:
        base = f"{server.url}/"
        with pytest.raises(DataError) as err, logged(stop_when_reading):
            train_on(client, job([f"{base}/store/mc/sig.root"], [f"{base}/store/mc/bkg.root"],
                      "  retries: 1\n  backoff: 0.05"),
                     out=tmp_path / "b", **quiet)
    finally:
        server.close()
    assert time.monotonic() - t0 < 60
    message = str(err.value)
    assert message.startswith("Cannot read entries ")
    assert f"{server.url}//store/mc/" in message and "(after 2 attempts)" in message
    assert "Connection error" in message or "Socket error" in message
    assert "dataset.on_error: skip" in message
    assert not (tmp_path / "b").exists()


def test_stalled_server_times_out(tmp_path: Path, xrootd: Any, proxy: FaultProxy) -> None:
    """A server that accepts but never answers: every request gives up after the
    timeout, so opening fails in bounded time instead of hanging."""
    proxy.latency = 3600.0
    t0 = time.monotonic()
    with pytest.raises(DataError) as err:
        Dataset([Group("g", (f"root://127.0.0.1:{proxy.port}//store/mc/sig.root",))],
                "Events", ["MET_pt"], policy=ReadPolicy(timeout=1, retries=1, backoff=0.05))
    elapsed = time.monotonic() - t0
    assert elapsed < 10
    message = str(err.value)
    assert re.search(r"Operation expired|Socket timeout|Hand ?shake", message), message
    assert "(after 2 attempts)" in message
    assert "dataset.on_error: fail" in message


# -- bad files ---------------------------------------------------------------------------

def test_bad_files_are_skipped_with_a_report(client: Any, tmp_path: Path, xrootd: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = f"{xrootd.url}/"
    bad = ["/store/bad/missing.root", "/store/bad/truncated.root", "/store/bad/unreadable.root"]
    result, log = run(client, tmp_path, "s", ["/store/mc/sig.root"],
                      ["/store/mc/bkg.root", *bad],
                      f"  redirectors: ['{base}']\n  on_error: skip\n  min_fraction: 0.3")
    rep = report(result)
    unopened = {u["file"]: u for u in rep["files_unopened"]}
    assert set(unopened) == set(bad)
    assert "[3011]" in unopened["/store/bad/missing.root"]["error"]
    assert "no such file" in unopened["/store/bad/missing.root"]["error"]
    assert "[3010]" in unopened["/store/bad/unreadable.root"]["error"]
    assert "permission denied" in unopened["/store/bad/unreadable.root"]["error"].lower()
    assert "truncated" in unopened["/store/bad/truncated.root"]["error"] or \
        "ROOT file" in unopened["/store/bad/truncated.root"]["error"]
    for item in unopened.values():  # permanent errors: one attempt each, no retry
        assert len(item["attempts"]) == 1 and item["attempts"][0]["transient"] is False
        assert item["attempts"][0]["url"] == f"{xrootd.url}/{item['file']}"
    # exact accounting: what was read is exactly the two good files
    assert rep["files_listed"] == 5 and rep["files_opened"] == 2
    assert rep["events_planned"] == rep["events_read"] == 2 * N
    # the event fraction is of the files that opened; the files that did not count apart
    assert rep["fraction_read"] == 1.0 and rep["fraction_files_opened"] == pytest.approx(0.4)
    assert rep["max_files_unopened"] == 3  # (1 - 0.3) x 5 files, rounded down
    assert result.metadata["data_summary"]["events_read"] == 2 * N
    assert sum(map(sum, result.metrics["events_per_class"].values())) == 2 * N
    assert "Skipped 3 files that did not open" in log.text
    assert "Skipping /store/bad/missing.root (dataset.on_error: skip)" in log.text
    assert "/store/bad/truncated.root (whole file, 1 attempts)" in log.text


def test_skipped_partitions_are_reported_exactly(client: Any, tmp_path: Path,
                                                 served: Path) -> None:
    """Files open, then the server goes away for good: every partition is skipped with
    its entry range; the job fails because a class lost all its events or, with the
    background still readable locally, because too little was read."""
    server = XRootDServer(["/store"], localroot=served).start()

    def stop_when_reading(line: str) -> None:
        if "Reading events" in line:
            server.stop()

    local_bkg = str(served / "store/mc/bkg.root")
    try:
        sig = f"{server.url}//store/mc/sig.root"
        with pytest.raises(DataError) as err, logged(stop_when_reading):
            train_on(client, job([sig, str(served / "store/mc/bkg2.root")], [local_bkg],
                      "  retries: 0\n  on_error: skip\n  min_fraction: 0.9"),
                     out=tmp_path / "a", **quiet)
        message = str(err.value)
        assert message.startswith("Only 66.7% of the dataset could be read (6,000 of 9,000 "
                                  "events in the 3 of 3 files that opened; 0 files did not "
                                  "open, 3 partitions failed), under dataset.min_fraction = 0.9")
        assert f"Cannot read entries 0-1000 of {sig}" in message
        server.start()
        with pytest.raises(DataError) as err, logged(stop_when_reading):
            train_on(client, job([sig], [local_bkg],
                                 "  retries: 0\n  on_error: skip\n  min_fraction: 0"),
                     out=tmp_path / "b", **quiet)
        assert str(err.value).startswith("Group 'sig' lost all its events: every partition "
                                         "of it failed to read (dataset.on_error: skip). "
                                         "First failure: Cannot read entries ")
        server.start()
        with logged(stop_when_reading) as log:
            result = train_on(client, job([sig, str(served / "store/mc/bkg2.root")],
                                          [local_bkg],
                                          "  retries: 0\n  on_error: skip\n  min_fraction: 0.5"),
                              out=tmp_path / "c", **quiet)
    finally:
        server.close()
    rep = report(result)
    assert [(s["file"], s["start"], s["stop"]) for s in rep["partitions_skipped"]] == [
        (sig, 0, 1000), (sig, 1000, 2000), (sig, 2000, 3000)]
    assert all(len(s["attempts"]) == 1 and s["attempts"][0]["transient"]
               for s in rep["partitions_skipped"])
    assert rep["events_planned"] == 3 * N and rep["events_read"] == 2 * N
    assert rep["events_skipped"] == N and rep["fraction_read"] == pytest.approx(2 / 3)
    assert result.metadata["data_summary"]["events_read"] == 2 * N
    assert f"  {sig} (entries 0-1000, 1 attempts):" in log.text


def test_predict_cli_reads_lfns_through_redirectors(one: Any, tmp_path: Path, xrootd: Any,
                                                   proxy: FaultProxy, local_result: Any,
                                                   served: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from mlaas_dask.cli import main

    proxy.refuse()  # the first redirector is down: one retry, then the next one
    down = f"root://127.0.0.1:{proxy.port}/"
    code = main(["predict", str(local_result.bundle), "/store/mc/sig.root", "--out",
                 str(tmp_path / "scores"), "--redirector", down, "--redirector",
                 f"{xrootd.url}/", "--retries", "1", "--timeout", "10",
                 "--cluster", one.scheduler.address, "--quiet"])
    assert code == 0, capsys.readouterr().err
    scores = pd.read_parquet(tmp_path / "scores" / "scores.parquet")
    with uproot.open(served / "store/mc/sig.root") as handle:
        events = handle["Events"].arrays()
    expected = ModelBundle.load(local_result.bundle).predict_events(events)
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-6)


def test_fail_policy_names_file_redirectors_and_cause(tmp_path: Path, xrootd: Any,
                                                      trust: Any) -> None:
    with pytest.raises(DataError) as err:
        Dataset([Group("g", ("/store/mc/nothere.root",))], "Events", ["MET_pt"],
                policy=ReadPolicy(redirectors=(f"{trust.url}/", f"{xrootd.url}/"),
                                  retries=2, backoff=0.01))
    message = str(err.value)
    assert message.startswith(
        f"Cannot read /store/mc/nothere.root. Tried {trust.url}/store/mc/nothere.root: "
        f"no such file; {xrootd.url}//store/mc/nothere.root: "
        "OSError: [ERROR] Server responded with an error: [3011] Unable to open")
    assert "after" not in message  # permanent: never retried
    assert message.endswith("(dataset.on_error: fail)")
    assert "add a redirector that has the file" in message


# -- credentials -------------------------------------------------------------------------

def test_bearer_token_reaches_workers_and_stays_secret(
        client: Any, tmp_path: Path, trust: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    monkeypatch.delenv("BEARER_TOKEN", raising=False)
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token_file))
    base = f"{trust.url}/secure"
    before = len(trust.requests())
    result, log = run(client, tmp_path, "t", [f"{base}/store/mc/sig.root"],
                      [f"{base}/store/mc/bkg.root?authz={TOKEN}"])
    assert result.metrics["auc"] > 0.6
    secure = [r for r in trust.requests()[before:] if "/secure/" in r]
    assert secure and all(" 401 " not in r for r in secure)
    # and never in the bundle, the log lines, the terminal or the workers' logs
    texts = [p.read_text() for p in result.bundle.glob("*.json")]
    texts += [log.text, *capsys.readouterr()]
    texts += [str(line) for logs in client.get_worker_logs().values() for line in logs]
    assert all(TOKEN not in text for text in texts)
    meta = json.loads((result.bundle / "metadata.json").read_text())
    assert meta["dataset"]["reading"]["credentials"] == {"x509_proxy": False,
                                                         "bearer_token": True}
    assert "authz=<redacted>" in json.dumps(meta["dataset"])
    # an error about a protected file names it, not the token
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "none"))
    with pytest.raises(DataError) as err:
        Dataset([Group("g", (f"{base}/store/mc/sig.root?authz={TOKEN}",))], "Events",
                ["MET_pt"], policy=ReadPolicy(retries=0))
    assert "HTTP 401" in str(err.value) and "BEARER_TOKEN" in str(err.value)
    assert TOKEN not in str(err.value) and "authz=<redacted>" in str(err.value)
    # the workers (started without it) had the token only for the job
    assert set(client.run(lambda: os.environ.get("BEARER_TOKEN_FILE")).values()) == {None}


def test_x509_proxy_reaches_workers_in_a_private_file(client: Any, tmp_path: Path) -> None:
    from mlaas_dask.data.credentials import Credentials, worker_credentials

    proxy = tmp_path / "x509up"
    body = ("-----BEGIN CERTIFICATE-----\n" + "QUJD" * 16 + "\n-----END CERTIFICATE-----\n")
    proxy.write_text(body)
    creds = Credentials.from_env({"X509_USER_PROXY": str(proxy)})
    assert "QUJD" not in repr(creds) and "<redacted>" in repr(creds)

    def look() -> tuple[str, str, int, str | None]:
        path = os.environ["X509_USER_PROXY"]
        return path, open(path).read(), os.stat(path).st_mode & 0o777, \
            os.environ.get("BEARER_TOKEN")

    with worker_credentials(client, creds):
        seen = client.run(look)
    assert len(seen) == 2
    for path, text, mode, token in seen.values():
        assert text == body and mode == 0o600 and token is None
        assert path != str(proxy)  # a copy on the worker, not the client's file
    after = client.run(lambda: os.environ.get("X509_USER_PROXY"))
    assert set(after.values()) == {None}


# -- cache -------------------------------------------------------------------------------

def test_feature_cache_second_run_reads_nothing_remote(one: Any, tmp_path: Path,
                                                       trust: Any, local_result: Any,
                                                       served: Path) -> None:
    base = trust.url
    cache = f"  cache: {{dir: {tmp_path / 'cache'}, max_size: 50 MB}}"
    first, _ = run(one, tmp_path, "one", [f"{base}/store/mc/sig.root"],
                   [f"{base}/store/mc/bkg.root"], cache)
    before = len(trust.requests())
    second, log = run(one, tmp_path, "two", [f"{base}/store/mc/sig.root"],
                      [f"{base}/store/mc/bkg.root"], cache)
    requests = trust.requests()[before:]
    assert requests and all(r.startswith("HEAD ") for r in requests)  # stat only, no data
    assert report(first)["cache_hits"] == 0 and report(second)["cache_hits"] == 6
    assert "Feature cache: 6 of 6 partitions came from the cache." in log.text
    same_scores(local_result, second, served)
    same_scores(first, second, served)
