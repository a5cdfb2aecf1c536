"""Distributed XGBoost through ``xgboost.dask`` (DaskQuantileDMatrix, early stopping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xgboost
import xgboost.dask  # noqa: F401 - must be imported explicitly

from mlaas_dask.errors import ConfigError
from mlaas_dask.train.matrix import balance_factors

DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.1,
    "max_bin": 256,
    "subsample": 1.0,
}


def xgboost_params(n_classes: int, device: str, user: dict[str, Any]) -> dict[str, Any]:
    """Parameters for ``xgboost.dask.train``: defaults, the objective for the number of
    classes, the device, then the user's overrides."""
    params = dict(DEFAULT_PARAMS)
    # Early stopping watches the last metric. Not AUC: a worker whose partitions hold one
    # class (one file per class is common) makes distributed AUC NaN; the log loss is
    # summed over workers exactly. The test AUC is computed afterwards, on the client.
    if n_classes == 2:
        params.update(objective="binary:logistic", eval_metric=["logloss"])
    else:
        params.update(objective="multi:softprob", num_class=n_classes,
                      eval_metric=["merror", "mlogloss"])
    params["device"] = device
    params.update(user)
    return params


def resolve_device(client: Any, requested: str) -> str:
    """``auto`` becomes ``cuda`` when the cluster has workers tagged with a GPU resource."""
    if requested != "auto":
        return requested
    workers = client.scheduler_info().get("workers", {}).values()
    return "cuda" if any("GPU" in w.get("resources", {}) for w in workers) else "cpu"


def balanced_weights(y: Any, w: Any, class_weight_totals: Sequence[float]) -> Any:
    """Scale event weights so that every class has the same total weight."""
    factors = balance_factors(class_weight_totals).astype(np.float32)
    return w.map_blocks(lambda wb, yb: wb * factors[yb], y, dtype=np.float32)


PROGRESS_TOPIC = "mlaas-train-progress"


class ProgressCallback(xgboost.callback.TrainingCallback):
    """Reports the evaluation metrics every few rounds, from the first worker only, as a
    Dask event on :data:`PROGRESS_TOPIC` that the client subscribes to."""

    def __init__(self, total: int, every: int = 10) -> None:
        super().__init__()
        self.total = total
        self.every = every

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        last = epoch + 1 == self.total
        if (epoch % self.every and not last) or xgboost.collective.get_rank() != 0:
            return False
        parts = [f"{data}-{metric}={values[-1]:.4f}"
                 for data, metrics in evals_log.items() for metric, values in metrics.items()]
        from distributed import get_worker

        get_worker().log_event(PROGRESS_TOPIC,
                               f"  round {epoch + 1:>4}/{self.total}  " + "  ".join(parts))
        return False


WORKERS_TOPIC = "mlaas-train-workers"


class WhereCallback(xgboost.callback.TrainingCallback):
    """Tells the client which Dask workers train (one event per worker, before the first
    round): the bundle's metadata records where training ran, not where it was meant to."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run

    def before_training(self, model: Any) -> Any:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(WORKERS_TOPIC, {"run": self.run, "address": worker.address})
        return model


def train_booster(
    client: Any,
    X: dict[str, Any],
    y: dict[str, Any],
    w: dict[str, Any],
    params: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int | None,
    progress: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Train on the ``train`` split with early stopping on ``validation``.

    ``progress``, when given, is called with a line of metrics every few rounds.
    Returns the booster cut to its best iteration and the evaluation history.
    """
    dtrain = xgboost.dask.DaskQuantileDMatrix(client, X["train"], y["train"],
                                              weight=w["train"],
                                              max_bin=params.get("max_bin", 256))
    evals = [(dtrain, "train")]
    has_validation = X["validation"].shape[0] > 0
    if has_validation:
        dvalid = xgboost.dask.DaskQuantileDMatrix(client, X["validation"], y["validation"],
                                                  weight=w["validation"], ref=dtrain,
                                                  max_bin=params.get("max_bin", 256))
        evals.append((dvalid, "validation"))
    import uuid

    run = uuid.uuid4().hex
    callbacks: list[Any] = [WhereCallback(run)]
    if progress is not None:
        callbacks.append(ProgressCallback(num_boost_round))
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: progress(event[1]))
    try:
        output = xgboost.dask.train(
            client, params, dtrain, num_boost_round=num_boost_round, evals=evals,
            early_stopping_rounds=early_stopping_rounds if has_validation else None,
            callbacks=callbacks, verbose_eval=False,
        )
    except xgboost.core.XGBoostError as err:
        message = str(err).strip().splitlines()[0]
        if "Invalid Parameter" in message or "Unknown" in message or "param" in message.lower():
            raise ConfigError(f"XGBoost rejected the model parameters: {message}. Check "
                              "model.params in the job file.") from None
        raise
    finally:
        if progress is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    booster = output["booster"]
    history = output["history"]
    best = getattr(booster, "best_iteration", None)
    if best is not None and early_stopping_rounds and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    workers = sorted({msg["address"] for _, msg in client.get_events(WORKERS_TOPIC)
                      if isinstance(msg, dict) and msg.get("run") == run})
    return booster, {"history": history, "best_iteration": best,
                     "rounds": booster.num_boosted_rounds(), "workers": workers}


def predict(client: Any, booster: Any, X: Any) -> Any:
    """Lazy distributed scores of a dask array."""
    return xgboost.dask.inplace_predict(client, booster, X, missing=np.nan)
