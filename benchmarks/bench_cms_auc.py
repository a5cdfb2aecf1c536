"""AUC on the real CMS files: mlaas_dask vs a plain single-process XGBoost.

The job is examples/cms-hep-tutorial.yaml (single top vs diboson, CMS 2012 Open Data from
../shared/data). The baseline reads the same files with uproot in one process, uses the
same FeatureSpec, split, event weights, class balancing and parameters, and trains with
``xgboost.train``. Target: |AUC difference| < 0.01.

Usage: python benchmarks/bench_cms_auc.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import emit, job_arrays

REPO = Path(__file__).resolve().parents[1]


def single_process_auc(job, spec) -> float:  # noqa: ANN001
    import xgboost
    from sklearn.metrics import roc_auc_score

    X, y, w, split = job_arrays(job, spec)
    train = split == 0
    totals = np.array([w[train & (y == c)].sum() for c in (0, 1)])
    factors = totals.sum() / (2 * totals)
    params = {"objective": "binary:logistic", "eval_metric": ["logloss"],
              "tree_method": "hist", **job.model.params, "nthread": 2}
    dtrain = xgboost.DMatrix(X[train], y[train], weight=(w * factors[y])[train])
    dvalid = xgboost.DMatrix(X[split == 1], y[split == 1], weight=w[split == 1])
    booster = xgboost.train(params, dtrain, job.model.num_boost_round,
                            evals=[(dvalid, "validation")],
                            early_stopping_rounds=job.model.early_stopping_rounds,
                            verbose_eval=False)
    scores = booster.predict(xgboost.DMatrix(X[split == 2]),
                             iteration_range=(0, booster.best_iteration + 1))
    return float(roc_auc_score(y[split == 2], scores))


def main() -> None:
    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.job import load_job
    from mlaas_dask.train import train

    job = load_job(REPO / "examples" / "cms-hep-tutorial.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(job, cluster="local:2", out=f"{tmp}/b", progress=False)
        seconds = time.perf_counter() - start
        spec = ModelBundle.load(result.bundle).spec
    reference = single_process_auc(job, spec)
    emit("cms_auc", {
        "events": result.metadata["data_summary"]["events_read"],
        "ours_auc": round(result.metrics["auc"], 5),
        "single_process_auc": round(reference, 5),
        "abs_difference": round(abs(result.metrics["auc"] - reference), 5),
        "ours_seconds": round(seconds, 2),
    })


if __name__ == "__main__":
    main()
