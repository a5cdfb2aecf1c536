"""Hyperparameter search on the Dask cluster.

Trials run in parallel, one task per configuration (``client.map``), each training on a
bounded sample of the training split held on the workers and scoring the validation
sample; the best configuration is then trained on all the data as a normal bundle, which
also gets the table of all trials (``tune.json``, ``tune.md``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlaas_dask.errors import ConfigError
from mlaas_dask.usercode import share_file

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.cluster import ClusterSpec
    from mlaas_dask.contracts import Metrics
    from mlaas_dask.job import Job
    from mlaas_dask.train.matrix import Matrices
    from mlaas_dask.train.pipeline import Prepared

logger = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """The trials, the best one and the bundle trained with it."""

    trials: list[dict[str, Any]]
    best: dict[str, Any]
    bundle: Path
    metrics: Metrics


def configurations(space: dict[str, Any], trials: int, method: str, seed: int
                   ) -> list[dict[str, Any]]:
    """Parameter sets to try: a grid over lists, or random draws (lists are choices,
    ``{low, high, log, int}`` ranges)."""
    if not space:
        raise ConfigError("tune.space is empty; give parameter -> [values] or "
                          "{low: ..., high: ...}.")
    for name, values in space.items():
        if isinstance(values, dict):
            unknown = set(values) - {"low", "high", "log", "int"}
            if unknown or not {"low", "high"} <= set(values):
                raise ConfigError(f"tune.space.{name} must be a list of values or "
                                  "{low: A, high: B, log: true|false, int: true|false}.")
            if values.get("log") and values["low"] <= 0:
                raise ConfigError(f"tune.space.{name}: log ranges need low > 0.")
        elif not isinstance(values, list) or not values:
            raise ConfigError(f"tune.space.{name} must be a non-empty list or a range.")
    if method == "grid":
        ranges = [n for n, v in space.items() if isinstance(v, dict)]
        if ranges:
            verb = "is a range" if len(ranges) == 1 else "are ranges"
            raise ConfigError(f"tune.method: grid needs lists of values, but "
                              f"{', '.join(ranges)} {verb}; use method: random or list the "
                              "values.")
        grid = [dict(zip(space, combo, strict=True))
                for combo in itertools.product(*space.values())]
        return grid[:trials]
    rng = np.random.default_rng(seed)
    return [{name: _draw(rng, values) for name, values in space.items()}
            for _ in range(trials)]


def _draw(rng: np.random.Generator, values: Any) -> Any:
    if isinstance(values, list):
        return values[int(rng.integers(len(values)))]
    low, high = float(values["low"]), float(values["high"])
    if values.get("log"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    return round(value) if values.get("int") else float(value)


def run_trial(config: dict[str, Any], data: dict[str, np.ndarray], kind: str,
              base: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """Train one configuration on the sample and score the validation sample (a task).

    The trial's model is weighted and preprocessed as training weights and preprocesses
    the final model, and scores the (raw) validation sample through
    :meth:`ModelBundle.predict_matrix`, as the test split is scored.
    """
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    params = {**base.get("params", {}), **config}
    try:
        if kind == "xgboost":
            model, extra = _xgboost_trial(params, data, base, n_classes)
        else:
            model, extra = _sklearn_trial(params, data, base)
        scores = model.predict_matrix(data["X_validation"])
    except Exception as err:  # noqa: BLE001 - a bad configuration is a failed trial
        return {"params": config, "auc": None, "error": f"{type(err).__name__}: {err}",
                "seconds": round(time.perf_counter() - start, 3)}
    y = data["y_validation"]
    auc = (roc_auc_score(y, scores) if n_classes == 2 else
           roc_auc_score(y, scores, multi_class="ovr", labels=list(range(n_classes))))
    return {"params": config, "auc": float(auc), **extra,
            "seconds": round(time.perf_counter() - start, 3)}


def _xgboost_trial(params: dict[str, Any], data: dict[str, np.ndarray], base: dict[str, Any],
                   n_classes: int) -> tuple[ModelBundle, dict[str, Any]]:
    import xgboost

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.train.matrix import balance_factors
    from mlaas_dask.train.xgb import xgboost_params

    full = {**xgboost_params(n_classes, "cpu", params), "nthread": 1}
    w = data["w_train"]
    if base["balance_classes"]:  # as balanced_weights does for the final model
        factors = balance_factors(np.bincount(data["y_train"], weights=w, minlength=n_classes))
        w = (w * factors[data["y_train"]]).astype(np.float32)
    dtrain = xgboost.QuantileDMatrix(data["X_train"], data["y_train"], weight=w)
    dvalid = xgboost.QuantileDMatrix(data["X_validation"], data["y_validation"], ref=dtrain)
    booster = xgboost.train(full, dtrain, base["num_boost_round"],
                            evals=[(dvalid, "validation")],
                            early_stopping_rounds=base.get("early_stopping_rounds") or None,
                            verbose_eval=False)
    best = getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1)
    booster = booster[: best + 1]
    return (ModelBundle(Path("."), base["spec"], booster, base["classes"], kind="xgboost"),
            {"rounds": best + 1})


def _sklearn_trial(params: dict[str, Any], data: dict[str, np.ndarray],
                   base: dict[str, Any]) -> tuple[ModelBundle, dict[str, Any]]:
    from sklearn.base import clone

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.train.preprocess import preprocess_from_matrix
    from mlaas_dask.train.sklearn import incremental_weighting, sample_fit_kwargs

    estimator = clone(base["estimator"]).set_params(**params)
    pre = preprocess_from_matrix(data["X_train"], base["fill_value"], base["scale"])
    y, w = data["y_train"], data["w_train"]
    counts = base["counts"]
    if hasattr(estimator, "partial_fit"):
        estimator = incremental_weighting(estimator, counts, base["balance_classes"])
        kwargs: dict[str, Any] = {}
    else:
        kwargs = sample_fit_kwargs(estimator, y, w, counts, base["balance_classes"])
    estimator.fit(pre.apply(data["X_train"]), y, **kwargs)
    return ModelBundle(Path("."), base["spec"], estimator, base["classes"], kind="sklearn",
                       preprocess=pre), {}


def sample_splits(client: Client, matrices: Matrices, size: int) -> dict[str, np.ndarray]:
    """A bounded sample of the training and validation splits, from every partition
    (raw features and event weights, as the workers computed them)."""
    from mlaas_dask.train.matrix import bounded_sample

    out = {}
    for split, limit in (("train", size), ("validation", max(1, size // 2))):
        x, y, w = matrices.X[split], matrices.y[split], matrices.w[split]
        if x.shape[0] == 0:
            raise ConfigError(f"tune needs events in the {split} split.")
        values = bounded_sample(client, x, y, w, limit)
        out[f"X_{split}"], out[f"y_{split}"], out[f"w_{split}"] = values
    return out


def table_markdown(trials: list[dict[str, Any]]) -> str:
    """The trials as a Markdown table, best first."""
    names = sorted({k for t in trials for k in t["params"]})
    lines = ["| rank | " + " | ".join(names) + " | validation AUC | seconds |",
             "|---" * (len(names) + 3) + "|"]
    for rank, trial in enumerate(trials, 1):
        auc = f"{trial['auc']:.4f}" if trial["auc"] is not None else trial.get("error", "failed")
        values = " | ".join(_fmt(trial["params"].get(n)) for n in names)
        lines.append(f"| {rank} | {values} | {auc} | {trial['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(bundle: Path, trials: list[dict[str, Any]]) -> None:
    """tune.json and tune.md into a finished bundle, each written atomically."""
    for name, text in (("tune.json", json.dumps(trials, indent=2) + "\n"),
                       ("tune.md", table_markdown(trials))):
        tmp = bundle / f".{name}.partial"
        tmp.write_text(text)
        os.replace(tmp, bundle / name)


def tune(job: Job, *, cluster: ClusterSpec | Client | None = None,
         out: str | Path | None = None, overwrite: bool = False,
         progress: bool = True) -> TuneResult:
    """Search the job's ``tune.space`` on the cluster, then train the best configuration
    on all the data and write its bundle (with the trials table).

    The features are read once: the trials draw their samples from the matrices that
    the final training then uses. Parameters are those of :func:`mlaas_dask.train.train`.
    """
    import dataclasses

    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster.placement import StagePlan
    from mlaas_dask.cluster.session import cluster_session
    from mlaas_dask.logs import show_progress
    from mlaas_dask.train.pipeline import prepare, read_matrices, run

    if job.tune is None:
        raise ConfigError(
            "The job has no 'tune:' section. Add one, e.g.\n"
            "tune:\n  trials: 8\n  space:\n    max_depth: [3, 4, 6]\n"
            "    eta: {low: 0.02, high: 0.3, log: true}"
        )
    target = Path(out or job.output)
    _check_target(target, overwrite)
    settings = job.tune
    configs = configurations(settings.space, settings.trials, settings.method, settings.seed)
    t0 = time.perf_counter()
    prepared = prepare(job)
    classes = list(job.dataset.classes)
    with cluster_session(cluster if cluster is not None else job.cluster) as client:
        start = time.perf_counter()
        matrices = read_matrices(client, prepared, StagePlan.for_client(client), progress)
        read_seconds = time.perf_counter() - start
        data = sample_splits(client, matrices, settings.sample_size)
        base = _base(job, prepared, matrices)
        if job.model.file:
            share_file(client, job.model.file)
        logger.info(f"Running {len(configs)} trials on {len(data['y_train']):,} training and "
                    f"{len(data['y_validation']):,} validation events each:")
        shared = client.scatter(data, broadcast=True)
        futures = client.map(run_trial, configs, data=shared, kind=job.model.kind, base=base,
                             n_classes=len(classes), pure=False)
        if progress:
            show_progress(futures, "Trials")
        trials = client.gather(futures)
        del shared, futures
        ranked = sorted(trials, key=lambda t: -1.0 if t["auc"] is None else -t["auc"])
        if ranked[0]["auc"] is None:
            raise ConfigError("Every trial failed; the first error: "
                              f"{ranked[0].get('error')}. Check tune.space.")
        logger.info(table_markdown(ranked))
        best = ranked[0]
        logger.info(f"Best: {best['params']} (validation AUC {best['auc']:.4f}); training it "
                    "on all the data.")
        best_model = dataclasses.replace(job.model, params={**job.model.params,
                                                            **best["params"]})
        result = run(dataclasses.replace(job, model=best_model), client, prepared, target,
                     overwrite=overwrite, progress=progress, t0=t0,
                     matrices=(matrices, read_seconds))
    write_table(result.bundle, ranked)
    return TuneResult(ranked, best, result.bundle, result.metrics)


def _base(job: Job, prepared: Prepared, matrices: Matrices) -> dict[str, Any]:
    """What every trial needs besides its parameters and the sample: the job's model
    settings, so that trials weight and preprocess as the final training does."""
    model = job.model
    base: dict[str, Any] = {
        "params": dict(model.params), "fill_value": model.fill_value, "scale": model.scale,
        "balance_classes": model.balance_classes, "spec": prepared.spec,
        "classes": list(job.dataset.classes),
        "counts": matrices.stats["events_per_class"]["train"],
    }
    if model.kind == "xgboost":
        base["num_boost_round"] = model.num_boost_round
        base["early_stopping_rounds"] = model.early_stopping_rounds
    else:
        from mlaas_dask.train.sklearn import make_estimator

        base["estimator"] = make_estimator(model, prepared.spec.n_features)
    return base
