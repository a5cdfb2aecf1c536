"""scikit-learn estimators on the distributed data path, through dask-ml.

- estimators with ``partial_fit`` train over the Dask partitions as
  :class:`dask_ml.wrappers.Incremental` does (several epochs, shuffled block order,
  classes declared; the model moves to the data, not the data to the model), one task
  per block and checkpointed, so that a lost worker costs the blocks since the last
  checkpoint (see :class:`BlockChain`);
- others are fitted on a bounded sample of the training split, drawn from every
  partition, and the job says so;
- NaN (missing objects) is replaced and features are standard-scaled, fitted on the
  training split only in one pass over its blocks (the mean and scale of
  :class:`dask_ml.preprocessing.StandardScaler`, 3x faster); both become the bundle's
  ``preprocess.json``, applied identically by ``mlaas predict`` and the server;
- the training blocks each get a share of several partitions (partitions hold one class
  each), written once, preprocessed, row-major;
- test scores come from the fitted model as a bundle applies it (preprocessing, then
  ``predict_proba``: :func:`mlaas_dask.train.pipeline.score_matrix`);
- the model is stored with skops (no pickle), so the server can load it safely.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlaas_dask.bundle import PREPROCESS_FILE, SKOPS_FILE, USER_MODEL_FILE
from mlaas_dask.errors import ConfigError
from mlaas_dask.features import Preprocess
from mlaas_dask.train.faults import (
    Retries,
    TrainingFailed,
    WorkerLost,
    WorkerWatch,
    wait_watched,
)
from mlaas_dask.train.fitted import Fitted
from mlaas_dask.train.matrix import balance_factors, bounded_sample
from mlaas_dask.train.preprocess import fit_preprocess
from mlaas_dask.train.usermodel import estimator_from_class, estimator_from_file
from mlaas_dask.usercode import share_file

if TYPE_CHECKING:
    from mlaas_dask.train.pipeline import FitContext

logger = logging.getLogger(__name__)


def make_estimator(model: Any, n_features: int) -> Any:
    """The job's estimator, from ``model.class`` or ``model.file``."""
    if model.file:
        estimator = estimator_from_file(model.file, n_features)
        if model.params:
            estimator.set_params(**model.params)
    else:
        estimator = estimator_from_class(model.estimator_class, model.params)
    if not hasattr(estimator, "predict_proba"):
        raise ConfigError(
            f"{type(estimator).__name__} has no predict_proba(), so it cannot give scores. "
            "Pick a probabilistic model or loss (e.g. SGDClassifier(loss='log_loss'))."
        )
    return estimator


def fit_sklearn(context: FitContext) -> Fitted:
    """The scikit-learn fitter of the pipeline; see the module docstring."""
    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.train.pipeline import persist_scores

    client, job, matrices, classes = (context.client, context.job, context.matrices,
                                      context.classes)
    model = job.model
    logger.info("Training %s on %s events per class:", model.estimator_class or model.file,
                matrices.stats["events_per_class"]["train"])
    start = time.perf_counter()
    estimator = make_estimator(model, context.spec.n_features)
    if estimator.get_params().get("random_state", 0) is None:
        estimator.set_params(random_state=job.split.seed)  # the same job gives the same model
    if model.file:
        share_file(client, model.file)
    preprocess = fit_preprocess(client, matrices.X["train"], model.fill_value, model.scale)
    preprocess_seconds = time.perf_counter() - start
    X = {name: x.map_blocks(preprocess.apply, dtype=np.float32)
         for name, x in matrices.X.items()}
    counts = matrices.stats["events_per_class"]["train"]
    if hasattr(estimator, "partial_fit"):
        estimator, info = _incremental(client, estimator, X, matrices, preprocess, classes,
                                       counts, model, job.split.seed)
    else:
        estimator, info = _on_sample(client, estimator, X, matrices, counts, model)
    train_seconds = time.perf_counter() - start
    fitted_model = ModelBundle(context.out, context.spec, estimator, classes, kind="sklearn",
                               preprocess=preprocess)
    scores, predict_seconds = persist_scores(client, fitted_model, matrices.X["test"],
                                             context.stages)
    start = time.perf_counter()
    model_file, data = serialise(estimator)
    info["fit_preprocess_seconds"] = round(preprocess_seconds, 3)
    info["serialise_seconds"] = round(time.perf_counter() - start, 3)
    files = {PREPROCESS_FILE: (json.dumps(preprocess.to_dict(), indent=2) + "\n").encode()}
    if model.file:  # the user's classes: loadable later only with their code
        files[USER_MODEL_FILE] = Path(model.file).read_bytes()
    return Fitted(
        model_file=model_file, model_bytes=data, test_scores=scores, files=files,
        metrics=info,
        model_metadata={"kind": "sklearn", "file": model_file,
                        "class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
                        "params": _jsonable(estimator.get_params()),
                        "source": model.file or model.estimator_class,
                        "fit": info["fit"], "scaled": model.scale,
                        "fill_value": model.fill_value, "device": "cpu"},
        timings={"train": train_seconds, "predict": predict_seconds},
    )


def _balance(counts: list[int]) -> dict[int, float]:
    """``class_weight`` for the classes present."""
    return {i: float(f) for i, f in enumerate(balance_factors(counts)) if counts[i]}


def _incremental(client: Any, estimator: Any, X: dict[str, Any], matrices: Any,
                 preprocess: Preprocess, classes: list[str], counts: list[int], model: Any,
                 seed: int) -> tuple[Any, dict[str, Any]]:
    from distributed import wait

    estimator = incremental_weighting(estimator, counts, model.balance_classes)
    # every training block holds a share of several partitions (see mixed_blocks)
    start = time.perf_counter()
    x_train, y_train = client.persist(mixed_blocks(matrices.X["train"], matrices.y["train"],
                                                   preprocess))
    wait([x_train, y_train])  # the epochs below time partial_fit alone
    mix_seconds = time.perf_counter() - start
    chain = BlockChain(client, estimator, list(zip(_block_futures(x_train),
                                                   _block_futures(y_train), strict=True)),
                       np.arange(len(classes)), seed, model.checkpoint_every)
    retries = Retries(client, f"partial_fit of {type(estimator).__name__}", model.max_retries)
    history: list[float] = []
    fit_seconds = 0.0
    for epoch in range(model.epochs):
        start = time.perf_counter()
        fitted = chain.epoch(epoch, retries)
        fit_seconds += time.perf_counter() - start
        if X["validation"].shape[0] > 0:
            history.append(_validation_loss(client, fitted, X["validation"],
                                            matrices.y["validation"], len(classes)))
            logger.info(f"  epoch {epoch + 1:>3}/{model.epochs}  "
                        f"validation-logloss={history[-1]:.4f}")
    blocks = len(x_train.chunks[0])
    del x_train, y_train
    return fitted, {
        "fit": "incremental", "epochs": model.epochs, "blocks": blocks,
        "partial_fit_seconds": round(fit_seconds, 3),
        "mix_blocks_seconds": round(mix_seconds, 3),
        "history": {"validation": {"logloss": history}},
        "event_weights_used": False,
        "resumes": retries.events,
    }


def _validation_loss(client: Any, estimator: Any, x: Any, y: Any, n_classes: int) -> float:
    from dask_ml.wrappers import ParallelPostFit
    from sklearn.metrics import log_loss

    probabilities, labels = client.compute(
        [ParallelPostFit(estimator).predict_proba(x), y], sync=True)
    return float(log_loss(labels, probabilities, labels=np.arange(n_classes)))


def _block_futures(array: Any) -> list[Any]:
    """The futures of a persisted dask array's blocks, in block order."""
    from dask.core import flatten
    from distributed import futures_of

    by_key = {future.key: future for future in futures_of(array)}
    return [by_key[key] for key in flatten(array.__dask_keys__())]


def _partial_fit(estimator: Any, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> Any:
    # a copy: the model of the block before stays as it was in the worker's memory (the
    # checkpoint may fetch it after this task ran, or Dask recompute from it)
    estimator = copy.deepcopy(estimator)
    estimator.partial_fit(x, y, classes=classes)
    return estimator


class BlockChain:
    """``partial_fit`` over the training blocks, one task per block, each taking the
    model the task before returned -- what :class:`dask_ml.wrappers.Incremental` does
    (the same block order from the seed, every epoch), checkpointed.

    Every ``checkpoint_every`` blocks, and at the end of each epoch, the model comes back
    to this process. When a worker leaves, the tasks after the checkpoint are cancelled
    and the chain goes on from the checkpoint on the workers left (Dask recomputes the
    blocks the lost worker held); ``partial_fit`` is deterministic given its inputs, so
    the model is the one an undisturbed run gives.
    """

    def __init__(self, client: Any, estimator: Any, blocks: list[tuple[Any, Any]],
                 classes: np.ndarray, seed: int, checkpoint_every: int) -> None:
        import sklearn.base
        import sklearn.utils

        self.client = client
        self.blocks = blocks
        self.classes = classes
        self.every = checkpoint_every
        self.order = list(range(len(blocks)))
        sklearn.utils.check_random_state(seed).shuffle(self.order)  # as Incremental
        self.model = sklearn.base.clone(estimator)  # the checkpoint: blocks done below
        self.done = 0  # blocks of the current epoch in self.model
        self._reached = 0  # blocks of the current epoch fitted by the workers

    def epoch(self, epoch: int, retries: Retries) -> Any:
        """Fit one epoch; the fitted model (a copy in this process)."""
        while self.done < len(self.blocks):
            watch = WorkerWatch(self.client)
            futures = self._submit(epoch)
            try:
                self._follow(epoch, futures, watch)
            except WorkerLost as lost:
                self.client.cancel([f for f in futures if f is not None])
                retries.resume_or_fail(lost, self._where(epoch, self._reached),
                                       self._checkpoint(epoch))
            except Exception as err:
                if retries.events and not isinstance(err, TrainingFailed):
                    raise retries.fail_after_loss(err) from err
                raise
        self.done = 0
        return self.model

    def _submit(self, epoch: int) -> list[Any]:
        futures, previous = [], self.model
        for step in range(self.done, len(self.blocks)):
            x, y = self.blocks[self.order[step]]
            previous = self.client.submit(_partial_fit, previous, x, y, self.classes,
                                          key=f"partial_fit-{uuid.uuid4().hex}")
            futures.append(previous)
        return futures

    def _follow(self, epoch: int, futures: list[Any], watch: WorkerWatch) -> None:
        first, n = self.done, len(self.blocks)
        self._reached = first
        for index, future in enumerate(futures):
            wait_watched([future], watch)
            if future.status == "error":
                future.result()  # raises the task's error
            self._reached = step = first + index + 1
            if index:
                futures[index - 1] = None  # its successor is done: let Dask free it
            if step == n or (self.every and (epoch * n + step) % self.every == 0):
                self.model, self.done = future.result(), step

    def _where(self, epoch: int, blocks: int) -> str:
        return f"epoch {epoch + 1} ({blocks} of {len(self.blocks)} blocks done)"

    def _checkpoint(self, epoch: int) -> str | None:
        if self.done:
            return f"epoch {epoch + 1}, block {self.done} of {len(self.blocks)}"
        return f"the end of epoch {epoch}" if epoch else None


#: how many partitions each training block takes a share of
MIX_WIDTH = 8


def mixed_blocks(x: Any, y: Any, preprocess: Preprocess) -> tuple[Any, Any]:
    """The training rows, preprocessed, in as many blocks, each made of an equal share of
    up to :data:`MIX_WIDTH` partitions spread over the whole dataset.

    Partitions usually hold one file, hence one class, and ``partial_fit`` on such blocks
    forgets the other classes. Partitions ``g, g + k, g + 2k...`` (``k`` groups) form a
    group, and each block of the group gets a slice of each of them: ``n * width`` small
    tasks, not ``n**2``. Each slice is cut where its partition lives; each block is
    written once, row-major float32, with the preprocessing applied (what ``partial_fit``
    reads fastest).
    """
    import dask.array as da
    from dask import delayed

    sizes = x.chunks[0]
    n = len(sizes)
    n_groups = math.ceil(n / min(n, MIX_WIDTH))
    x_parts, y_parts = x.to_delayed().ravel(), y.to_delayed().ravel()
    blocks_x, blocks_y = [], []
    for group in range(n_groups):
        members = list(range(group, n, n_groups))
        bounds = {p: np.linspace(0, sizes[p], len(members) + 1).astype(int) for p in members}
        for j in range(len(members)):
            cuts = [(p, int(bounds[p][j]), int(bounds[p][j + 1])) for p in members]
            rows = sum(stop - start for _, start, stop in cuts)
            if rows == 0:
                continue
            pieces_x = [delayed(_rows, pure=True)(x_parts[p], start, stop)
                        for p, start, stop in cuts]
            pieces_y = [delayed(_rows, pure=True)(y_parts[p], start, stop)
                        for p, start, stop in cuts]
            block = delayed(_mix, pure=True, nout=2)(pieces_x, pieces_y, preprocess)
            blocks_x.append(da.from_delayed(block[0], shape=(rows, x.shape[1]),
                                            dtype=np.float32))
            blocks_y.append(da.from_delayed(block[1], shape=(rows,), dtype=y.dtype))
    return da.concatenate(blocks_x), da.concatenate(blocks_y)


def _rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    return array[start:stop]


def _mix(pieces_x: list[np.ndarray], pieces_y: list[np.ndarray],
         preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty((sum(len(p) for p in pieces_x), pieces_x[0].shape[1]), dtype=np.float32)
    np.concatenate(pieces_x, out=out)
    return preprocess.apply(out, out=out), np.concatenate(pieces_y)


def _on_sample(client: Any, estimator: Any, X: dict[str, Any], matrices: Any,
               counts: list[int], model: Any) -> tuple[Any, dict[str, Any]]:
    total = X["train"].shape[0]
    xs, ys, ws = bounded_sample(client, X["train"], matrices.y["train"], matrices.w["train"],
                                model.sample_size)
    logger.info(f"{type(estimator).__name__} has no partial_fit(): fitting it on a sample of "
                f"{len(ys):,} of the {total:,} training events (model.sample_size).")
    kwargs = sample_fit_kwargs(estimator, ys, ws, counts, model.balance_classes)
    estimator.fit(xs, ys, **kwargs)
    return estimator, {"fit": "sample", "sample_events": len(ys),
                       "training_events": int(total),
                       "event_weights_used": "sample_weight" in kwargs}


def incremental_weighting(estimator: Any, counts: list[int], balance: bool) -> Any:
    """How a ``partial_fit`` estimator is weighted in training: classes balanced through
    its ``class_weight`` (when it has one and ``model.balance_classes``); event weights
    are not used (``partial_fit`` of most estimators takes none)."""
    if balance and "class_weight" in estimator.get_params():
        estimator.set_params(class_weight=_balance(counts))
    return estimator


def sample_fit_kwargs(estimator: Any, y: np.ndarray, w: np.ndarray, counts: list[int],
                      balance: bool) -> dict[str, Any]:
    """``fit()`` keyword arguments of an estimator fitted on a sample: the event weights,
    times the class-balancing factors (``model.balance_classes``), when ``fit`` takes a
    ``sample_weight``."""
    if "sample_weight" not in inspect.signature(estimator.fit).parameters:
        return {}
    weights = w.astype(np.float64)
    if balance:
        factors = _balance(counts)
        weights = weights * np.array([factors.get(int(c), 1.0) for c in y])
    return {"sample_weight": weights}


def serialise(estimator: Any) -> tuple[str, bytes]:
    """skops bytes (servable), or a pickle when skops cannot store and reload the model
    (local use only: the server refuses it)."""
    import skops.io

    try:
        data = skops.io.dumps(estimator)
        skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
        return SKOPS_FILE, data
    except Exception as err:  # noqa: BLE001 - skops raises many kinds for odd objects
        import cloudpickle

        logger.warning(f"skops cannot store {type(estimator).__name__} "
                       f"({type(err).__name__}: {err}); the bundle holds a pickle instead, "
                       "usable locally with --allow-pickle and refused by the server.")
        return "model.pkl", cloudpickle.dumps(estimator)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = repr(value)
    return out
