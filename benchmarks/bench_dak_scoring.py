"""Lazy scoring of a dask-awkward collection vs ``mlaas predict``, side by side in one run.

Both score the same files of the generated sample with the same XGBoost bundle (trained
once on a small sample, SAMPLE_FEATURES: 38 features) on the same LocalCluster of two
single-threaded worker processes:

- ``mlaas predict`` (:func:`mlaas_dask.predict.predict_files`, the job path: its own read
  tasks, the scores written as Parquet and friend trees);
- ``uproot.dask`` over the files (the same partitions: ``step_size`` entries) ->
  ``ModelBundle.predict_dask`` -> ``.compute()`` (the scores gathered to the client, as an
  analysis filling histograms has them);
- when coffea is installed, coffea's ``ml_tools.xgboost_wrapper`` on the same collection
  and booster, its ``prepare_awkward`` making the same 38 features with dask-awkward
  operations (``pad_none``/``fill_none``), as a coffea user writes it.

The two take turns, ``--repeat`` rounds after a warm-up round that is not counted; each
time is a median. Figures (one JSON line): events/s of each, ``ratio_dak_vs_predict``
(target >= 0.8), ``ratio_dak_vs_coffea_xgboost_wrapper`` (target > 1), and the largest
score differences.

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
        files_order = table["file"].combine_chunks().indices.to_numpy()  # dictionary codes
        order = np.lexsort((table["entry"].to_numpy(), files_order))
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


def awkward_features(events: Any) -> Any:
    """SAMPLE_FEATURES in dask-awkward operations, as a coffea user writes them for
    ``prepare_awkward`` (sorted by pt, padded and clipped with ``pad_none``, NaN for
    missing objects): the same 38 columns in the same order as the FeatureSpec."""
    import dask_awkward as dak

    def column(values: Any) -> Any:
        return dak.values_astype(values, np.float32)[:, np.newaxis]

    columns = [column(events[b]) for b in ("MET_pt", "MET_phi", "PV_npvs")]
    for name, fields, n in (("Jet", ("pt", "eta", "phi", "mass", "btagDeepB"), 6),
                            ("Muon", ("pt", "eta", "charge"), 2),
                            ("Electron", ("pt", "eta", "charge"), 2)):
        order = dak.argsort(events[f"{name}_pt"], ascending=False, stable=True)
        columns.append(column(dak.num(events[f"{name}_pt"], axis=1)))
        for field in fields:
            padded = dak.pad_none(events[f"{name}_{field}"][order], n, clip=True)
            columns.append(dak.values_astype(dak.fill_none(padded, np.nan), np.float32))
    return dak.concatenate(columns, axis=1)


def by_coffea(bundle: Path, files: list[str]) -> tuple[float, np.ndarray]:
    """coffea's ``xgboost_wrapper`` on the same collection and booster (model.ubj)."""
    import awkward as ak
    import uproot
    from coffea.ml_tools import xgboost_wrapper

    class Wrapper(xgboost_wrapper):  # type: ignore[misc]
        def prepare_awkward(self, events: Any) -> tuple[list[Any], dict[str, Any]]:
            return [awkward_features(events)], {}

    start = time.perf_counter()
    events = uproot.dask(dict.fromkeys(files, "Events"), step_size=STEP)
    scores = Wrapper(str(bundle / "model.ubj"))(events).compute()
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
    try:
        import coffea.ml_tools  # noqa: F401
        runners = {"predict": None, "dak": by_dak, "coffea": by_coffea}
    except ImportError:
        runners = {"predict": None, "dak": by_dak}
    times: dict[str, list[float]] = {k: [] for k in runners}
    scores: dict[str, np.ndarray] = {}
    with quiet(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for round_ in range(args.repeat + 1):
            for name, runner in runners.items():
                seconds, scores[name] = (by_predict(client, bundle, files) if runner is None
                                         else runner(bundle, files))
                if round_:  # the first round warms every runner up
                    times[name].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    events = len(scores["dak"])
    figures: dict[str, Any] = {
        "events": events, "workers": 2, "partition_entries": STEP,
        **{f"{k}_events_per_s": round(events / v) for k, v in median.items()},
        "ratio_dak_vs_predict": round(median["predict"] / median["dak"], 3),
        "target": ">= 0.8",
        "max_abs_difference": float(np.max(np.abs(scores["dak"] - scores["predict"]))),
    }
    if "coffea" in median:
        figures["ratio_dak_vs_coffea_xgboost_wrapper"] = round(
            median["coffea"] / median["dak"], 3)
        figures["coffea_max_abs_difference"] = float(
            np.max(np.abs(scores["coffea"] - scores["dak"])))
    figures["seconds"] = {k: [round(t, 2) for t in v] for k, v in times.items()}
    emit("dak_scoring", figures)


if __name__ == "__main__":
    main()
