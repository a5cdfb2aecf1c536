"""Lazy scoring of a dask-awkward collection vs ``mlaas predict``, side by side in one run.

Both score the same files of the generated sample with the same XGBoost bundle (trained
once on a small sample, SAMPLE_FEATURES: 38 features) on the same LocalCluster of two
single-threaded worker processes:

- ``mlaas predict`` (:func:`mlaas_dask.predict.predict_files`, the job path: its own read
  tasks, the scores written as Parquet and friend trees);
- ``uproot.dask`` over the files (the same partitions: ``step_size`` entries) ->
  ``ModelBundle.predict_dask`` -> ``.compute()`` (the scores gathered to the client, as an
  analysis filling histograms has them).

The two take turns, ``--repeat`` rounds after a warm-up round that is not counted; each
time is a median. Figures (one JSON line): events/s of each, ``ratio_dak_vs_predict``
(target >= 0.8), and whether the scores are equal (max absolute difference).

Usage: python benchmarks/bench_dak_scoring.py [--events 2000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import DATA, emit, sample_files, sample_job

STEP = 250_000


def bundle_path() -> Path:
    """An XGBoost bundle on the 200k sample (trained once, kept under benchmarks/data)."""
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    out = DATA / "dak-bench-bundle"
    if not (out / "metadata.json").exists():
        job = job_from_text(sample_job(sample_files(200_000), 100_000,
                                       rest="\nmodel: {num_boost_round: 50}\n"))
        train(job, cluster="local:2", out=out, overwrite=True, progress=False)
    return out


def files_of(events: int) -> list[str]:
    files = sample_files(events)
    return [str(p) for group in ("signal", "background") for p in files[group]]


def by_predict(client: Any, bundle: Path, files: list[str]) -> tuple[float, np.ndarray]:
    import pyarrow.parquet as pq

    from mlaas_dask.predict import predict_files

    out = Path(tempfile.mkdtemp(prefix="bench-dak-"))
    try:
        start = time.perf_counter()
        result = predict_files(bundle, files, out / "scores", cluster=client,
                               step_size=STEP, progress=False)
        seconds = time.perf_counter() - start
        table = pq.read_table(result.parquet, columns=["file", "entry", "score"])
        order = np.lexsort((table["entry"].to_numpy(), table["file"].to_numpy()))
        return seconds, table["score"].to_numpy()[order]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def by_dak(bundle: Path, files: list[str]) -> tuple[float, np.ndarray]:
    import awkward as ak
    import uproot

    from mlaas_dask.bundle import ModelBundle

    start = time.perf_counter()
    events = uproot.dask(dict.fromkeys(files, "Events"), step_size=STEP)
    scores = ModelBundle.load(bundle).predict_dask(events).compute()
    return time.perf_counter() - start, ak.to_numpy(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from mlaas_dask.logs import quiet

    bundle = bundle_path()
    files = files_of(args.events)
    times: dict[str, list[float]] = {"predict": [], "dak": []}
    with quiet(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for round_ in range(args.repeat + 1):
            seconds_p, predicted = by_predict(client, bundle, files)
            seconds_d, lazy = by_dak(bundle, files)
            if round_:  # the first round warms both up
                times["predict"].append(seconds_p)
                times["dak"].append(seconds_d)
    predict_s, dak_s = (statistics.median(times[k]) for k in ("predict", "dak"))
    emit("dak_scoring", {
        "events": len(lazy),
        "workers": 2,
        "partition_entries": STEP,
        "predict_events_per_s": round(len(predicted) / predict_s),
        "dak_events_per_s": round(len(lazy) / dak_s),
        "ratio_dak_vs_predict": round(predict_s / dak_s, 3),
        "target": ">= 0.8",
        "max_abs_difference": float(np.max(np.abs(lazy - predicted))),
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
    })


if __name__ == "__main__":
    main()
