"""Data-parallel network training: 2 worker processes (``model.workers: 2``, gloo) vs 1.

Both runs use the same LocalCluster of two single-threaded worker processes (so the read
is the same), the same generated sample, features, split, MLP (compute dominates: 3
hidden layers of ``--hidden`` units), batch size, seed and epochs; they take turns for
``--repeat`` rounds and the figures are medians. Figures:

- ``epoch_events_per_s_1`` / ``_2``: training events per second of an epoch (all ranks
  together: the steps of every rank times the batch size, over the epoch's seconds),
  from the epochs after the first (the first also fetches the blocks to the trainers);
- ``ratio``: 2 workers over 1 (aim: >= 1.6); ``ratio_all_epochs``: the same over every
  epoch, the first one included;
- ``auc_1`` / ``auc_2``: test AUC of each (data-parallel training with the same seed
  sees the batches in another order: close, not equal).

With ``--compare-gpu`` (benchmarks/gpu_check.sh runs it): the same MLP trained with
``device: cuda`` on the ``local-gpu`` cluster (CPU workers read, the GPU worker trains) vs
``workers: 2`` on 2 single-threaded CPU worker processes; ``gpu_speedup`` (epoch events/s,
target >= 5) and ``auc_difference`` (target <= 0.005) go to ``--out`` as JSON. Without a
GPU the cuda run fails with its message (recorded as ``gpu_error``): the CPU path.

Usage: python benchmarks/bench_nn_parallel.py [--events 200000] [--hidden 512]
       python benchmarks/bench_nn_parallel.py --compare-gpu --data DIR --out FILE.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import emit, sample_files, sample_job

NETWORK = '''\
import torch


def model(n_features):
    hidden = {hidden}
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1))
'''


def job_text(events: int, net: Path, workers: int, epochs: int, batch: int,
             device: str = "cpu", data: Path | None = None) -> str:
    files = sample_files(events) if data is None else {
        "signal": sorted(data.glob("signal*.root")),
        "background": sorted(data.glob("background*.root"))}
    return sample_job(files, max(20_000, events // 8), rest=f"""model:
  file: {net}
  epochs: {epochs}
  batch_size: {batch}
  early_stopping_rounds: 0
  workers: {workers}
  device: {device}
split: {{train: 0.7, validation: 0.15, test: 0.15, seed: 42}}
""")


def one_run(client: Any, text: str, out: Path) -> dict[str, Any]:
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    result = train(job_from_text(text), cluster=client, out=out, overwrite=True,
                   progress=False)
    metrics = result.metrics
    ranks = metrics.get("data_parallel", {}).get("ranks", 1)
    # every rank takes the same steps in the same (synchronised) time
    rates = [ranks * r for r in metrics["history"]["events_per_second"]]
    return {"steady": statistics.mean(rates[1:] or rates), "all": statistics.mean(rates),
            "per_epoch": [round(r) for r in rates],
            "auc": metrics["auc"], "train_s": metrics["seconds"]["train"]}


def compare_gpu(args: argparse.Namespace, net: Path, tmp: Path) -> dict[str, Any]:
    """``device: cuda`` on local-gpu vs ``workers: 2`` on 2 CPU worker processes."""
    from distributed import Client, LocalCluster

    from mlaas_dask.errors import MlaasError

    data = Path(args.data) if args.data else None
    cpu_text = job_text(args.events, net, 2, args.epochs, args.batch_size, "cpu", data)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("torch").set_num_threads(1))
        cpu = one_run(client, cpu_text, tmp / "cpu")
    print(f"2 CPU workers: {cpu}", flush=True)
    summary: dict[str, Any] = {
        "events": args.events, "hidden": args.hidden, "epochs": args.epochs,
        "batch_size": args.batch_size, "cpu2_epoch_events_per_s": round(cpu["steady"]),
        "cpu2_auc": round(cpu["auc"], 4), "cpu2_per_epoch": cpu["per_epoch"]}
    gpu_text = job_text(args.events, net, 1, args.epochs, args.batch_size, "cuda", data)
    try:
        gpu = one_run("local-gpu", gpu_text, tmp / "gpu")
    except MlaasError as err:  # no GPU here: the CPU path of gpu_check.sh
        summary["gpu_error"] = str(err)
        print(f"cuda: {err}", flush=True)
        return summary
    print(f"cuda: {gpu}", flush=True)
    summary.update({
        "gpu_epoch_events_per_s": round(gpu["steady"]), "gpu_auc": round(gpu["auc"], 4),
        "gpu_per_epoch": gpu["per_epoch"],
        "gpu_speedup": round(gpu["steady"] / cpu["steady"], 2),
        "auc_difference": round(abs(gpu["auc"] - cpu["auc"]), 4)})
    summary["targets_met"] = summary["gpu_speedup"] >= 5 and summary["auc_difference"] <= 0.005
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compare-gpu", action="store_true",
                        help="device: cuda on local-gpu vs 2 CPU workers (gpu_check.sh)")
    parser.add_argument("--data", help="a sample folder (signal*.root, background*.root) "
                        "instead of benchmarks/data")
    parser.add_argument("--out", help="--compare-gpu: where its JSON summary goes")
    args = parser.parse_args()
    if args.compare_gpu:
        import json

        with tempfile.TemporaryDirectory(prefix="bench-nn-gpu-") as tmp:
            net = Path(tmp) / "mlp.py"
            net.write_text(NETWORK.format(hidden=args.hidden))
            summary = compare_gpu(args, net, Path(tmp))
        emit("nn_gpu", summary)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        return

    from distributed import Client, LocalCluster

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-nn-parallel-") as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        net = Path(tmp) / "mlp.py"
        net.write_text(NETWORK.format(hidden=args.hidden))
        client.run(lambda: __import__("torch").set_num_threads(1))  # imports, not timed
        for _ in range(args.repeat):
            for workers in (1, 2):
                text = job_text(args.events, net, workers, args.epochs, args.batch_size)
                runs[workers].append(one_run(client, text, Path(tmp) / f"b{workers}"))
                print(f"workers {workers}: {runs[workers][-1]}", flush=True)

    def median(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[workers])

    emit("nn_parallel", {
        "events": args.events, "hidden": args.hidden, "epochs": args.epochs,
        "batch_size": args.batch_size, "repeat": args.repeat,
        "epoch_events_per_s_1": round(median(1, "steady")),
        "epoch_events_per_s_2": round(median(2, "steady")),
        "ratio": round(median(2, "steady") / median(1, "steady"), 3),
        "ratio_all_epochs": round(median(2, "all") / median(1, "all"), 3),
        "train_s_1": round(median(1, "train_s"), 2), "train_s_2": round(median(2, "train_s"), 2),
        "auc_1": round(median(1, "auc"), 4), "auc_2": round(median(2, "auc"), 4),
        "target_ratio": 1.6,
    })


if __name__ == "__main__":
    main()
