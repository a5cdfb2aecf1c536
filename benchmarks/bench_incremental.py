"""SGDClassifier through dask-ml's Incremental vs partial_fit in one process.

Same generated files (>= 2M events), same features, split, preprocessing, block count and
epochs. The runs (ours on one worker, ours on two, the one-process baseline reading with
uproot's default zlib and with ISA-L as mlaas_dask does) take turns for ``--repeat``
rounds; figures are medians. Workers import what they need first, as the baseline's
process has (imports are not throughput). Figures:

- ``train_ratio_1worker``: training events/s over the partitions (the ``partial_fit``
  passes of all epochs) with one single-threaded worker, over calling ``partial_fit``
  block by block in one process on the same arrays (target >= 0.7);
- ``total_ratio_2workers``: read + features + preprocessing + training with two workers,
  over the same in one process (uproot read, FeatureSpec, NaN filling, standard scaling,
  shuffling, partial_fit) (target > 1); ``total_ratio_2workers_same_decoder``: the same
  with the baseline reading through ISA-L too.

Usage: python benchmarks/bench_incremental.py [--events 2000000]
"""

from __future__ import annotations

import argparse
import statistics
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


def one_process(the_job, blocks: int, decoder: str) -> dict[str, float]:  # noqa: ANN001
    """uproot + FeatureSpec + preprocessing + partial_fit, all in this process."""
    import uproot
    from sklearn.linear_model import SGDClassifier

    from mlaas_dask.data.decompression import set_zlib_decoder
    from mlaas_dask.features import Preprocess
    from mlaas_dask.train.split import assign_split

    spec = the_job.features
    set_zlib_decoder(decoder)
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
    start = time.perf_counter()
    filled = Preprocess(0.0).apply(X)
    pre = Preprocess(0.0, tuple(filled.mean(axis=0, dtype=np.float64)),
                     tuple(filled.std(axis=0, dtype=np.float64) + 1e-12))
    order = np.random.default_rng(0).permutation(len(y))  # mixed classes in every block
    Xs, ys = pre.apply(X)[order], y[order]
    prepare = time.perf_counter() - start
    model = SGDClassifier(loss="log_loss")
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for xb, yb in zip(np.array_split(Xs, blocks), np.array_split(ys, blocks), strict=True):
            model.partial_fit(xb, yb, classes=[0, 1])
    fit = time.perf_counter() - start
    return {"total_seconds": read + prepare + fit, "partial_fit_seconds": fit,
            "events": len(y), "stages": {"read_features": read, "preprocess_shuffle": prepare,
                                         "partial_fit": fit}}


def _warm() -> None:
    import sklearn.linear_model  # noqa: F401

    import mlaas_dask.train.matrix  # noqa: F401


def distributed(client, the_job) -> dict[str, float]:  # noqa: ANN001
    import tempfile

    from mlaas_dask.train import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train(the_job, cluster=client, out=f"{tmp}/b", progress=False)
    metrics = result.metrics
    seconds = metrics["seconds"]
    return {"total_seconds": seconds["read_features"] + seconds["train"],
            "partial_fit_seconds": metrics["partial_fit_seconds"],
            "blocks": metrics["blocks"], "auc": metrics["auc"],
            "events": sum(metrics["events_per_class"]["train"]),
            "stages": {k: metrics[k] for k in ("fit_preprocess_seconds",
                                               "mix_blocks_seconds", "partial_fit_seconds")}
            | {"read_features": seconds["read_features"], "train": seconds["train"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--step-size", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from mlaas_dask.cluster import connect

    the_job = job(args.events, args.step_size)
    runs: dict[str, list[dict]] = {}
    with connect("local:1") as one, connect("local:2") as two:
        for client in (one, two):
            client.run(_warm)
        for _ in range(args.repeat):
            runs.setdefault("one", []).append(distributed(one, the_job))
            runs.setdefault("two", []).append(distributed(two, the_job))
            blocks = runs["one"][0]["blocks"]
            runs.setdefault("base", []).append(one_process(the_job, blocks, "zlib"))
            runs.setdefault("base_isal", []).append(one_process(the_job, blocks, "isal"))
    events = {r["events"] for rs in runs.values() for r in rs}
    assert len(events) == 1, events
    n = events.pop()

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    rate = {kind: EPOCHS * n / median(kind, "partial_fit_seconds") for kind in runs}
    total = {kind: median(kind, "total_seconds") for kind in runs}
    emit("incremental", {
        "events": args.events, "training_events": n, "epochs": EPOCHS,
        "blocks": runs["one"][0]["blocks"], "repeat": args.repeat,
        "one_process_train_events_per_s": round(rate["base"]),
        "incremental_1worker_train_events_per_s": round(rate["one"]),
        "incremental_2workers_train_events_per_s": round(rate["two"]),
        "train_ratio_1worker": round(rate["one"] / rate["base"], 3),
        "one_process_total_s": round(total["base"], 2),
        "one_process_isal_total_s": round(total["base_isal"], 2),
        "incremental_2workers_total_s": round(total["two"], 2),
        "total_ratio_2workers": round(total["base"] / total["two"], 3),
        "total_ratio_2workers_same_decoder": round(total["base_isal"] / total["two"], 3),
        "auc_2workers": round(runs["two"][0]["auc"], 4),
        "stages_2workers": runs["two"][-1]["stages"],
        "stages_one_process": {k: round(v, 3) for k, v in runs["base"][-1]["stages"].items()},
    })


if __name__ == "__main__":
    main()
