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

Usage: python benchmarks/bench_nn_parallel.py [--events 200000] [--hidden 512]
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


def job_text(events: int, net: Path, workers: int, epochs: int, batch: int) -> str:
    return sample_job(sample_files(events), max(20_000, events // 8), rest=f"""model:
  file: {net}
  epochs: {epochs}
  batch_size: {batch}
  early_stopping_rounds: 0
  workers: {workers}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

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
