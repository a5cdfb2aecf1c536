"""SGDClassifier through dask-ml's Incremental vs partial_fit in one process.

Same generated files (>= 2M events), same features, split, preprocessing, block count and
epochs. Figures:

- ``train_ratio_1worker``: training events/s over the partitions with one single-threaded
  worker, over calling ``partial_fit`` block by block in one process on the same arrays
  (target >= 0.7);
- ``total_ratio_2workers``: read + features + training with two workers, over the same in
  one process (uproot read, FeatureSpec, partial_fit) (target > 1).

Usage: python benchmarks/bench_incremental.py [--events 2000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import emit, sample_files, sample_job

EPOCHS = 3


def job(events: int, step: int):  # noqa: ANN201
    from mlaas_dask.job import job_from_text

    return job_from_text(sample_job(sample_files(events), step, rest=f"""model:
  class: sklearn.linear_model.SGDClassifier
  params: {{loss: log_loss}}
  epochs: {EPOCHS}
  balance_classes: false
  early_stopping_rounds: 0
split: {{train: 0.85, validation: 0.0, test: 0.15, seed: 42}}
"""))


def one_process(the_job, blocks: int) -> dict[str, float]:  # noqa: ANN001
    """uproot + FeatureSpec + partial_fit, all in this process."""
    import uproot
    from sklearn.linear_model import SGDClassifier

    from mlaas_dask.features import Preprocess
    from mlaas_dask.train.split import assign_split

    spec = the_job.features
    start = time.perf_counter()
    X, y = [], []
    for group in the_job.dataset.groups:
        for path in group.files:
            with uproot.open(path) as handle:
                events = handle["Events"].arrays(
                    [*spec.branches(), "run", "luminosityBlock", "event"])
            split = assign_split([np.asarray(events[b]) for b in
                                  ("run", "luminosityBlock", "event")], 0.85, 0.0, 42)
            X.append(spec.transform(events)[split == 0])
            y.append(np.full(int((split == 0).sum()), 1 if group.name == "signal" else 0))
    X, y = np.concatenate(X), np.concatenate(y)
    read = time.perf_counter() - start
    filled = Preprocess(0.0).apply(X)
    pre = Preprocess(0.0, tuple(filled.mean(axis=0)), tuple(filled.std(axis=0) + 1e-12))
    order = np.random.default_rng(0).permutation(len(y))  # mixed classes in every block
    Xs, ys = pre.apply(X)[order], y[order]
    model = SGDClassifier(loss="log_loss")
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for xb, yb in zip(np.array_split(Xs, blocks), np.array_split(ys, blocks), strict=True):
            model.partial_fit(xb, yb, classes=[0, 1])
    return {"read_seconds": read, "train_seconds": time.perf_counter() - start,
            "events": len(y)}


def distributed(the_job, workers: int) -> dict[str, float]:  # noqa: ANN001
    import tempfile

    from distributed import Client, LocalCluster

    from mlaas_dask.train import train

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
        client.run(lambda: None)
        result = train(the_job, cluster=client, out=f"{tmp}/b", progress=False,
                       log=lambda *a, **k: None)
    seconds = result.metrics["seconds"]
    return {"read_seconds": seconds["read_features"], "train_seconds": seconds["train"],
            "partial_fit_seconds": result.metrics["partial_fit_seconds"],
            "blocks": result.metrics["blocks"], "auc": result.metrics["auc"],
            "events": sum(result.metrics["events_per_class"]["train"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--step-size", type=int, default=250_000)
    args = parser.parse_args()
    the_job = job(args.events, args.step_size)
    one = distributed(the_job, 1)
    two = distributed(the_job, 2)
    base = one_process(the_job, one["blocks"])
    # training alone: the partial_fit passes (preprocessing and block mixing excluded on
    # both sides; they are in the totals)
    rate = {name: EPOCHS * r["events"] / r.get("partial_fit_seconds", r["train_seconds"])
            for name, r in (("base", base), ("one", one), ("two", two))}
    emit("incremental", {
        "events": args.events, "training_events": base["events"], "epochs": EPOCHS,
        "blocks": one["blocks"],
        "one_process_train_events_per_s": round(rate["base"]),
        "incremental_1worker_train_events_per_s": round(rate["one"]),
        "incremental_2workers_train_events_per_s": round(rate["two"]),
        "train_ratio_1worker": round(rate["one"] / rate["base"], 3),
        "one_process_total_s": round(base["read_seconds"] + base["train_seconds"], 2),
        "incremental_2workers_total_s": round(two["read_seconds"] + two["train_seconds"], 2),
        "total_ratio_2workers": round((base["read_seconds"] + base["train_seconds"])
                                      / (two["read_seconds"] + two["train_seconds"]), 3),
        "auc_2workers": round(two["auc"], 4),
    })


if __name__ == "__main__":
    main()
