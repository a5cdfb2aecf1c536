"""Training survives a worker killed with SIGKILL mid-training (issue 10, item 2).

Each test starts its own LocalCluster of two worker processes on 127.0.0.1 (a killed
worker is replaced by its nanny, with a new address). The worker to kill is found among
this test run's own processes: its pid comes from ``client.run(os.getpid)`` on that
cluster, and the moment from a scheduler plugin (``benchmarks/fault_matrix.py``'s
``KillWhen``, running in this process) that kills the worker running the training task
once XGBoost reports round ``K`` or once the ``k``-th ``partial_fit`` block starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train
from mlaas_dask.train.faults import TrainingFailed

from conftest import REPO, logged

sys.path.insert(0, str(REPO / "benchmarks"))
import fault_matrix
from fault_matrix import arm

KILL_ROUND = 21
CLI_TIMEOUT = 300  # seconds: far above a normal run; the job must fail well before


def killed(client: Any) -> tuple[str, str]:
    """Address and name of the worker the plugin killed."""
    kills = fault_matrix.killed(client)
    assert len(kills) == 1, kills
    return kills[0][0], kills[0][1]


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A fresh LocalCluster with two single-threaded worker processes (workers die here)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as local, \
            Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    from mlaas_dask.data.sample import generate_sample

    return generate_sample(tmp_path_factory.mktemp("sample"), 100_000, seed=3,
                           compression="lz4:1")


def job_text(sample: dict[str, list[Path]], model: str) -> str:
    return f"""
dataset:
  step_size: 12500
  groups:
    - {{name: signal, files: {[str(p) for p in sample['signal']]}, label: 1}}
    - {{name: background, files: {[str(p) for p in sample['background']]}, label: 0}}
features:
  flat: [MET_pt, MET_phi, PV_npvs]
  collections:
    Jet: {{fields: [pt, eta, phi, mass, btagDeepB], n: 6, sort_by: pt, multiplicity: true}}
  derived: {{HT: "sum(Jet_pt)"}}
model: {model}
"""


XGB = ("{{num_boost_round: 120, early_stopping_rounds: 10, checkpoint_every: 10, "
       "max_retries: {retries}, params: {{max_depth: 4, eta: 0.3}}}}")
SGD = ("{{class: sklearn.linear_model.SGDClassifier, params: {{loss: log_loss}}, epochs: 3, "
       "checkpoint_every: 2, max_retries: {retries}}}")


def run_logged(job: Any, client: Any, out: Path) -> tuple[Any, list[str]]:
    with logged() as lines:
        result = train(job, cluster=client, out=out, progress=True)
    return result, lines


def resume_line(lines: list[str], name: str, address: str, stage: str,
                rest: str) -> re.Match[str]:
    """The one resume line of a run: the lost worker, the stage, ``rest`` (a pattern for
    how far it got and where it resumes from), then the retry count."""
    resumed = [line for line in lines if line.startswith("Lost ")]
    assert len(resumed) == 1, lines
    match = re.fullmatch(rf"Lost worker {re.escape(name)} \({re.escape(address)}\) during "
                         rf"{re.escape(stage)} at {rest} on \d workers? \(retry 1 of 2\)\.",
                         resumed[0])
    assert match, resumed[0]
    return match


def cli_error(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a CLI run that failed as a user error should (exit 2, a message)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr


def assert_complete(bundle: Path) -> None:
    loaded = ModelBundle.load(bundle)
    assert loaded.classes == ["background", "signal"]
    assert {"metadata.json", "metrics.json", "features.json", "roc.png"} <= {
        p.name for p in bundle.iterdir()}
    leftovers = [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"checkpoint or staging folders left behind: {leftovers}"


@pytest.mark.slow
def test_xgboost_resumes_from_its_checkpoint_after_the_training_worker_is_killed(
        cluster: Any, sample: dict[str, list[Path]], tmp_path: Path) -> None:
    job = job_from_text(job_text(sample, XGB.format(retries=2)), base=tmp_path)
    calm, _ = run_logged(job, cluster, tmp_path / "calm" / "bundle")
    arm(cluster, "fn", round=KILL_ROUND)
    hit, lines = run_logged(job, cluster, tmp_path / "hit" / "bundle")
    address, name = killed(cluster)
    assert address not in cluster.scheduler_info()["workers"]
    match = resume_line(lines, name, address, "XGBoost training",
                        r"round (\d+); resuming from the checkpoint at round (\d+)")
    reached, checkpoint = int(match[1]), int(match[2])
    assert reached >= KILL_ROUND and checkpoint == reached // 10 * 10
    # the splits were gathered again on a worker that is alive, then training went on
    after = lines[lines.index(match[0]) + 1:]
    assert any("moving the training and validation splits there" in line or
               line.startswith("  round") for line in after), after
    assert hit.metrics["resumes"] == [{"lost": [f"worker {name} ({address})"],
                                       "reached": f"round {reached}",
                                       "resumed_from": f"the checkpoint at round {checkpoint}"}]
    assert_complete(hit.bundle)
    assert calm.metrics["resumes"] == []
    assert abs(hit.metrics["auc"] - calm.metrics["auc"]) < 0.002
    # early stopping carried over the resume: the same rounds as the undisturbed run (and
    # the same metrics: both train on one worker, so continuing from the checkpoint gives
    # the very same trees)
    assert hit.metrics["rounds"] == calm.metrics["rounds"]
    assert hit.metrics["history"] == calm.metrics["history"]


def run_cli(job: str, address: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.yaml").write_text(job)
    return subprocess.run(
        [sys.executable, "-m", "mlaas_dask", "train", str(tmp_path / "job.yaml"),
         "--cluster", address, "--out", str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)


@pytest.mark.slow
def test_xgboost_without_retries_fails_naming_the_lost_worker_and_round(
        cluster: Any, sample: dict[str, list[Path]], tmp_path: Path) -> None:
    arm(cluster, "fn", round=KILL_ROUND)
    done = run_cli(job_text(sample, XGB.format(retries=0)), cluster.scheduler.address,
                   tmp_path)  # a hang would raise subprocess.TimeoutExpired
    address, name = killed(cluster)
    match = re.search(
        rf"mlaas train: error: XGBoost training lost worker {re.escape(name)} "
        rf"\({re.escape(address)}\) at round (\d+) and does not resume: model.max_retries "
        r"is 0 \(last checkpoint: round (\d+)\)\.", cli_error(done))
    assert match, done.stderr
    assert int(match[1]) >= KILL_ROUND and int(match[2]) == int(match[1]) // 10 * 10
    assert not (tmp_path / "bundle").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_xgboost_fails_when_the_lost_data_cannot_be_read_again(
        cluster: Any, sample: dict[str, list[Path]], tmp_path: Path) -> None:
    """The killed worker held partitions whose files are gone by then: resuming needs them
    again, so the job fails, naming the lost worker, the round and the file."""
    copies = {group: [Path(shutil.copy(path, tmp_path / path.name)) for path in paths]
              for group, paths in sample.items()}
    job = job_from_text(job_text(copies, XGB.format(retries=2)), base=tmp_path)

    def rename_files(line: str) -> None:
        if line.startswith("Training XGBoost on"):  # every partition has been read
            for path in (p for paths in copies.values() for p in paths):
                path.rename(path.with_suffix(".gone"))

    arm(cluster, "fn", round=KILL_ROUND)
    with pytest.raises(TrainingFailed) as failure, logged(rename_files):
        train(job, cluster=cluster, out=tmp_path / "bundle", progress=True)
    address, name = killed(cluster)
    message = str(failure.value)
    assert re.match(rf"XGBoost training lost worker {re.escape(name)} \({re.escape(address)}\) "
                    r"at round \d+, and resuming from the checkpoint at round \d+ failed: ",
                    message), message
    assert re.search(r"(signal|background)\.root", message), message
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_incremental_resumes_from_the_last_checkpointed_block(
        cluster: Any, sample: dict[str, list[Path]], tmp_path: Path) -> None:
    job = job_from_text(job_text(sample, SGD.format(retries=2)), base=tmp_path)
    calm, _ = run_logged(job, cluster, tmp_path / "calm" / "bundle")
    blocks = calm.metrics["blocks"]
    assert blocks == 8
    arm(cluster, "partial_fit", start=blocks + 6)  # block 6 of epoch 2
    hit, lines = run_logged(job, cluster, tmp_path / "hit" / "bundle")
    address, name = killed(cluster)
    match = resume_line(lines, name, address, "partial_fit of SGDClassifier",
                        r"epoch 2 \((\d) of 8 blocks done\); resuming from the checkpoint at "
                        r"epoch 2, block (\d) of 8")
    done, checkpoint = int(match[1]), int(match[2])
    # checkpoints every 2 blocks (counted over epochs: 8 + 4 = 12 is one)
    assert done in (4, 5) and checkpoint == 4
    assert sum(line.startswith("  epoch") for line in lines) == 3
    assert_complete(hit.bundle)
    assert len(hit.metrics["resumes"]) == 1
    assert abs(hit.metrics["auc"] - calm.metrics["auc"]) < 0.002
    assert hit.metrics["history"] == calm.metrics["history"]  # partial_fit is deterministic


@pytest.mark.slow
def test_incremental_without_retries_fails_naming_the_lost_worker_and_block(
        cluster: Any, sample: dict[str, list[Path]], tmp_path: Path) -> None:
    arm(cluster, "partial_fit", start=3)
    done = run_cli(job_text(sample, SGD.format(retries=0)), cluster.scheduler.address,
                   tmp_path)
    address, name = killed(cluster)
    match = re.search(
        rf"mlaas train: error: partial_fit of SGDClassifier lost worker {re.escape(name)} "
        rf"\({re.escape(address)}\) at epoch 1 \((\d) of 8 blocks done\) and does not "
        r"resume: model.max_retries is 0 \(last checkpoint: epoch 1, block 2 of 8\)\.",
        cli_error(done))
    assert match, done.stderr
    assert int(match[1]) == 2
    assert not (tmp_path / "bundle").exists()


class FakeBooster:
    """What XGBoost's early stopping asks of a booster (no training happens here)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.attributes: dict[str, str] = {}

    def num_boosted_rounds(self) -> int:
        return self.rounds

    def set_attr(self, **kwargs: str) -> None:
        self.attributes.update(kwargs)


def stopping_round(callback: Any, scores: list[float], first: int) -> tuple[int | None, dict]:
    """Feed validation scores from round ``first`` on; the round it stops at, if any."""
    booster = FakeBooster(first)
    callback.before_training(booster)
    for epoch, _ in enumerate(scores[first:]):
        log = {"train": {"logloss": [0.0]},
               "validation": {"logloss": scores[first:first + epoch + 1]}}
        if callback.after_iteration(booster, epoch, log):
            return first + epoch, booster.attributes
    return None, booster.attributes


@pytest.mark.parametrize("checkpoint", [1, 3, 4, 6])
def test_early_stopping_state_carries_over_a_resume(checkpoint: int) -> None:
    import xgboost

    from mlaas_dask.train.xgb import ResumedEarlyStopping

    scores = [0.60, 0.50, 0.45, 0.47, 0.44, 0.46, 0.45, 0.48, 0.49, 0.50]
    expected = stopping_round(xgboost.callback.EarlyStopping(rounds=3), scores, 0)
    assert expected[0] == 7 and expected[1]["best_iteration"] == "4"
    history = {"train": {"logloss": [0.0] * checkpoint},
               "validation": {"logloss": scores[:checkpoint]}}
    resumed = ResumedEarlyStopping(3, history)
    booster_attributes = {"best_iteration": "4"} if checkpoint > 4 else {}
    stop, attributes = stopping_round(resumed, scores, checkpoint)
    assert stop == expected[0]
    # the attributes come from the checkpoint's booster when the best round is before it
    assert {**booster_attributes, **attributes}["best_iteration"] == "4"
    # without the replay, the count of rounds without improvement would start again
    assert stopping_round(xgboost.callback.EarlyStopping(rounds=3), scores, 6)[0] != 7


def test_checkpoints_replace_each_other_and_are_removed(tmp_path: Path) -> None:
    from mlaas_dask.train.xgb import Checkpoint, CheckpointStore, join_history

    store = CheckpointStore(tmp_path / ".bundle.checkpoint-x")
    assert store.latest() is None and not store.folder.exists()
    store.save(Checkpoint(10, b"ten", {"validation": {"logloss": [0.5] * 10}}))
    store.save(Checkpoint(20, b"twenty", {"validation": {"logloss": [0.4] * 20}}))
    latest = store.latest()
    assert latest is not None and (latest.round, latest.model) == (20, b"twenty")
    assert sorted(p.name for p in store.folder.iterdir()) == ["booster-20.ubj", "state.json"]
    store.remove()
    assert not store.folder.exists()
    joined = join_history({"v": {"m": [1.0, 2.0]}}, {"v": {"m": [3.0]}})
    assert joined == {"v": {"m": [1.0, 2.0, 3.0]}}


@pytest.mark.parametrize("model, message", [
    ("{}", None),
    ("{max_retries: -1}", r"'model.max_retries': must be 0 or more, got -1"),
    ("{checkpoint_every: 2.5}", r"'model.checkpoint_every' must be an integer"),
    ("{collective_timeout: 0}", r"'model.collective_timeout': must be positive, got 0"),
])
def test_fault_keys_have_defaults_and_are_checked(model: str, message: str | None,
                                                  tmp_path: Path) -> None:
    from mlaas_dask.errors import ConfigError

    text = job_text({"signal": [tmp_path / "s.root"], "background": [tmp_path / "b.root"]},
                    model)
    if message is None:
        settings = job_from_text(text, base=tmp_path).model
        assert (settings.checkpoint_every, settings.max_retries,
                settings.collective_timeout) == (10, 2, 300)
        return
    with pytest.raises(ConfigError, match=message):
        job_from_text(text, base=tmp_path)
