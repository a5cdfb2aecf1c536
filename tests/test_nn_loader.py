"""The network loader: chunks mixing partitions of every class (no one-class batch when
every partition holds one class), every row once per epoch in a new order, memory or
streamed with bounded rows held -- from partitions held by real Dask worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlaas_dask.features import Preprocess
from mlaas_dask.nn.loader import Loader, Piece, batches, from_partitions, plan_chunks


def test_chunks_hold_every_class_and_cover_each_row_once() -> None:
    rows = [1000] * 10 + [500, 700]  # ten signal partitions, two background ones
    counts = [[0, 1000]] * 10 + [[500, 0], [700, 0]]
    for seed in range(5):
        chunks = plan_chunks(rows, counts, 1000, np.random.default_rng(seed))
        assert len(chunks) == 11
        for chunk in chunks:
            classes = {int(np.argmax(counts[p.part])) for p in chunk}
            assert classes == {0, 1}, chunk
        seen = np.zeros(sum(rows), int)
        starts = np.cumsum([0, *rows])
        for piece in (p for c in chunks for p in c):
            seen[starts[piece.part] + piece.start:starts[piece.part] + piece.stop] += 1
        assert (seen == 1).all()


def test_leftover_rows_open_the_next_chunk() -> None:
    def chunk(label: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros((n, 1), np.float32), np.full(n, label), np.ones(n, np.float32)

    # chunks of 150 rows with batches of 100: without carrying the 50 left over, every
    # chunk would end on a batch of 50
    out = list(batches(iter([chunk(0, 150), chunk(1, 150), chunk(0, 150)]), 100,
                       np.random.default_rng(0)))
    assert [len(b[1]) for b in out] == [100, 100, 100, 100, 50]


def _one_class_partition(label: int, n: int, start: int) -> dict:
    ids = np.arange(start, start + n, dtype=np.float32)[:, None]
    x = np.hstack([ids, np.full((n, 1), label, np.float32)])
    part = (x, np.full(n, label, np.int32), np.ones(n, np.float32))
    empty = (x[:0], part[1][:0], part[2][:0])
    return {"train": part, "validation": (x[:n // 10], part[1][:n // 10], part[2][:n // 10]),
            "test": empty,
            "stats": {"train": np.bincount(part[1], minlength=2).tolist(),
                      "validation": np.bincount(part[1][:n // 10], minlength=2).tolist()}}


def _epochs(data, batch_size: int) -> dict:
    from distributed import rejoin, secede

    loader = Loader(data, batch_size, seed=3)
    secede()  # as the training task: the pieces' tasks may need this worker's thread
    try:
        return _run_epochs(loader)
    finally:
        rejoin()


def _run_epochs(loader: Loader) -> dict:
    out = {"batches": [], "ids": []}
    for epoch in (1, 2, 3):
        labels, ids = [], []
        for x, y, _ in loader.epoch(epoch):
            labels.append(np.bincount(y, minlength=2).tolist())
            ids.append(x[:, 0].astype(int))
        out["batches"].append(labels)
        out["ids"].append(np.concatenate(ids))
    out["validation"] = sum(len(b[1]) for b in loader.validation())
    out["report"] = loader.report()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["memory", "held"])
def test_loader_on_worker_processes(client, stream: bool) -> None:
    """Each partition holds one class, and is held by one of two worker processes: no
    batch is one class, every row comes once per epoch, epochs differ; fetching the
    chunks again every epoch (mode held) holds a bounded number of rows."""
    sizes = [(1, 900)] * 9 + [(0, 1200), (0, 600)]
    futures, start = [], 0
    for label, n in sizes:
        futures.append(client.submit(_one_class_partition, label, n, start, pure=False))
        start += n
    data = from_partitions(client, futures, Preprocess(0.0), (1.0, 1.0), n_features=2,
                           batch_size=128, stream=stream, memory_limit=0)
    assert data.mode == ("held" if stream else "memory")
    result = client.submit(_epochs, data, 128, pure=False).result()
    total = sum(n for _, n in sizes)
    for epoch_batches in result["batches"]:
        full = [b for b in epoch_batches if sum(b) == 128]
        assert len(full) == total // 128
        assert all(min(b) > 0 for b in full), epoch_batches  # both classes in every batch
    for ids in result["ids"]:
        assert sorted(ids.tolist()) == list(range(total))
    assert not np.array_equal(result["ids"][0], result["ids"][1])
    assert not np.array_equal(result["ids"][1], result["ids"][2])
    assert result["validation"] == sum(n // 10 for _, n in sizes)
    report = result["report"]
    if stream:
        assert report["chunks_fetched"] == 3 * 11  # 9900 rows in chunks of ~900, every epoch
        # the chunks prefetched plus the one being trained on (each about 900 rows)
        assert report["peak_rows_held"] <= (data.prefetch + 2) * 1300 < total
    else:
        assert report["chunks_fetched"] == 11  # the first epoch; later ones from memory


@pytest.mark.slow
def test_splits_that_do_not_fit_the_trainer_are_fetched_every_epoch(client) -> None:
    futures = [client.submit(_one_class_partition, label, 1000, 1000 * label, pure=False)
               for label in (0, 1)]
    args = {"n_features": 2, "batch_size": 64, "stream": False}
    fits = from_partitions(client, futures, Preprocess(0.0), (1, 1), memory_limit=10**9,
                           **args)
    # 2000 rows x (2 features + label + weight): 24 kB; a limit of 20 kB does not hold it
    small = from_partitions(client, futures, Preprocess(0.0), (1, 1), memory_limit=20_000,
                            **args)
    assert (fits.mode, small.mode) == ("memory", "held")


@pytest.mark.slow
def test_stream_true_trains_end_to_end(client, tmp_path: Path) -> None:
    from helpers import torch_job

    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    torch_job(tmp_path, settings="epochs: 2, batch_size: 100, stream: true")
    job = job_from_text((tmp_path / "job.yaml").read_text(), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    loader = json.loads((result.bundle / "metrics.json").read_text())["loader"]
    assert loader["mode"] == "stream"
    assert loader["peak_rows_held"] < loader["training_rows"]
    assert result.metrics["auc"] > 0.75


def test_pieces_are_rows_of_one_partition() -> None:
    assert Piece(3, 10, 25).rows == 15


def _faults_per_batch(use_allocator: bool) -> float:
    """Minor page faults per batch of a 3 x 128 MLP trained in this (worker) process."""
    import contextlib
    import resource

    import torch

    from mlaas_dask.nn.trainer import training_allocator

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = [torch.nn.Linear(48, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
              torch.nn.ReLU(), torch.nn.Linear(128, 1)]
    network = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(network.parameters())
    x = torch.randn(512, 48)

    def step() -> None:
        optimizer.zero_grad()
        network(x.clone()).sum().backward()
        optimizer.step()

    with training_allocator() if use_allocator else contextlib.nullcontext():
        step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50


@pytest.mark.slow
def test_training_allocator_stops_page_faults_in_dask_workers() -> None:
    """Dask workers run with MALLOC_TRIM_THRESHOLD_ set, which makes glibc mmap every
    batch's activations afresh; the trainer's allocator settings keep them on the heap.
    (A fresh worker: the heap of one that trained before holds other free blocks.)"""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as own:
        assert own.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        plain = own.submit(_faults_per_batch, False, pure=False).result()
        tuned = own.submit(_faults_per_batch, True, pure=False).result()
    assert plain > 100 and tuned < plain / 10, (plain, tuned)  # measured: 414 and 11


def test_prefetch_hands_over_every_chunk_to_a_slow_consumer() -> None:
    """The prefetch thread keeps at most ``depth`` chunks queued or in flight and hands
    over every one, however slowly the trainer takes them (it once ended the epoch when
    the queue was full and nothing was in flight)."""
    import time

    from mlaas_dask.nn.loader import Prefetch

    class Fake:
        def __init__(self) -> None:
            self.in_flight = self.most = 0

        def submit(self, chunk):
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            return chunk

        def collect(self, chunk):
            self.in_flight -= 1
            n = chunk[0].rows
            return np.zeros((n, 1), np.float32), np.zeros(n, np.int64), np.ones(n, np.float32)

    fake = Fake()
    chunks = [[Piece(i, 0, 10 + i)] for i in range(12)]
    prefetch = Prefetch(fake, chunks, depth=2)
    got = []
    for arrays in prefetch:
        time.sleep(0.02)
        got.append(len(arrays[1]))
    prefetch.close()
    assert got == [10 + i for i in range(12)]
    assert fake.most <= 2
