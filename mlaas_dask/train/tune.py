"""Hyperparameter search on the Dask cluster.

Trials run in parallel, one task per configuration (``client.map``), each training on a
bounded sample of the training split held on the workers and scoring the validation
sample; the best configuration is then trained on all the data as a normal bundle, which
also gets the table of all trials (``tune.json``, ``tune.md``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.errors import ConfigError


@dataclass
class TuneResult:
    """The trials, the best one and the bundle trained with it."""

    trials: list[dict[str, Any]]
    best: dict[str, Any]
    bundle: Path
    metrics: dict[str, Any]


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
            raise ConfigError(f"tune.method: grid needs lists of values, but "
                              f"{', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'};"
                              " use method: random or list the values.")
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
    return int(round(value)) if values.get("int") else float(value)


def run_trial(config: dict[str, Any], data: dict[str, np.ndarray], kind: str,
              base: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """Train one configuration on the sample and score the validation sample (a task)."""
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    params = {**base.get("params", {}), **config}
    try:
        if kind == "xgboost":
            scores, extra = _xgboost_trial(params, data, base, n_classes)
        else:
            scores, extra = _sklearn_trial(params, data, base)
    except Exception as err:  # noqa: BLE001 - a bad configuration is a failed trial
        return {"params": config, "auc": None, "error": f"{type(err).__name__}: {err}",
                "seconds": round(time.perf_counter() - start, 3)}
    y = data["y_validation"]
    auc = (roc_auc_score(y, scores) if n_classes == 2 else
           roc_auc_score(y, scores, multi_class="ovr", labels=list(range(n_classes))))
    return {"params": config, "auc": float(auc), **extra,
            "seconds": round(time.perf_counter() - start, 3)}


def _xgboost_trial(params: dict[str, Any], data: dict[str, np.ndarray], base: dict[str, Any],
                   n_classes: int) -> tuple[np.ndarray, dict[str, Any]]:
    import xgboost

    from mlaas_dask.train.xgb import xgboost_params

    full = {**xgboost_params(n_classes, "cpu", params), "nthread": 1}
    dtrain = xgboost.QuantileDMatrix(data["X_train"], data["y_train"], weight=data["w_train"])
    dvalid = xgboost.QuantileDMatrix(data["X_validation"], data["y_validation"], ref=dtrain)
    booster = xgboost.train(full, dtrain, base["num_boost_round"],
                            evals=[(dvalid, "validation")],
                            early_stopping_rounds=base.get("early_stopping_rounds") or None,
                            verbose_eval=False)
    best = getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1)
    scores = booster.inplace_predict(data["X_validation"], iteration_range=(0, best + 1))
    return np.asarray(scores), {"rounds": best + 1}


def _sklearn_trial(params: dict[str, Any], data: dict[str, np.ndarray],
                   base: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    from mlaas_dask.features import Preprocess

    estimator = base["estimator"]
    from sklearn.base import clone

    estimator = clone(estimator).set_params(**params)
    pre = Preprocess(base["fill_value"])
    X = pre.apply(data["X_train"])
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1
    estimator.fit((X - mean) / std, data["y_train"])
    probabilities = estimator.predict_proba((pre.apply(data["X_validation"]) - mean) / std)
    return (probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities), {}


def sample_splits(client: Any, matrices: Any, size: int) -> dict[str, np.ndarray]:
    """A bounded sample of the training and validation splits, from every partition."""
    from mlaas_dask.train.matrix import balance_factors, bounded_sample

    out = {}
    for split, limit in (("train", size), ("validation", max(1, size // 2))):
        x, y, w = matrices.X[split], matrices.y[split], matrices.w[split]
        if x.shape[0] == 0:
            raise ConfigError(f"tune needs events in the {split} split.")
        values = bounded_sample(client, x, y, w, limit)
        out[f"X_{split}"], out[f"y_{split}"], out[f"w_{split}"] = values
    factors = balance_factors(np.bincount(out["y_train"]))
    out["w_train"] = (out["w_train"] * factors[out["y_train"]]).astype(np.float32)
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


def tune(job: Any, *, cluster: Any = None, out: str | Path | None = None,
         overwrite: bool = False, progress: bool = True, log: Any = print) -> TuneResult:
    """Search the job's ``tune.space`` on the cluster, then train the best configuration
    on all the data and write its bundle (with the trials table).

    Parameters are those of :func:`mlaas_dask.train.train`.
    """
    import dataclasses

    import dask
    from distributed import progress as progress_bar

    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster import connect
    from mlaas_dask.train import _prepare, train
    from mlaas_dask.train.matrix import build_matrices

    if job.tune is None:
        raise ConfigError(
            "The job has no 'tune:' section. Add one, e.g.\n"
            "tune:\n  trials: 8\n  space:\n    max_depth: [3, 4, 6]\n"
            "    eta: {low: 0.02, high: 0.3, log: true}"
        )
    out = Path(out or job.output)
    _check_target(out, overwrite)
    settings = job.tune
    configs = configurations(settings.space, settings.trials, settings.method, settings.seed)
    dataset, spec, plan = _prepare(job, log)
    classes = job.dataset.classes
    with connect(cluster if cluster is not None else job.cluster) as client, \
            client.as_current(), dask.config.set({"optimization.fuse.active": False}):
        log(f"Dask dashboard: {client.dashboard_link}")
        matrices = build_matrices(client, dataset, plan, progress=progress)
        data = sample_splits(client, matrices, settings.sample_size)
        del matrices
        base = _base(job, spec.n_features)
        if job.model.file:
            from mlaas_dask.train.usermodel import share_model_file

            share_model_file(client, job.model.file)
        log(f"Running {len(configs)} trials on {len(data['y_train']):,} training and "
            f"{len(data['y_validation']):,} validation events each:")
        shared = client.scatter(data, broadcast=True)
        futures = client.map(run_trial, configs, data=shared, kind=job.model.kind, base=base,
                             n_classes=len(classes), pure=False)
        if progress:
            progress_bar(futures)
            print()
        trials = client.gather(futures)
        ranked = sorted(trials, key=lambda t: -1.0 if t["auc"] is None else -t["auc"])
        if ranked[0]["auc"] is None:
            raise ConfigError("Every trial failed; the first error: "
                              f"{ranked[0].get('error')}. Check tune.space.")
        log(table_markdown(ranked))
        best = ranked[0]
        log(f"Best: {best['params']} (validation AUC {best['auc']:.4f}); training it on all "
            "the data.")
        best_model = dataclasses.replace(job.model, params={**job.model.params,
                                                            **best["params"]})
        result = train(dataclasses.replace(job, model=best_model), cluster=client, out=out,
                       overwrite=overwrite, progress=progress, log=log)
    write_table(result.bundle, ranked)
    return TuneResult(ranked, best, result.bundle, result.metrics)


def _base(job: Any, n_features: int) -> dict[str, Any]:
    model = job.model
    base: dict[str, Any] = {"params": dict(model.params), "fill_value": model.fill_value}
    if model.kind == "xgboost":
        base["num_boost_round"] = model.num_boost_round
        base["early_stopping_rounds"] = model.early_stopping_rounds
    else:
        from mlaas_dask.train.sklearn import make_estimator

        base["estimator"] = make_estimator(model, n_features)
    return base
