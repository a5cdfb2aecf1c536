"""Distributed XGBoost through ``xgboost.dask`` (DaskQuantileDMatrix, early stopping),
checkpointed so that training resumes when a worker is lost (see :mod:`.faults`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost
import xgboost.dask

from mlaas_dask.errors import ConfigError, first_line
from mlaas_dask.train.faults import (
    Retries,
    TrainingFailed,
    WorkerLost,
    WorkerWatch,
    cancel_dependents,
    forget_topic,
    run_watched,
    wait_watched,
)
from mlaas_dask.train.fitted import Fitted
from mlaas_dask.train.matrix import balance_factors

if TYPE_CHECKING:
    from mlaas_dask.train.pipeline import FitContext

logger = logging.getLogger(__name__)

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


@dataclass
class Boosting:
    """What an XGBoost training needs besides its data.

    Attributes
    ----------
    params
        ``xgboost.dask.train`` parameters.
    num_boost_round, early_stopping_rounds
        The job's rounds; early stopping watches the validation split's last metric.
    checkpoint_every
        Rounds between two checkpoints (0: none; a lost worker restarts from round 0).
    collective_timeout
        Seconds an XGBoost collective operation may wait for a peer.
    progress
        Called with a line of metrics every :data:`PROGRESS_EVERY` rounds, or None.
    """

    params: dict[str, Any]
    num_boost_round: int
    early_stopping_rounds: int | None = None
    checkpoint_every: int = 10
    collective_timeout: int | None = 300
    progress: Callable[[str], Any] | None = None


@dataclass
class Checkpoint:
    """The booster after ``round`` rounds (UBJSON) and the evaluation history up to it."""

    round: int
    model: bytes
    history: dict[str, dict[str, list[float]]]


class CheckpointStore:
    """The latest booster checkpoint of a job, in a hidden folder next to its bundle
    (created with the first checkpoint, removed by :meth:`remove`).

    The client writes it from the events of the training worker, so the workers need no
    access to this folder. ``reached`` is the last round any worker reported.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.reached = 0
        self._lock = threading.Lock()  # written from the client's event loop

    def save(self, checkpoint: Checkpoint) -> None:
        """Write a checkpoint; the state file is replaced last, atomically."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            previous = self._state()
            model = f"booster-{checkpoint.round}.ubj"
            (self.folder / model).write_bytes(checkpoint.model)
            tmp = self.folder / "state.json.tmp"
            tmp.write_text(json.dumps({"round": checkpoint.round, "model": model,
                                       "history": checkpoint.history}))
            os.replace(tmp, self.folder / "state.json")
            if previous and previous["model"] != model:
                (self.folder / previous["model"]).unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The last checkpoint written, or None."""
        with self._lock:
            state = self._state()
            if state is None:
                return None
            model = (self.folder / state["model"]).read_bytes()
        return Checkpoint(state["round"], model, state["history"])

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        import shutil

        with self._lock:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _state(self) -> dict[str, Any] | None:
        path = self.folder / "state.json"
        return json.loads(path.read_text()) if path.is_file() else None


#: rounds between two progress lines
PROGRESS_EVERY = 10
#: prefix of the Dask event topic of one training attempt
TOPIC_PREFIX = "mlaas-train-"


class TrainingMonitor(xgboost.callback.TrainingCallback):
    """Runs on the training workers and reports to the client as Dask events: each
    worker's address (before the first round), then from the first worker only the rounds
    done, a line of metrics every :data:`PROGRESS_EVERY` rounds and, every
    ``checkpoint_every`` rounds, the booster and the evaluation history (the checkpoint
    that training resumes from when a worker is lost)."""

    def __init__(self, topic: str, total: int, checkpoint_every: int, lines: bool) -> None:
        super().__init__()
        self.topic = topic
        self.total = total
        self.checkpoint_every = checkpoint_every
        self.lines = lines

    def before_training(self, model: Any) -> Any:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(self.topic, {"address": worker.address})
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if xgboost.collective.get_rank() != 0:
            return False
        done = model.num_boosted_rounds()  # counts the rounds of a resumed booster too
        message: dict[str, Any] = {"round": done}
        if self.lines and ((done - 1) % PROGRESS_EVERY == 0 or done == self.total):
            parts = [f"{data}-{metric}={values[-1]:.4f}" for data, metrics in
                     evals_log.items() for metric, values in metrics.items()]
            message["line"] = f"  round {done:>4}/{self.total}  " + "  ".join(parts)
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.total:
            message["model"] = bytes(model.save_raw("ubj"))
            message["history"] = {data: {metric: [float(v) for v in values]
                                         for metric, values in metrics.items()}
                                  for data, metrics in evals_log.items()}
        from distributed import get_worker

        get_worker().log_event(self.topic, message)
        return False


class _NoAttributes:
    """A stand-in booster for replaying early-stopping scores."""

    def set_attr(self, **kwargs: Any) -> None:
        pass


class ResumedEarlyStopping(xgboost.callback.EarlyStopping):
    """XGBoost's early stopping (validation split, last metric), continued over a resume:
    the scores before the checkpoint are replayed first, so the best round so far and
    the rounds without improvement carry over, as if training had not stopped."""

    def __init__(self, rounds: int, history: dict[str, dict[str, list[float]]] | None) -> None:
        super().__init__(rounds=rounds)
        if history:
            data = list(history)[-1]  # what EarlyStopping watches: the last data, metric
            metric = list(history[data])[-1]
            for epoch, score in enumerate(history[data][metric]):
                self._update_rounds(score=score, name=data, metric=metric,
                                    model=_NoAttributes(), epoch=epoch)


class _AttemptEvents:
    """The client's side of one attempt's events: where it trains, the rounds reached,
    progress lines, checkpoints (merged with the history before the attempt)."""

    def __init__(self, store: CheckpointStore, prior: Checkpoint | None,
                 progress: Callable[[str], Any] | None) -> None:
        self.store = store
        self.prior = prior.history if prior else {}
        self.progress = progress
        self.workers: set[str] = set()

    def __call__(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        if "address" in message:
            self.workers.add(message["address"])
        if "round" in message:
            self.store.reached = max(self.store.reached, message["round"])
        if "line" in message and self.progress is not None:
            self.progress(message["line"])
        if "model" in message:
            self.store.save(Checkpoint(message["round"], message["model"],
                                       join_history(self.prior, message["history"])))


def join_history(before: dict[str, dict[str, list[float]]],
                 after: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Evaluation histories of two consecutive stretches of rounds, end to end."""
    if not before:
        return after
    return {data: {metric: [*before.get(data, {}).get(metric, []), *values]
                   for metric, values in metrics.items()} for data, metrics in after.items()}


def train_booster(
    client: Any,
    X: dict[str, Any],
    y: dict[str, Any],
    w: dict[str, Any],
    boosting: Boosting,
    store: CheckpointStore,
    watched: list[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One training attempt on the ``train`` split with early stopping on
    ``validation``, continuing from the store's latest checkpoint when there is one.

    ``watched`` are the workers training depends on (all when None): if one leaves,
    the attempt is stopped and :class:`~mlaas_dask.train.faults.WorkerLost` raised.
    Returns the booster cut to its best iteration and the evaluation history.
    """
    from distributed import futures_of

    checkpoint = store.latest()
    has_validation = X["validation"].shape[0] > 0
    splits = ["train", "validation"] if has_validation else ["train"]
    # persisted here, so that an attempt can be stopped by cancelling what it depends on
    inputs = client.persist([d[s] for s in splits for d in (X, y, w)])
    topic = TOPIC_PREFIX + uuid.uuid4().hex
    events = _AttemptEvents(store, checkpoint, boosting.progress)
    client.subscribe_topic(topic, events)
    watch = WorkerWatch(client, watched)
    try:
        output = run_watched(
            lambda: _train(client, inputs, boosting, checkpoint, topic),
            watch, abort=lambda: cancel_dependents(client, futures_of(inputs)))
    finally:
        client.unsubscribe_topic(topic)
        forget_topic(client, topic)
    booster = output["booster"]
    history = join_history(checkpoint.history if checkpoint else {}, output["history"])
    best = getattr(booster, "best_iteration", None)
    stopping = boosting.early_stopping_rounds and has_validation
    if best is not None and stopping and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    return booster, {"history": history, "best_iteration": best,
                     "rounds": booster.num_boosted_rounds(),
                     "workers": sorted(events.workers)}


def _train(client: Any, inputs: list[Any], boosting: Boosting, checkpoint: Checkpoint | None,
           topic: str) -> dict[str, Any]:
    _raise_failed(inputs)  # xgboost.dask would only assert that they finished
    params = boosting.params
    max_bin = params.get("max_bin", 256)
    dtrain = xgboost.dask.DaskQuantileDMatrix(client, inputs[0], inputs[1], weight=inputs[2],
                                              max_bin=max_bin)
    evals = [(dtrain, "train")]
    if len(inputs) > 3:
        evals.append((xgboost.dask.DaskQuantileDMatrix(
            client, inputs[3], inputs[4], weight=inputs[5], ref=dtrain, max_bin=max_bin),
            "validation"))
    done = checkpoint.round if checkpoint else 0
    callbacks: list[Any] = [TrainingMonitor(topic, boosting.num_boost_round,
                                            boosting.checkpoint_every,
                                            lines=boosting.progress is not None)]
    if boosting.early_stopping_rounds and len(evals) > 1:
        callbacks.append(ResumedEarlyStopping(boosting.early_stopping_rounds,
                                              checkpoint.history if checkpoint else None))
    model = xgboost.Booster(model_file=bytearray(checkpoint.model)) if checkpoint else None
    try:
        return xgboost.dask.train(
            client, params, dtrain, num_boost_round=boosting.num_boost_round - done,
            evals=evals, callbacks=callbacks, verbose_eval=False, xgb_model=model,
            coll_cfg=xgboost.collective.Config(timeout=boosting.collective_timeout),
        )
    except xgboost.core.XGBoostError as err:
        message = first_line(err)
        if "Invalid Parameter" in message or "Unknown" in message or "param" in message.lower():
            raise ConfigError(f"XGBoost rejected the model parameters: {message}. Check "
                              "model.params in the job file.") from None
        raise


def _raise_failed(arrays: list[Any]) -> None:
    """Wait for persisted arrays; raise the error of a block that failed (e.g. a file
    that cannot be read any more when a lost worker's blocks are made again)."""
    from distributed import futures_of, wait

    futures = [future for array in arrays for future in futures_of(array)]
    wait(futures)
    for future in futures:
        if future.status == "error":
            future.result()


def train_resumable(client: Any, stages: Any, device: str, X: dict[str, Any],
                    y: dict[str, Any], w: dict[str, Any], boosting: Boosting,
                    store: CheckpointStore, retries: Retries,
                    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Train, resuming from the latest checkpoint each time a training worker is lost.

    Every attempt places the training splits anew (``stages.move_for_training``: on the
    workers that are left, e.g. gathered on the survivor of a machine). Returns the
    booster, its history (with the ``resumes`` that happened) and the parameters of the
    attempt that finished.

    Raises
    ------
    TrainingFailed
        When a worker is lost and :class:`~mlaas_dask.train.faults.Retries` allows no
        more resumes, none is left, or resuming itself failed.
    """
    user = set(boosting.params)
    while True:
        try:
            Xt, yt, wt = stages.move_for_training(device, X, y, w,
                                                  wait=_watched_wait(client))
            params = dict(boosting.params)
            if stages.train_threads and not {"nthread", "n_jobs"} & user:
                params["nthread"] = stages.train_threads
            _warm_idle_workers(client, stages.train_workers)
            attempt = dataclasses.replace(boosting, params=params)
            booster, history = train_booster(client, Xt, yt, wt, attempt, store,
                                             watched=stages.train_workers)
        except WorkerLost as lost:
            Xt = yt = wt = None  # release the attempt's data before the next move
            checkpoint = store.latest()
            retries.resume_or_fail(lost, f"round {store.reached}",
                                   f"round {checkpoint.round}" if checkpoint else None)
            continue
        except Exception as err:
            if retries.events and not isinstance(err, TrainingFailed):
                raise retries.fail_after_loss(err) from err
            raise
        history["resumes"] = retries.events
        return booster, history, params


def _watched_wait(client: Any) -> Callable[[list[Any], list[str]], None]:
    def wait(futures: list[Any], workers: list[str]) -> None:
        wait_watched(futures, WorkerWatch(client, workers))

    return wait


def _warm_idle_workers(client: Any, train_workers: list[str] | None) -> None:
    """While some workers train, the others import XGBoost for the prediction next."""
    if not train_workers:
        return
    import importlib

    from distributed import fire_and_forget

    idle = sorted(set(client.scheduler_info()["workers"]) - set(train_workers))
    for address in idle:
        fire_and_forget(client.submit(importlib.import_module, "xgboost", pure=False,
                                      workers=[address], allow_other_workers=False))


def fit_xgboost(context: FitContext) -> Fitted:
    """The XGBoost fitter of the pipeline: distributed training with early stopping on
    the validation split, checkpointed and resumed after lost workers, then the test
    split scored where it is."""
    from mlaas_dask.bundle import MODEL_FILE, ModelBundle
    from mlaas_dask.train import metrics as metrics_module
    from mlaas_dask.train.pipeline import persist_scores

    job, client, matrices, stages = context.job, context.client, context.matrices, context.stages
    stats = matrices.stats
    w_train = matrices.w["train"]
    if job.model.balance_classes:
        w_train = balanced_weights(matrices.y["train"], w_train,
                                   stats["weight_per_class"]["train"])
    device = resolve_device(client, job.model.device)
    params = xgboost_params(len(context.classes), device, job.model.params)
    logger.info("Training XGBoost on %s events per class (device=%s, up to %d rounds):",
                stats["events_per_class"]["train"], device, job.model.num_boost_round)
    start = time.perf_counter()
    booster, history, params = _fit_checkpointed(context, device, {**matrices.w,
                                                                   "train": w_train}, params)
    train_seconds = time.perf_counter() - start
    stages.ran("train", history.get("workers", []))
    if stages.train_threads:  # predict on every worker again, with the worker's threads
        threads = [w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()]
        booster.set_param({"nthread": max(1, min(threads))})
    model = ModelBundle(context.out, context.spec, booster, context.classes, kind="xgboost")
    scores, predict_seconds = persist_scores(client, model, matrices.X["test"], stages)
    return Fitted(
        model_file=MODEL_FILE, model_bytes=bytes(booster.save_raw("ubj")),
        test_scores=scores,
        model_metadata={"kind": "xgboost", "file": MODEL_FILE, "params": params,
                        "device": device},
        metrics={"best_iteration": history["best_iteration"], "rounds": history["rounds"],
                 "feature_importance": metrics_module.importance(
                     booster, context.spec.feature_names),
                 "history": history["history"], "resumes": history["resumes"]},
        timings={"train": train_seconds, "predict": predict_seconds},
    )


def _fit_checkpointed(context: FitContext, device: str, w: dict[str, Any],
                      params: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """XGBoost with checkpoints in a hidden folder next to the bundle (removed at the
    end, whatever happens), resumed after lost workers up to ``model.max_retries``."""
    from mlaas_dask.train.pipeline import checkpoint_folder

    model = context.job.model
    progress = logger.info if context.progress else None
    boosting = Boosting(params, model.num_boost_round, model.early_stopping_rounds,
                        checkpoint_every=model.checkpoint_every,
                        collective_timeout=model.collective_timeout, progress=progress)
    store = CheckpointStore(checkpoint_folder(context.out))
    retries = Retries(context.client, "XGBoost training", model.max_retries)
    try:
        return train_resumable(context.client, context.stages, device, context.matrices.X,
                               context.matrices.y, w, boosting, store, retries)
    finally:
        store.remove()
