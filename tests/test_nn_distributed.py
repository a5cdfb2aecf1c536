"""Data-parallel training through Dask (issue 12, item 3): torch.distributed ranks launched
by mlaas_dask.nn.distributed.run_ranks on a real LocalCluster of two worker processes
(gloo), a failing rank and a killed worker ending the job with a message, and the
partition assignment and step counts that keep the ranks in step."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sample_job

torch = pytest.importorskip("torch")

from mlaas_dask.nn.distributed import (  # noqa: E402 - after the importorskip
    RankContext,
    RankFailed,
    assign_partitions,
    parameter_digest,
    run_ranks,
    steps_per_epoch,
)


def own_cluster() -> Iterator[Any]:
    """Two single-threaded worker processes of this module's own."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as local, \
            Client(local) as client:
        client.wait_for_workers(2)
        client.run(torch.set_num_threads, 1)
        yield client
        # a killed worker's replacement is up before the cluster closes (closing a
        # nanny halfway through its restart times out)
        with contextlib.suppress(TimeoutError):
            client.wait_for_workers(2, timeout=60)


cluster = pytest.fixture(scope="module")(own_cluster)
#: for tests that kill a worker
fresh_cluster = pytest.fixture(own_cluster)


def workers_of(client: Any) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


def sum_of_ranks(context: RankContext, offset: int) -> dict[str, Any]:
    import torch.distributed as dist

    value = torch.tensor([float(context.rank + offset)])
    dist.all_reduce(value, group=context.group)
    return {"rank": context.rank, "world": context.world, "sum": value.item(),
            "pid": os.getpid(), "worker": context.worker}


def test_every_rank_runs_on_its_worker_and_the_collective_works(cluster: Any) -> None:
    workers = workers_of(cluster)
    results = run_ranks(cluster, workers, sum_of_ranks, 10, timeout=60)
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["worker"] for r in results] == workers
    assert {r["world"] for r in results} == {2}
    assert {r["sum"] for r in results} == {10.0 + 11.0}
    assert len({r["pid"] for r in results}) == 2  # two processes, not two threads
    # the group was destroyed: the same workers form a new one at once
    again = run_ranks(cluster, workers[::-1], sum_of_ranks, 0, timeout=60)
    assert [r["worker"] for r in again] == workers[::-1]
    assert {r["sum"] for r in again} == {1.0}


def train_ddp(context: RankContext, epochs: int, steps: int) -> dict[str, Any]:
    """A small model trained by DDP on data of this rank only; its digests per epoch."""
    torch.manual_seed(context.rank)  # different initial weights: DDP must broadcast
    from mlaas_dask.nn.trainer import wrap_model

    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model = wrap_model(network, context.rank, context.world, context.group,
                       torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(100 + context.rank)
    digests, done = [parameter_digest(model)], 0
    for _ in range(epochs):
        for _ in range(steps):
            x = torch.randn(16, 4, generator=generator)
            loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
        digests.append(parameter_digest(model))
    return {"steps": done, "digests": digests}


def test_ddp_ranks_train_different_data_and_stay_equal(cluster: Any) -> None:
    results = run_ranks(cluster, workers_of(cluster), train_ddp, 3, 5, timeout=60)
    assert [r["steps"] for r in results] == [15, 15]
    first, second = (r["digests"] for r in results)
    assert first == second  # the same parameters on both ranks, after every epoch
    assert len(set(first)) == 4  # and they changed every epoch


def fail_on_rank_one(context: RankContext) -> None:
    import torch.distributed as dist

    if context.rank == 1:
        raise ValueError("the loss is NaN at epoch 2")
    dist.all_reduce(torch.ones(1), group=context.group)  # waits for rank 1, which left


def test_a_failing_rank_fails_the_job_naming_its_worker_and_cause(cluster: Any) -> None:
    workers = workers_of(cluster)
    with pytest.raises(RankFailed) as caught:
        run_ranks(cluster, workers, fail_on_rank_one, timeout=60)
    message = str(caught.value)
    assert "rank 1 of 2" in message and workers[1] in message
    assert "ValueError: the loss is NaN at epoch 2" in message
    assert caught.value.rank == 1 and workers[1] in caught.value.worker
    # rank 0 left its group too: the workers take part in the next job
    assert {r["sum"] for r in run_ranks(cluster, workers, sum_of_ranks, 0, timeout=60)} == {1.0}


def loop_until_stopped(context: RankContext, marker: str) -> None:
    """Rank 1 fails at once; rank 0 trains on without a collective (so no peer error can
    reach it) until the client's stop request arrives."""
    import time

    if context.rank == 1:
        raise ValueError("rank 1 gives up")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if context.stop_requested():
            Path(marker).write_text("stopped")
            return
        time.sleep(0.05)


def test_ranks_stop_when_the_client_gives_up(cluster: Any, tmp_path: Path) -> None:
    import time

    marker = tmp_path / "rank0"
    with pytest.raises(RankFailed, match="rank 1 gives up"):
        run_ranks(cluster, workers_of(cluster), loop_until_stopped, str(marker), timeout=60)
    deadline = time.monotonic() + 60  # a bound for the wait, not a timing assertion
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "stopped"


def die_on_rank_one(context: RankContext) -> None:
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1), group=context.group)
    if context.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-training
    dist.all_reduce(torch.ones(1), group=context.group)


def test_a_killed_worker_fails_the_job_without_a_hang(fresh_cluster: Any) -> None:
    workers = workers_of(fresh_cluster)
    with pytest.raises(RankFailed) as caught:
        run_ranks(fresh_cluster, workers, die_on_rank_one, timeout=120)
    message = str(caught.value)
    assert "rank 1 of 2 on worker" in message and workers[1] in message
    assert "left the cluster" in message and "no bundle was written" in message


def test_workers_that_cannot_be_ranks_are_refused(cluster: Any) -> None:
    from mlaas_dask.errors import ConfigError

    workers = workers_of(cluster)
    with pytest.raises(ConfigError, match="takes each worker once"):
        run_ranks(cluster, [workers[0], workers[0]], sum_of_ranks, 0)
    with pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:1 is not a worker"):
        run_ranks(cluster, ["tcp://127.0.0.1:1"], sum_of_ranks, 0)


def test_rendezvous_waits_no_longer_than_the_timeout(cluster: Any) -> None:
    """A rank whose peer never arrives (its worker is busy) fails after the timeout, and
    the rank still queued is cancelled."""
    workers = workers_of(cluster)
    blocker = cluster.submit(_sleep, 8, workers=[workers[1]], pure=False)
    with pytest.raises(RankFailed) as caught:
        run_ranks(cluster, workers, sum_of_ranks, 0, timeout=2)
    assert "rank 0 of 2" in str(caught.value) and workers[0] in str(caught.value)
    assert "model.collective_timeout" in str(caught.value)
    blocker.result()  # the worker is free again for the next test


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_partitions_stay_where_they_are_unless_that_unbalances_the_ranks() -> None:
    a, b, reader = "tcp://a:1", "tcp://b:1", "tcp://reader:1"
    # balanced already: nothing moves
    assert assign_partitions([a, b, a, b], [10, 10, 10, 10], [a, b]) == [[0, 2], [1, 3]]
    # all on a: half of the rows move to b, the fewest partitions that do it
    parts = assign_partitions([a, a, a, a], [10, 10, 10, 10], [a, b])
    assert sorted(map(len, parts)) == [2, 2]
    # held by a worker that is not a rank, or by none: to the rank with fewer rows
    assert assign_partitions([a, reader, None], [30, 20, 10], [a, b]) == [[0], [1, 2]]
    # one big partition cannot be split: it stays
    assert assign_partitions([a, b], [100, 1], [a, b]) == [[0], [1]]
    assert assign_partitions([a], [5], [a]) == [[0]]


def test_every_rank_gets_the_steps_of_the_rank_with_most_rows() -> None:
    assert steps_per_epoch([1000, 900], 100) == 10
    assert steps_per_epoch([1001, 10], 100) == 11
    assert steps_per_epoch([0, 0], 100) == 0


MLP = '''\
import torch


def model(n_features):
    return torch.nn.Sequential(torch.nn.Linear(n_features, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 1))
'''


@pytest.mark.slow
def test_a_network_trains_data_parallel_through_the_cli(cluster: Any, tmp_path: Path,
                                                        capsys: Any) -> None:
    """model.workers: 2 -- both ranks train (equal step counts), on the partitions their
    worker holds, with equal parameters after every epoch; the bundle scores well."""
    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.cli import main

    (tmp_path / "net.py").write_text(MLP)
    job = tmp_path / "job.yaml"
    job.write_text(sample_job(tmp_path, "{file: net.py, epochs: 3, batch_size: 128, "
                              "workers: 2}", n=4000, step=500))
    out = tmp_path / "bundle"
    code = main(["train", str(job), "--cluster", cluster.scheduler.address, "--out",
                 str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Data-parallel training on 2 workers (gloo" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    parallel = metrics["data_parallel"]
    ranks = parallel["per_rank"]
    assert parallel["ranks"] == 2 and parallel["backend"] == "gloo"
    assert sorted(r["worker"] for r in ranks) == workers_of(cluster)
    steps = parallel["steps_per_epoch"]
    assert steps > 0 and [r["steps"] for r in ranks] == [3 * steps, 3 * steps]
    assert all(r["rows"] > 0 for r in ranks)  # both trained on events of their own
    assert sum(r["rows"] for r in ranks) == sum(metrics["events_per_class"]["train"])
    assert ranks[0]["digests"] == ranks[1]["digests"]  # in step after every epoch
    assert len(set(ranks[0]["digests"])) == 3  # and training changed them every epoch
    assert metrics["auc"] > 0.75  # 0.5 would be no learning
    assert ModelBundle.load(out).kind == "onnx"


KILLS_RANK_ONE = '''\
import os
import signal

import torch

calls = 0


class Net(torch.nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.layer = torch.nn.Linear(n_features, 1)

    def forward(self, x):
        global calls
        if self.training and torch.distributed.is_initialized() and \\
                torch.distributed.get_rank() == 1:
            calls += 1
            if calls == 40:  # in epoch 2: rank 1's worker dies mid-training
                os.kill(os.getpid(), signal.SIGKILL)
        return self.layer(x)


def model(n_features):
    return Net(n_features)
'''


@pytest.mark.slow
def test_a_lost_rank_fails_the_job_naming_the_worker_and_epoch(fresh_cluster: Any,
                                                                tmp_path: Path,
                                                                capsys: Any) -> None:
    from mlaas_dask.cli import main

    (tmp_path / "net.py").write_text(KILLS_RANK_ONE)
    job = tmp_path / "job.yaml"
    job.write_text(sample_job(tmp_path, "{file: net.py, epochs: 3, batch_size: 128, "
                              "workers: 2}", n=4000, step=500))
    workers = workers_of(fresh_cluster)
    code = main(["train", str(job), "--cluster", fresh_cluster.scheduler.address, "--out",
                 str(tmp_path / "bundle"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "rank 1 of 2 on worker" in err and workers[1] in err and "left the cluster" in err
    assert "Training had got after epoch 1" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bkg.root", "job.yaml", "net.py",
                                                          "sig.root"]  # no bundle, no checkpoint
