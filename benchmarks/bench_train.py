"""`mlaas train` end to end vs a hand-written single-process baseline, with peak memory.

Both run as fresh processes on the same generated files (>= 2M events), same features,
same split (the event-id hash), same XGBoost parameters and threads (2), early stopping
on the validation split, AUC on the test split:

- ours: ``mlaas train JOB --cluster local`` (a LocalCluster of 2 single-threaded worker
  processes; cluster start-up included);
- baseline: uproot ``TTree.arrays`` + numpy padding + ``xgboost.train`` in one process,
  reading as uproot does by default (standard-library zlib); also timed reading through
  ISA-L, as mlaas_dask does (``ratio_ours_vs_baseline_same_decoder``).

The three take turns for ``--repeat`` rounds; times are medians. Figures: wall seconds of
each, ``ratio_ours_vs_baseline`` (target <= 1.25), both AUCs, the peak summed RSS of each
process tree next to the size of the float32 feature matrix.

Usage: python benchmarks/bench_train.py [--events 2000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PeakMemory, emit, sample_files, sample_job

ROUNDS, EARLY, DEPTH, ETA = 100, 10, 6, 0.1


def job_text(files: dict[str, list[Path]], step: int) -> str:
    return sample_job(files, step, rest=f"""model:
  params: {{max_depth: {DEPTH}, eta: {ETA}}}
  num_boost_round: {ROUNDS}
  early_stopping_rounds: {EARLY}
split: {{train: 0.7, validation: 0.15, test: 0.15, seed: 42}}
""")


def baseline(job_path: str, decoder: str) -> None:
    """The hand-written single-process version (run in a child process)."""
    import awkward as ak
    import uproot
    import xgboost
    from sklearn.metrics import roc_auc_score

    from mlaas_dask.data.decompression import set_zlib_decoder
    from mlaas_dask.job import load_job
    from mlaas_dask.train.split import assign_split

    job = load_job(job_path)
    spec = job.features
    set_zlib_decoder(decoder)
    blocks, labels, splits = [], [], []
    for group in job.dataset.groups:
        for path in group.files:
            with uproot.open(path) as handle:
                events = handle["Events"].arrays(
                    [*spec.branches(), "run", "luminosityBlock", "event"])
            columns = [np.asarray(events[b], dtype=np.float32) for b in spec.flat]
            for name, collection in spec.collections.items():
                counts = ak.to_numpy(ak.num(events[f"{name}_{collection.fields[0]}"]))
                starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
                columns.append(counts.astype(np.float32))
                for field in collection.fields:  # stored by falling pt already
                    content = ak.to_numpy(ak.flatten(events[f"{name}_{field}"]))
                    for slot in range(collection.n):
                        column = np.full(len(counts), np.nan, dtype=np.float32)
                        has = counts > slot
                        column[has] = content[starts[has] + slot]
                        columns.append(column)
            blocks.append(np.column_stack(columns))
            labels.append(np.full(len(events), group.label))
            splits.append(assign_split([np.asarray(events[b]) for b in
                                        ("run", "luminosityBlock", "event")],
                                       job.split.train, job.split.validation, job.split.seed))
    X, y, split = np.concatenate(blocks), np.concatenate(labels), np.concatenate(splits)
    del blocks
    train_labels = y[split == 0]
    factors = train_labels.size / (2 * np.bincount(train_labels, minlength=2))  # as ours
    weight = factors[y].astype(np.float32)
    params = {"objective": "binary:logistic", "eval_metric": ["logloss"],
              "tree_method": "hist", "max_depth": DEPTH, "eta": ETA, "nthread": 2}
    dtrain = xgboost.QuantileDMatrix(X[split == 0], y[split == 0], weight=weight[split == 0])
    dvalid = xgboost.QuantileDMatrix(X[split == 1], y[split == 1], ref=dtrain)
    booster = xgboost.train(params, dtrain, ROUNDS,
                            evals=[(dtrain, "train"), (dvalid, "validation")],
                            early_stopping_rounds=EARLY, verbose_eval=False)
    booster = booster[: booster.best_iteration + 1]
    scores = booster.inplace_predict(X[split == 2])
    print(json.dumps({"auc": roc_auc_score(y[split == 2], scores),
                      "matrix_bytes": X.nbytes, "features": X.shape[1]}))


def timed(command: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with PeakMemory(process.pid) as memory:
        out, _ = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{command} failed with {process.returncode}")
    return seconds, memory.peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--step-size", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default="zlib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        baseline(args.baseline, args.decoder)
        return
    files = sample_files(args.events)
    runs: dict[str, list[tuple[float, int]]] = {"base": [], "base_isal": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        job.write_text(job_text(files, args.step_size))
        mlaas = str(Path(sys.executable).with_name("mlaas"))
        for round_ in range(args.repeat):
            for kind, decoder in (("base", "zlib"), ("base_isal", "isal")):
                seconds, memory, out = timed([sys.executable, __file__, "--baseline", str(job),
                                              "--decoder", decoder])
                runs[kind].append((seconds, memory))
                base = json.loads(out.strip().splitlines()[-1])
            seconds, memory, _ = timed([mlaas, "train", str(job), "--out",
                                        f"{tmp}/bundle-{round_}", "--cluster", "local:2",
                                        "--quiet"])
            runs["ours"].append((seconds, memory))
            metrics = json.loads((Path(tmp) / f"bundle-{round_}" / "metrics.json").read_text())
    t = {kind: statistics.median(s for s, _ in values) for kind, values in runs.items()}
    peak = {kind: max(m for _, m in values) for kind, values in runs.items()}
    emit("train", {
        "events": args.events,
        "repeat": args.repeat,
        "baseline_seconds": round(t["base"], 2),
        "baseline_isal_seconds": round(t["base_isal"], 2),
        "ours_seconds": round(t["ours"], 2),
        "ratio_ours_vs_baseline": round(t["ours"] / t["base"], 3),
        "ratio_ours_vs_baseline_same_decoder": round(t["ours"] / t["base_isal"], 3),
        "seconds": {kind: [round(s, 1) for s, _ in values] for kind, values in runs.items()},
        "ours_stage_seconds": metrics["seconds"],
        "baseline_auc": round(base["auc"], 5),
        "ours_auc": round(metrics["auc"], 5),
        "feature_matrix_mb": round(base["matrix_bytes"] / 2**20, 1),
        "baseline_peak_rss_mb": round(peak["base"] / 2**20, 1),
        "ours_peak_rss_mb_all_processes": round(peak["ours"] / 2**20, 1),
    })


if __name__ == "__main__":
    main()
