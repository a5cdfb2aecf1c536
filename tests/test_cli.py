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
from helpers import make_bundle, quiet, small_job

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.cli import main
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train

from conftest import write_events


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
    code, _out, err = run_cli(capsys, "train", str(job))
    assert code == 2
    assert err.startswith("mlaas train: error: ") and expected in err
    assert "Traceback" not in err and str(job) in err


def test_missing_branch_from_cli(capsys, tmp_path: Path) -> None:
    text = small_job(tmp_path, features="{flat: [MET_ptt]}")
    (tmp_path / "job.yaml").write_text(text)
    code, _out, err = run_cli(capsys, "train", str(tmp_path / "job.yaml"), "--out",
                             str(tmp_path / "b"), "--cluster", "local:1")
    assert code == 2 and "Branch 'MET_ptt' is not in tree 'Events'" in err
    assert "Did you mean 'MET_pt'" in err and not (tmp_path / "b").exists()


def test_jagged_branch_as_flat_from_cli(capsys, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(small_job(tmp_path, features="{flat: [Jet_pt]}"))
    code, _out, err = run_cli(capsys, "train", str(tmp_path / "job.yaml"), "--out",
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
        rows = table[table.file == str(tmp_path / f"{name}.root")]
        assert (table.file.cat.codes[rows.index] == index).all()
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


# -- predict: what --overwrite removes, and a full disk -----------------------------------

def predict_inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A small XGBoost bundle (MET_pt and two jets) and two files to score."""

    files = [write_events(tmp_path / f"{name}.root", n=3000, seed=seed)
             for seed, name in enumerate(("a", "b"))]
    return make_bundle(tmp_path / "bundle"), files


def test_predict_overwrite_removes_only_an_earlier_runs_files(client, tmp_path: Path) -> None:
    import json

    from mlaas_dask.data.dataset import Dataset, Group
    from mlaas_dask.predict import _estimate_bytes, predict_files

    bundle, files = predict_inputs(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "scores"
    out.symlink_to(real, target_is_directory=True)  # --out may be a link
    options = {"cluster": client, "step_size": 1000, "progress": False}
    first = predict_files(bundle, [str(f) for f in files], out, **options)
    assert sorted(p.name for p in real.iterdir()) == [
        "a.scores.root", "b.scores.root", "predict.json", "scores.parquet"]
    manifest = json.loads((real / "predict.json").read_text())
    assert manifest["outputs"] == sorted(p.name for p in real.iterdir())
    assert manifest["events"] == first.events == 6000
    # the estimate the up-front check uses is near what was written
    model = ModelBundle.load(bundle)
    dataset = Dataset([Group("input", tuple(map(str, files)))], "Events",
                      model.spec.branches(), 1000,
                      optional_branches=["run", "luminosityBlock", "event"])
    written = sum(p.stat().st_size for p in real.iterdir())
    assert 0.5 < written / _estimate_bytes(dataset, model) < 2
    (real / "NOTES.txt").write_text("mine")
    (real / "c.scores.root").write_bytes(b"a user's file of that name, not in predict.json")
    second = predict_files(bundle, [str(files[0])], out, overwrite=True, **options)
    assert second.friends == [out / "a.scores.root"] and second.events == 3000
    assert sorted(p.name for p in real.iterdir()) == [
        "NOTES.txt", "a.scores.root", "c.scores.root", "predict.json", "scores.parquet"]
    assert out.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.root", "b.root", "bundle", "real", "scores"]
    assert json.loads((real / "predict.json").read_text())["outputs"] == [
        "a.scores.root", "predict.json", "scores.parquet"]
    assert uproot.open(real / "a.scores.root")["Events"].num_entries == 3000


@pytest.fixture
def disk(tmp_path: Path):
    from disks import small_filesystem

    with small_filesystem(tmp_path / "disk", "512k") as mounted:
        yield mounted


def test_predict_refuses_a_too_small_disk_before_any_work(capsys, tmp_path: Path,
                                                          disk: Path) -> None:
    from disks import entries, fill

    bundle, files = predict_inputs(tmp_path)
    fill(disk, leave=64 * 1024)
    code, out, err = run_cli(capsys, "predict", str(bundle), *map(str, files),
                             "--out", str(disk / "scores"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"mlaas predict: error: Not enough disk space for the score files "
                          f"at {disk / 'scores'}: it needs about ")
    assert "Nothing was written" in err and "Scoring" not in out  # before reading a file
    assert entries(disk) == []


def test_predict_disk_filling_up_while_writing(client, tmp_path: Path, disk: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate says it fits (shutil.disk_usage claims room: only the number), the
    real disk fills up while writing: one message, the earlier run's files intact, no
    partial files."""
    from mlaas_dask.outputs import DiskSpaceError
    from mlaas_dask.predict import predict_files

    from disks import entries, fill

    bundle, files = predict_inputs(tmp_path)
    out = disk / "scores"
    options = {"cluster": client, "step_size": 1000, "progress": False}
    predict_files(bundle, [str(files[0])], out, **options)
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(disk, leave=16 * 1024)
    real = __import__("shutil").disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=10**11))
    with pytest.raises(DiskSpaceError) as err:
        predict_files(bundle, [str(f) for f in files], out, overwrite=True, **options)
    assert str(err.value).startswith(f"The disk filled up while writing the score files at "
                                     f"{out} (No space left on device): it needs about ")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no .partial-*
    (out / "predict.json").unlink()
    for name in earlier:
        (out / name).unlink(missing_ok=True)
    out.rmdir()
    with pytest.raises(DiskSpaceError):  # into a new folder: the folder goes too
        predict_files(bundle, [str(f) for f in files], out, **options)
    assert entries(disk) == []
