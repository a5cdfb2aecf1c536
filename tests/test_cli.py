"""The mlaas command line: help, messages without tracebacks, predict, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uproot

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.cli import main
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train

from conftest import REPO, write_events
from test_train import quiet, small_job


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_teaches(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "predict", "serve"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--cluster" in out and "--overwrite" in out


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("dataset: [", "invalid YAML"),
    ("dataset: {groups: []}\nfeatures: {flat: [x]}\nmodle: {}\n", "unknown key 'modle'"),
])
def test_bad_job_file_is_one_paragraph_without_traceback(capsys, tmp_path: Path,
                                                         content: str | None,
                                                         expected: str) -> None:
    job = tmp_path / "job.yaml"
    if content is not None:
        job.write_text(content)
    code, out, err = run_cli(capsys, "train", str(job))
    assert code == 2
    assert err.startswith("mlaas train: error: ") and expected in err
    assert "Traceback" not in err and str(job) in err


def test_missing_branch_from_cli(capsys, tmp_path: Path) -> None:
    text = small_job(tmp_path, features="{flat: [MET_ptt]}")
    (tmp_path / "job.yaml").write_text(text)
    code, out, err = run_cli(capsys, "train", str(tmp_path / "job.yaml"), "--out",
                             str(tmp_path / "b"), "--cluster", "local:1")
    assert code == 2 and "Branch 'MET_ptt' is not in tree 'Events'" in err
    assert "Did you mean 'MET_pt'" in err and not (tmp_path / "b").exists()


def test_jagged_branch_as_flat_from_cli(capsys, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(small_job(tmp_path, features="{flat: [Jet_pt]}"))
    code, out, err = run_cli(capsys, "train", str(tmp_path / "job.yaml"), "--out",
                             str(tmp_path / "b"))
    assert code == 2 and "'Jet_pt'" in err and "is jagged" in err and "collections:" in err


@pytest.mark.slow
def test_predict_writes_parquet_and_friend_trees(capsys, client, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    job = job_from_text(small_job(tmp_path), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "bundle", **quiet)
    out = tmp_path / "scores"
    code, stdout, err = run_cli(capsys, "predict", str(result.bundle), str(tmp_path / "sig.root"),
                                str(tmp_path / "bkg.root"), "--out", str(out), "--cluster",
                                "local:1", "--step-size", "700", "--quiet")
    assert code == 0, err
    assert "Scored 6,000 events" in stdout
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert list(table.columns) == ["file", "entry", "run", "luminosityBlock", "event", "score"]
    bundle = ModelBundle.load(result.bundle)
    for index, name in enumerate(("sig", "bkg")):
        events = uproot.open(tmp_path / f"{name}.root")["Events"].arrays()
        expected = bundle.predict_events(events)
        rows = table[table.file == index]
        np.testing.assert_array_equal(rows.entry, np.arange(3000))
        np.testing.assert_array_equal(rows.event, events.event.to_numpy())
        np.testing.assert_allclose(rows.score, expected, atol=1e-6)
        friend = uproot.open(out / f"{name}.scores.root")["Events"]
        assert friend.num_entries == 3000
        np.testing.assert_allclose(friend["score"].array(library="np"), expected, atol=1e-6)
    # a second run refuses the non-empty output
    code, stdout, err = run_cli(capsys, "predict", str(result.bundle), str(tmp_path / "sig.root"),
                                "--out", str(out), "--quiet")
    assert code == 2 and "already exists and is not empty" in err and "--overwrite" in err


@pytest.mark.slow
def test_ctrl_c_leaves_no_bundle_and_no_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_events(tmp_path / "sig.root", n=100_000, seed=1,
                 extra={"MET_pt": rng.exponential(45, 100_000).astype(np.float32)})
    write_events(tmp_path / "bkg.root", n=100_000, seed=2)
    text = small_job(tmp_path).replace("num_boost_round: 30", "num_boost_round: 5000").replace(
        "early_stopping_rounds: 5", "early_stopping_rounds: 0")
    # small_job rewrote the files with 3000 events: write the big ones again
    write_events(tmp_path / "sig.root", n=100_000, seed=1,
                 extra={"MET_pt": rng.exponential(45, 100_000).astype(np.float32)})
    write_events(tmp_path / "bkg.root", n=100_000, seed=2)
    (tmp_path / "job.yaml").write_text(text)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlaas_dask", "train", str(tmp_path / "job.yaml"), "--out",
         str(tmp_path / "bundle"), "--cluster", "local:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = ""
    deadline = time.monotonic() + 120
    while "round" not in seen and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    if "round" not in seen:
        process.kill()
        pytest.fail(f"training never started: {seen}{process.communicate()[1]}")
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    err = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert process.returncode == 130, err
    assert "interrupted; nothing was left half-written" in err
    assert not (tmp_path / "bundle").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # worker processes got the same SIGINT (as from a terminal) and exit on their own
    leftovers = session_processes(process.pid)
    deadline = time.monotonic() + 20
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.5)
        leftovers = session_processes(process.pid)
    assert not leftovers, f"Dask processes still running: {leftovers}"


def session_processes(session: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == session:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return found
