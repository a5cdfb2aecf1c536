"""Neural-network training throughput: the mlaas loader vs tensors already in memory.

Side by side in one run, on the generated sample (default 2M events), the same MLP
(3 x 128, ReLU, one logit), batch size, optimizer (Adam 1e-3) and torch threads:

- ``mlaas``: ``mlaas train`` on a LocalCluster of ONE worker process with ``--threads``
  threads -- the loader fetches mixed, preprocessed chunks from the partitions the
  worker computed, prefetching in a background thread. Epoch 1 includes fetching the
  chunks; later epochs shuffle the rows held in memory (``stream: false``) or fetch them
  again (``--stream``).
- ``baseline``: one process, the same preprocessed float32 matrix already in memory as
  torch tensors, a new random permutation per epoch, the same model and batches.

Reported: training events/s per epoch of both and their ratio (target: mlaas >= 0.9 of
the baseline), and read + features + one epoch in events/s next to MLaaS4HEP's published
~1k events/s for its generator (its Python loop flattening jagged branches per event).

With ``--compare-stream``: the same job trained twice on the same LocalCluster
(``--workers``, default 2), the matrix held in memory (``stream: false``) and streamed
(``stream: true``: the partitions read again every epoch, here from the feature cache):
epoch events/s of both, and the peak RSS of all processes (client and workers) during
each next to the feature matrix's size.

Usage: python benchmarks/bench_nn_loader.py [--events 2000000] [--epochs 2]
       [--threads 1] [--batch-size 512] [--stream] [--compare-stream [--workers 2]]

The baseline runs before and after mlaas (the machine's other load drifts); the ratios
use the median of its epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PeakMemory, emit, sample_files, sample_job

REPO = Path(__file__).resolve().parents[1]
MLAAS4HEP_EVENTS_PER_S = 1000  # MLaaS4HEP's published reading rate (DESIGN.md anchors)


def example_network(n_features: int):  # noqa: ANN201
    """examples/torch_mlp.py's network, imported as a plain module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_mlp",
                                                  REPO / "examples" / "torch_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model(n_features)


def baseline(x: np.ndarray, y: np.ndarray, w: np.ndarray, epochs: int, batch_size: int,
             threads: int) -> tuple[list[float], list[float]]:
    """Events per second (wall clock) and per CPU second of the training thread, per
    epoch, of the same network trained on in-memory tensors."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = example_network(x.shape[1])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w)
    rates, cpu_rates = [], []
    for _ in range(epochs):
        network.train()
        start, cpu = time.perf_counter(), time.thread_time()
        order = torch.randperm(len(yt))
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            values = loss_fn(network(xt[index])[:, 0], yt[index])
            wb = wt[index]
            loss = (values * wb).sum() / wb.sum()
            loss.item()  # as mlaas: one sync per batch
            loss.backward()
            optimizer.step()
        rates.append(len(yt) / (time.perf_counter() - start))
        cpu_rates.append(len(yt) / (time.thread_time() - cpu))
    return rates, cpu_rates


def training_matrix(files: dict[str, list[Path]], spec) -> tuple[np.ndarray, ...]:  # noqa: ANN001
    """The training split of the sample in one process: NaN filled, standard-scaled on
    these rows, weights with class balancing -- as mlaas prepares them."""
    import uproot

    from mlaas_dask.train.matrix import balance_factors
    from mlaas_dask.train.split import assign_split

    xs, ys = [], []
    for label, group in ((1, "signal"), (0, "background")):
        for path in files[group]:
            with uproot.open(path) as handle:
                events = handle["Events"].arrays([*spec.branches(), "run",
                                                  "luminosityBlock", "event"])
            split = assign_split([np.asarray(events[b]) for b in
                                  ("run", "luminosityBlock", "event")], 0.7, 0.15, 42)
            keep = split == 0
            xs.append(spec.transform(events)[keep])
            ys.append(np.full(int(keep.sum()), label, np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    x = np.where(np.isnan(x), 0.0, x)
    std = x.std(0)
    std[std == 0] = 1
    x = ((x - x.mean(0)) / std).astype(np.float32)
    factors = balance_factors(np.bincount(y, minlength=2)).astype(np.float32)
    return x, y, factors[y]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--compare-stream", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.compare_stream:
        compare_stream(args)
        return

    from distributed import Client, LocalCluster

    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    files = sample_files(args.events)
    model = (f"\nmodel: {{file: {REPO / 'examples' / 'torch_mlp.py'}, epochs: {args.epochs}, "
             f"batch_size: {args.batch_size}, early_stopping_rounds: 0, "
             f"stream: {str(args.stream).lower()}}}\n"
             "split: {train: 0.7, validation: 0.15, test: 0.15, seed: 42}\n")
    job = job_from_text(sample_job(files, step=250_000, rest=model))
    x, y, w = training_matrix(files, job.features)
    # the baseline before and after mlaas: the machine's other load drifts
    before, before_cpu = baseline(x, y, w, args.epochs, args.batch_size, args.threads)
    cluster = LocalCluster(n_workers=1, threads_per_worker=args.threads, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=50)
    with tempfile.TemporaryDirectory() as tmp, Client(cluster) as client:
        start = time.perf_counter()
        result = train(job, cluster=client, out=f"{tmp}/b", progress=False)
        total = time.perf_counter() - start
    with contextlib.suppress(Exception):  # a worker with torch may take seconds to exit
        cluster.close(timeout=60)
    after, after_cpu = baseline(x, y, w, args.epochs, args.batch_size, args.threads)
    history = result.metrics["history"]
    ours = history["events_per_second"]
    base = float(np.median(before + after))
    rows = result.metrics["loader"]["training_rows"]
    ours_cpu = [rows / s for s in history["train_cpu_seconds"]]
    base_cpu = float(np.median(before_cpu + after_cpu))
    seconds = result.metrics["seconds"]
    events = result.metadata["data_summary"]["events_read"]
    first_epoch = result.metrics["loader"]["training_rows"] / ours[0]
    read_and_epoch = events / (seconds["read_features"] + first_epoch)
    steady = float(np.median(ours[1:])) if len(ours) > 1 else None
    emit("nn_loader", {
        "events": events, "training_rows": len(y), "features": int(x.shape[1]),
        "threads": args.threads, "batch_size": args.batch_size,
        "mode": result.metrics["loader"]["mode"],
        "loader": result.metrics["loader"],  # chunks, peak rows held by the trainer
        "ours_events_per_s": [round(r) for r in ours],
        "baseline_events_per_s_before": [round(r) for r in before],
        "baseline_events_per_s_after": [round(r) for r in after],
        "ratio_first_epoch": round(ours[0] / base, 3),
        "ratio_later_epochs": round(steady / base, 3) if steady else None,
        "target_ratio": 0.9,
        # per CPU second of the training thread: what the machine's other load does not
        # change (the wall-clock ratios above drift with it)
        "ours_events_per_cpu_s": [round(r) for r in ours_cpu],
        "baseline_events_per_cpu_s": round(base_cpu),
        "cpu_ratio_first_epoch": round(ours_cpu[0] / base_cpu, 3),
        "cpu_ratio_later_epochs": (round(float(np.median(ours_cpu[1:])) / base_cpu, 3)
                                   if len(ours_cpu) > 1 else None),
        "read_features_s": round(seconds["read_features"], 2),
        "read_features_one_epoch_events_per_s": round(read_and_epoch),
        "mlaas4hep_events_per_s": MLAAS4HEP_EVENTS_PER_S,
        "vs_mlaas4hep": round(read_and_epoch / MLAAS4HEP_EVENTS_PER_S, 1),
        "auc": round(result.metrics["auc"], 4), "total_s": round(total, 1),
    })

def compare_stream(args: argparse.Namespace) -> None:
    """Held vs streamed on the same cluster and data (see the module docstring)."""
    from distributed import Client, LocalCluster

    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    files = sample_files(args.events)
    figures: dict[str, object] = {"events": args.events, "workers": args.workers,
                                  "threads": args.threads, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        cache = f"  cache: {tmp}/cache\n"
        # a fresh cluster per mode (a worker's RSS keeps what an earlier job grew it to);
        # streamed first, so that its first read pass fills the feature cache
        for mode in ("true", "false"):
            model = (f"\nmodel: {{file: {REPO / 'examples' / 'torch_mlp.py'}, "
                     f"epochs: {args.epochs}, batch_size: {args.batch_size}, "
                     f"early_stopping_rounds: 0, stream: {mode}}}\n"
                     "split: {train: 0.7, validation: 0.15, test: 0.15, seed: 42}\n")
            job = job_from_text(sample_job(files, step=50_000, dataset_extra=cache,
                                           rest=model))
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   silence_logs=50)
            with Client(cluster) as client, PeakMemory() as peak:
                start = time.perf_counter()
                result = train(job, cluster=client, out=f"{tmp}/b-{mode}", progress=False)
                total = time.perf_counter() - start
            with contextlib.suppress(Exception):
                cluster.close(timeout=60)
            name = "streamed" if mode == "true" else "held"
            n_features = len(result.metadata["features"]["names"])
            figures["matrix_mb"] = round(args.events * (4 * n_features + 8) / 1e6)
            figures[name] = {
                "mode": result.metrics["loader"]["mode"],
                "events_per_s": [round(r) for r in
                                 result.metrics["history"]["events_per_second"]],
                "peak_rss_all_processes_mb": round(peak.peak / 1e6),
                "peak_rows_held": result.metrics["loader"]["peak_rows_held"],
                "partition_reads": result.metrics["loader"].get("partition_reads"),
                "auc": round(result.metrics["auc"], 4), "total_s": round(total, 1),
                "seconds": result.metrics["seconds"]}
    held, streamed = figures["held"], figures["streamed"]
    figures["ratio_streamed_vs_held_events_per_s"] = round(
        float(np.median(streamed["events_per_s"])) / float(np.median(held["events_per_s"])),
        3)
    emit("nn_stream", figures)


if __name__ == "__main__":
    main()
