"""Heterogeneous placement: reading on CPU workers, training on GPU-tagged workers.

The end-to-end test runs on CPU: a local cluster with one plain worker (cpu-0) and one
worker tagged with the Dask resource GPU=1 (gpu-0; no GPU behind it here). XGBoost cannot
train with device=cuda on this machine, so the job says ``device: cpu`` and the run asks
for ``placement: {train: gpu}``: the same mechanism that ``auto`` uses with cuda (the
training partitions are moved to the GPU-tagged workers, and xgboost.dask trains where the
data is) -- only the device differs. The GPU machine runs the cuda version
(tests/test_gpu.py, benchmarks/gpu_check.sh).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mlaas_dask.cluster.placement import Placement, one_per_host, select_workers
from mlaas_dask.errors import ConfigError

from conftest import write_events

CPU = {"name": "cpu-0", "resources": {}}
CPU_IO = {"name": "cpu-1", "resources": {"IO": 1}}
GPU = {"name": "gpu-0", "resources": {"GPU": 1}}


@pytest.mark.parametrize("workers, rule, stage, device, expected", [
    # heterogeneous cluster: auto keeps reading off the GPU workers ...
    ({"c": CPU, "g": GPU}, "auto", "read", "cpu", ["c"]),
    ({"c": CPU, "g": GPU}, "auto", "read", "cuda", ["c"]),
    # ... and sends cuda training to them; cpu training may run anywhere
    ({"c": CPU, "g": GPU}, "auto", "train", "cuda", ["g"]),
    ({"c": CPU, "g": GPU}, "auto", "train", "cpu", None),
    # homogeneous clusters: nothing to separate
    ({"c": CPU, "d": CPU}, "auto", "read", "cpu", None),
    ({"g": GPU, "h": GPU}, "auto", "train", "cuda", None),
    ({"g": GPU, "h": GPU}, "auto", "read", "cuda", None),
    # explicit rules and user tags
    ({"c": CPU, "g": GPU}, "gpu", "train", "cpu", ["g"]),
    ({"c": CPU, "g": GPU}, "cpu", "read", "cpu", ["c"]),
    ({"c": CPU, "i": CPU_IO, "g": GPU}, "IO", "read", "cpu", ["i"]),
    ({"c": CPU, "g": GPU}, "any", "train", "cuda", None),
    ({}, "auto", "read", "cpu", None),
])
def test_select_workers(workers: dict[str, Any], rule: str, stage: str, device: str,
                        expected: list[str] | None) -> None:
    assert select_workers(workers, rule, stage, device) == expected


def test_one_worker_per_machine_with_the_machines_threads() -> None:
    def worker(host: str, threads: int = 1) -> dict[str, Any]:
        return {"host": host, "nthreads": threads}

    assert one_per_host({"tcp://a:1": worker("a"), "tcp://a:2": worker("a")}) == (
        ["tcp://a:1"], 2)
    # two machines, four and two threads: one worker on each, the fewer threads for all
    workers = {"tcp://a:1": worker("a", 2), "tcp://a:2": worker("a", 2),
               "tcp://b:1": worker("b"), "tcp://b:2": worker("b")}
    assert one_per_host(workers) == (["tcp://a:1", "tcp://b:1"], 2)
    # one worker per machine already: nothing to gather
    assert one_per_host({"tcp://a:1": worker("a", 4), "tcp://b:1": worker("b", 4)}) is None


def test_training_is_not_gathered_beyond_the_workers_memory() -> None:
    from mlaas_dask.cluster.placement import PACK_MEMORY_FRACTION, StagePlan

    workers = {a: {"host": "a", "nthreads": 1, "memory_limit": 1000}
               for a in ("tcp://a:1", "tcp://a:2")}
    fits = StagePlan(None, Placement(), None)
    fits._pack(workers, int(PACK_MEMORY_FRACTION * 1000) - 1)
    assert (fits.train_workers, fits.train_threads) == (["tcp://a:1"], 2)
    too_big = StagePlan(None, Placement(), None)
    too_big._pack(workers, int(PACK_MEMORY_FRACTION * 1000) + 1)
    assert (too_big.train_workers, too_big.train_threads) == (None, None)


def test_a_rule_that_matches_no_worker_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"placement\.train is 'gpu' but the cluster has no "
                                          r"GPU-tagged worker\. Workers: cpu-0 \(no tags\)"):
        select_workers({"c": CPU}, "gpu", "train")
    with pytest.raises(ConfigError, match="no worker with the resource 'IO'"):
        select_workers({"c": CPU, "g": GPU}, "IO", "read")


def test_placement_values() -> None:
    assert Placement.from_value(None) == Placement("auto", "auto")
    assert Placement.from_value({"train": "gpu"}) == Placement("auto", "gpu")
    with pytest.raises(ConfigError, match="Unknown placement stage"):
        Placement.from_value({"predict": "gpu"})


JOB = """
dataset:
  step_size: 1500
  groups:
    - {{name: signal, files: [{sig}], label: 1}}
    - {{name: background, files: [{bkg}], label: 0}}
features:
  flat: [MET_pt]
  collections: {{Jet: {{fields: [pt, eta], n: 3, sort_by: pt}}}}
model: {{device: cpu, num_boost_round: 15, early_stopping_rounds: 5}}
"""


def _function(key: Any) -> str:
    """The function name in a task key ('read_and_process-<token>' -> 'read_and_process')."""
    from dask.utils import key_split

    return key_split(key)


@pytest.mark.slow
def test_training_runs_on_the_gpu_tagged_worker_and_reading_does_not(tmp_path: Path) -> None:
    from distributed import get_task_stream

    from mlaas_dask.cluster import connect, describe
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    sig = write_events(tmp_path / "sig.root", n=4500, seed=1)
    bkg = write_events(tmp_path / "bkg.root", n=4500, seed=2)
    job = job_from_text(JOB.format(sig=sig, bkg=bkg), base=tmp_path)
    cluster = {"type": "local", "workers": 1, "gpu_workers": 1,
               "placement": {"train": "gpu"}}  # device cpu: see the module docstring
    with connect(cluster) as client:
        info = describe(client)
        by_name = {w["name"]: w for w in info["worker_list"]}
        assert by_name["gpu-0"]["resources"] == {"GPU": 1}
        assert by_name["cpu-0"]["resources"] == {}
        gpu, cpu = by_name["gpu-0"]["address"], by_name["cpu-0"]["address"]
        with get_task_stream(client) as stream:
            result = train(job, cluster=client, out=tmp_path / "bundle", progress=False)
        env = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
    assert env[gpu] == "0" and env[cpu] is None  # the GPU worker is pinned to its GPU

    # what the scheduler saw, independently of mlaas's own bookkeeping
    ran: dict[str, Counter[str]] = {}
    for record in stream.data:
        ran.setdefault(_function(record["key"]), Counter())[record["worker"]] += 1
    assert set(ran["read_and_process"]) == {cpu}, ran["read_and_process"]
    assert ran["read_and_process"][cpu] == 6  # 9000 events / 1500 per partition
    assert set(ran["carry_block"]) == {gpu}  # the training partitions were carried over
    # xgboost.dask (3.2) dispatches its per-worker training function under the name 'fn'
    assert set(ran["fn"]) == {gpu}, "xgboost.dask trained on other workers too"

    # what the bundle records
    placement = result.metadata["placement"]
    assert placement["read_features"]["workers"] == ["cpu-0"]
    assert placement["read_features"]["restricted_to"] == ["cpu-0"]
    assert placement["train"]["workers"] == ["gpu-0"]
    assert placement["train"]["addresses"] == [gpu]
    assert placement["train"]["resources"] == ["GPU"]
    assert placement["train"]["rule"] == "gpu"
    assert placement["predict"]["rule"] == "any" and placement["predict"]["workers"]
    assert result.metadata["model"]["device"] == "cpu"
    workers = {w["name"]: w for w in result.metadata["cluster"]["worker_list"]}
    assert workers["gpu-0"]["resources"] == {"GPU": 1} and workers["cpu-0"]["resources"] == {}
    saved = (result.bundle / "metadata.json").read_text()
    assert '"placement"' in saved and '"gpu-0"' in saved


@pytest.mark.slow
def test_without_gpu_workers_reading_is_not_restricted(tmp_path: Path, client: Any) -> None:
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    sig = write_events(tmp_path / "sig.root", n=3000, seed=3)
    bkg = write_events(tmp_path / "bkg.root", n=3000, seed=4)
    job = job_from_text(JOB.format(sig=sig, bkg=bkg), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "bundle", progress=False)
    placement = result.metadata["placement"]
    assert placement["read_features"]["restricted_to"] is None
    assert placement["read_features"]["workers"]  # recorded all the same
    # two workers on one machine: XGBoost trains on one of them with both threads
    assert len(placement["train"]["restricted_to"]) == 1
    assert placement["train"]["workers"] == placement["train"]["restricted_to"]
    assert placement["train"]["threads_per_worker"] == 2
    assert result.metadata["model"]["params"]["nthread"] == 2
    assert result.metadata["cluster"]["cluster"] == {"name": "client", "type": "client"}
