"""The neural-network fitter of the pipeline (model kinds ``torch`` and ``keras``).

1. the model file is checked on the client before any training: ``model()`` returns a
   torch Module, its output width fits the classes, logits or probabilities are
   detected (or declared), the untrained network exports to ONNX (an op ONNX cannot
   hold fails here, naming the layer, not after hours of training);
2. preprocessing (NaN fill, standard scaling) is fitted on the training split;
3. one Dask task trains on one worker chosen by the placement rules (a GPU-tagged one
   for ``device: cuda`` or ``auto`` with GPUs, else the worker with most threads, whose
   threads torch uses), fed by :mod:`mlaas_dask.nn.loader`; its epoch lines and
   checkpoints come back as Dask events (checkpoints kept in a hidden folder next to
   the bundle, removed at the end); a lost worker or Ctrl-C stops the job, saying which
   epoch was reached, and no bundle is written;
4. the best epoch's weights are exported to ONNX (probabilities in the graph), checked
   against torch on validation events, and the test split is scored through the
   bundle's own ONNX model and preprocessing.

Keras models are trained by :mod:`mlaas_dask.nn.keras`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlaas_dask.errors import ConfigError
from mlaas_dask.train.fitted import Fitted

if TYPE_CHECKING:
    from mlaas_dask.train.pipeline import FitContext

logger = logging.getLogger(__name__)

#: the largest difference between ONNX and torch scores accepted in the bundle
ONNX_TOLERANCE = 1e-5
#: validation events the ONNX export is checked on
CHECK_EVENTS = 2048


def fit_network(context: FitContext) -> Fitted:
    """Train the job's network (see the module docstring)."""
    if context.job.model.kind == "keras":
        from mlaas_dask.nn.keras import fit_keras  # type: ignore[import-not-found, unused-ignore]

        return fit_keras(context)  # type: ignore[no-any-return, unused-ignore]
    return fit_torch(context)


def fit_torch(context: FitContext, network_file: Any = None, kind: str = "torch") -> Fitted:
    """The torch path of :func:`fit_network` (also Keras models', on the torch backend:
    ``network_file`` a :class:`~mlaas_dask.nn.keras.KerasNetworkFile`, ``kind`` keras)."""
    from mlaas_dask.extras import require

    require("torch", "neural networks (model.kind: torch)")
    from mlaas_dask.bundle import (
        LEARNING_CURVE_PLOT,
        ONNX_FILE,
        PREPROCESS_FILE,
        USER_MODEL_FILE,
        WEIGHTS_FILE,
        ModelBundle,
    )
    from mlaas_dask.nn.modelfile import NetworkFile
    from mlaas_dask.train.matrix import balance_factors

    job, client, matrices = context.job, context.client, context.matrices
    model = job.model
    network_file = network_file or NetworkFile.read(str(model.file))
    config = probe(network_file, context, kind)
    address, config.threads, memory = training_worker(context, config.device)
    n_train = int(matrices.X["train"].shape[0])
    if model.batch_size > n_train:
        raise ConfigError(f"model.batch_size is {model.batch_size:,} but the training split "
                          f"holds {n_train:,} events; use a batch size of at most "
                          f"{n_train:,} (or more data).", key="model.batch_size")
    start = time.perf_counter()
    stats = matrices.stats
    factors = (balance_factors(stats["weight_per_class"]["train"]) if model.balance_classes
               else np.ones(len(context.classes)))
    preprocess, data = training_data(context, factors, memory)
    logger.info("Training the network of %s on %s events per class (device=%s on %s, %d "
                "threads, %s, batches of %d, up to %d epochs):", model.file,
                stats["events_per_class"]["train"], config.device, address, config.threads,
                "streamed" if data.mode == "stream" else "held in memory", model.batch_size,
                model.epochs)
    result = run_training(context, config, data, address, ranks(context, config.device))
    train_seconds = time.perf_counter() - start
    context.stages.ran("train", [result.get("worker") or address]
                       + [r["worker"] for r in result.get("data_parallel", {}).get(
                           "per_rank", [])[1:]])
    network = _trained_network(network_file, config, result["weights"])
    onnx_bytes, opset, difference = export_checked(network, config, data, client)
    bundle_model = ModelBundle(context.out, context.spec, _onnx_model(onnx_bytes),
                               context.classes, kind="onnx", preprocess=preprocess)
    scores, predict_seconds = test_scores(context, bundle_model)
    files = {PREPROCESS_FILE: (json.dumps(preprocess.to_dict(), indent=2) + "\n").encode(),
             WEIGHTS_FILE: result["weights"], USER_MODEL_FILE: network_file.source,
             LEARNING_CURVE_PLOT: learning_curve_png(result["history"])}
    return Fitted(
        model_file=ONNX_FILE, model_bytes=onnx_bytes, test_scores=scores, files=files,
        metrics={"epochs": result["epochs"], "best_epoch": result["best_epoch"],
                 "stopped_early": result["stopped_early"], "history": result["history"],
                 "loader": result["loader"],
                 **({"memory_estimate": matrices.estimate.to_dict()}
                    if matrices.estimate is not None else {}),
                 **({"data_parallel": result["data_parallel"]}
                    if "data_parallel" in result else {})},
        model_metadata={"kind": kind, "file": ONNX_FILE, "format": "onnx",
                        "opset": opset, "weights": WEIGHTS_FILE, "source": model.file,
                        "outputs": config.outputs, "output_width": config.width,
                        "onnx_max_difference": difference, "device": config.device,
                        "threads": result["threads"], "worker": result.get("worker"),
                        "scaled": model.scale, "fill_value": model.fill_value,
                        "data": _data_record(result["loader"], matrices),
                        "params": _params(model)},
        timings={"train": train_seconds, "predict": predict_seconds},
    )


def training_data(context: FitContext, factors: Any, memory: int) -> tuple[Any, Any]:
    """The preprocessing fitted on the training split, and the loader's
    :class:`~mlaas_dask.nn.loader.TrainingData`: from the moments the streaming read pass
    kept (streamed matrices: nothing is read here), else from the held partitions."""
    from mlaas_dask.nn.loader import from_partitions, from_stream
    from mlaas_dask.train.preprocess import fit_preprocess, preprocess_from_moments

    model, matrices, n_features = context.job.model, context.matrices, context.spec.n_features
    if matrices.stream is not None:
        source = matrices.stream
        preprocess = preprocess_from_moments(source.moments, n_features, model.fill_value,
                                             model.scale)
        return preprocess, from_stream(source, preprocess, factors, n_features,
                                       model.batch_size)
    preprocess = fit_preprocess(context.client, matrices.X["train"], model.fill_value,
                                model.scale)
    return preprocess, from_partitions(context.client, matrices.futures, preprocess,
                                       factors, n_features, model.batch_size,
                                       bool(model.stream), memory)


def test_scores(context: FitContext, bundle_model: Any) -> tuple[Any, float]:
    """The test split's scores by the bundle's model, and the seconds they took: held on
    the workers, or, for streamed matrices, lazy -- computed with the test labels and
    weights in the evaluation's one pass over the partitions (scored inside the tasks
    that read them; only scores travel), so its time counts in ``evaluate``."""
    from mlaas_dask.train.pipeline import persist_scores, score_matrix

    X = context.matrices.X["test"]
    if context.matrices.stream is not None:
        return score_matrix(context.client, bundle_model, X), 0.0
    return persist_scores(context.client, bundle_model, X, context.stages)


def _data_record(loader: dict[str, Any], matrices: Any) -> dict[str, Any]:
    """metadata.json's ``model.data``: how the training data reached the network."""
    keys = ("mode", "peak_rows_held", "chunk_rows", "prefetch", "training_rows",
            "partition_reads")
    out: dict[str, Any] = {key: loader[key] for key in keys if key in loader}
    if matrices.estimate is not None:
        out["memory_estimate"] = matrices.estimate.to_dict()
    return out


def probe(network_file: Any, context: FitContext, model_kind: str = "torch") -> Any:
    """Build the network once here: its kind, output width and outputs checked, its
    ONNX export tried; the :class:`~mlaas_dask.nn.trainer.TrainConfig` of the job."""
    import torch

    from mlaas_dask.nn.export import to_onnx
    from mlaas_dask.nn.modelfile import detect_outputs, output_width
    from mlaas_dask.nn.trainer import TrainConfig

    model = context.job.model
    n_features, n_classes = context.spec.n_features, len(context.classes)
    torch.manual_seed(model.seed)
    network = network_file.build(n_features, model_kind)
    try:
        with torch.no_grad():
            outputs = network.eval()(torch.randn(8, n_features))
    except Exception as err:  # noqa: BLE001 - the user's network may raise anything
        from mlaas_dask.train.usermodel import _user_traceback

        raise ConfigError(_user_traceback(Path(network_file.path), err,
                                          f"the network's forward() on a batch of 8 events "
                                          f"of {n_features} features raised"),
                          file=network_file.path) from None
    if outputs.dim() == 1:
        outputs = outputs.unsqueeze(-1)
    width = int(outputs.shape[-1]) if outputs.dim() == 2 else -1
    if width < 0:
        raise ConfigError(f"The network of {network_file.path} gives outputs of shape "
                          f"{tuple(outputs.shape)} for 8 events; it must give (events, "
                          "outputs).", file=network_file.path)
    output_width(n_classes, width, network_file.path)
    kind = detect_outputs(network, outputs, model.outputs)
    to_onnx(network, n_features, kind, n_classes, width, network_file.path)
    device = resolve_device(context.client, model.device)
    return TrainConfig(
        network=network_file, n_features=n_features, n_classes=n_classes, width=width,
        outputs=kind, epochs=model.epochs, batch_size=model.batch_size,
        learning_rate=float(model.learning_rate), optimizer=model.optimizer,
        weight_decay=float(model.weight_decay),
        patience=int(model.early_stopping_rounds or 0), lr_schedule=model.lr_schedule,
        seed=model.seed, device=device, topic=f"mlaas-network-{uuid.uuid4().hex}",
        kind=model_kind, extra={"user_loss": network_file.factory("loss") is not None})


def resolve_device(client: Any, requested: str) -> str:
    """``cuda`` for ``auto`` when a worker is tagged GPU, else ``cpu``; ``cuda`` needs
    such a worker."""
    from mlaas_dask.cluster.placement import is_gpu_worker

    workers = client.scheduler_info().get("workers", {})
    gpus = [a for a, w in workers.items() if is_gpu_worker(w)]
    if requested == "cuda" and not gpus:
        raise ConfigError(
            "model.device is cuda but no worker of the cluster is tagged with a GPU "
            f"({len(workers)} workers, none with the GPU resource). Use a GPU cluster "
            "(--cluster local-gpu, or gpu_workers in a cluster file; 'dask worker "
            "--resources GPU=1'), or set model.device: cpu (or auto).", key="model.device")
    if requested == "auto":
        return "cuda" if gpus else "cpu"
    return requested


def training_worker(context: FitContext, device: str) -> tuple[str, int, int]:
    """The worker that trains, its threads and memory limit: among those the placement
    allows (GPU-tagged ones for cuda), the one with the most threads."""
    workers = context.client.scheduler_info().get("workers", {})
    allowed = allowed_workers(context, device)
    address = max(sorted(allowed), key=lambda a: int(workers[a].get("nthreads") or 1))
    info = workers[address]
    return address, int(info.get("nthreads") or 1), int(info.get("memory_limit") or 0)


class _Epochs:
    """The client's side of the training events: epoch lines, and each new best epoch's
    weights written to the checkpoint folder."""

    def __init__(self, folder: Path, progress: bool) -> None:
        self.folder = folder
        self.progress = progress
        self.reached = 0
        self.best = 0

    def __call__(self, event: tuple[float, dict[str, Any]]) -> None:
        import os

        message = event[1]
        self.reached = max(self.reached, int(message.get("epoch", 0)))
        if self.progress and "line" in message:
            logger.info(message["line"])
        if "weights" in message:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "weights.safetensors.tmp"
            tmp.write_bytes(message["weights"])
            os.replace(tmp, self.folder / "weights.safetensors")
            (self.folder / "state.json").write_text(json.dumps(
                {"epoch": message["epoch"], "history": message["history"]}))
            self.best = message["epoch"]

    def where(self) -> str:
        if not self.reached:
            return "before the end of epoch 1"
        best = f", best epoch {self.best}" if self.best else ""
        return f"after epoch {self.reached} ({self.reached} epochs done{best})"


def allowed_workers(context: FitContext, device: str) -> list[str]:
    """The workers the placement lets train (GPU-tagged ones for cuda)."""
    from mlaas_dask.cluster.placement import is_gpu_worker, select_workers

    workers = context.client.scheduler_info().get("workers", {})
    allowed = select_workers(workers, context.stages.placement.train, "train",
                             device) or sorted(workers)
    if device == "cuda":
        allowed = [a for a in allowed if is_gpu_worker(workers[a])] or allowed
    return list(allowed)


def ranks(context: FitContext, device: str) -> list[str]:
    """The workers of data-parallel training (``model.workers`` above 1), else none."""
    if context.job.model.workers <= 1:
        return []
    from mlaas_dask.nn.distributed import rank_workers

    return rank_workers(context.client, allowed_workers(context, device),
                        context.job.model.workers, context.matrices.futures)


def run_training(context: FitContext, config: Any, data: Any, address: str,
                 ranks: list[str] | None = None) -> dict[str, Any]:
    """The training task on ``address`` (or data-parallel ranks on ``ranks``, see
    :mod:`mlaas_dask.nn.distributed`), followed until it ends; checkpoints in a hidden
    folder next to the bundle, removed at the end whatever happens."""
    import shutil

    from mlaas_dask.nn.trainer import train_task
    from mlaas_dask.train.faults import forget_topic
    from mlaas_dask.train.pipeline import checkpoint_folder

    client = context.client
    folder = checkpoint_folder(context.out)
    events = _Epochs(folder, context.progress)
    client.subscribe_topic(config.topic, events)
    if ranks:
        try:
            return _train_ranks(context, config, data, ranks, events)
        finally:
            client.unsubscribe_topic(config.topic)
            forget_topic(client, config.topic)
            shutil.rmtree(folder, ignore_errors=True)
    future = client.submit(train_task, config, data, workers=[address],
                           allow_other_workers=False, pure=False,
                           key=f"train-network-{uuid.uuid4().hex}")
    try:
        return _follow(client, future, address, events)
    except BaseException:
        _stop(client, config, future)
        raise
    finally:
        client.unsubscribe_topic(config.topic)
        forget_topic(client, config.topic)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(client: Any, config: Any, future: Any) -> None:
    """Cancel the training task, and ask it to stop at the end of its epoch (a running
    task is not interrupted by cancelling it)."""
    import contextlib

    from distributed import Event

    from mlaas_dask.nn.trainer import stop_event

    future.cancel()
    with contextlib.suppress(Exception):  # a closing client: the task ends with the cluster
        Event(stop_event(config), client=client).set()


def _follow(client: Any, future: Any, address: str, events: _Epochs) -> dict[str, Any]:
    from mlaas_dask.train.faults import TrainingFailed, WorkerLost, WorkerWatch, wait_watched

    try:
        wait_watched([future], WorkerWatch(client, [address]))
        result: dict[str, Any] = future.result()
        return result
    except WorkerLost as lost:
        raise TrainingFailed(
            f"The training worker {lost} left the cluster {events.where()}; the network "
            "was not saved and no bundle was written. Run the job again (on a worker with "
            "more memory, or with a smaller model.batch_size if it ran out of memory)."
        ) from None
    except KeyboardInterrupt:
        logger.info("Training interrupted %s; no bundle was written.", events.where())
        raise


def _train_ranks(context: FitContext, config: Any, data: Any, ranks: list[str],
                 events: _Epochs) -> dict[str, Any]:
    from mlaas_dask.nn.distributed import RankFailed, train_ranks
    from mlaas_dask.train.faults import TrainingFailed

    try:
        return train_ranks(context.client, config, data, context.matrices.futures, ranks,
                           timeout=context.job.model.collective_timeout)
    except RankFailed as err:
        raise TrainingFailed(f"{err} Training had got {events.where()}.") from None
    except KeyboardInterrupt:
        logger.info("Training interrupted %s; no bundle was written.", events.where())
        raise


def _trained_network(network_file: Any, config: Any, weights: bytes) -> Any:
    import torch

    from mlaas_dask.nn.trainer import load_state

    torch.manual_seed(config.seed)
    return load_state(network_file.build(config.n_features, config.kind), weights).eval()


def export_checked(network: Any, config: Any, data: Any,
                   client: Any) -> tuple[bytes, int, float]:
    """The trained network as ONNX, its opset, and its largest score difference from
    torch on validation (else training) events, which must be within
    :data:`ONNX_TOLERANCE`."""
    from mlaas_dask.nn.export import check_onnx, to_onnx
    from mlaas_dask.nn.trainer import NetworkError

    onnx_bytes, opset = to_onnx(network, config.n_features, config.outputs,
                                config.n_classes, config.width, config.network.path)
    sample = _sample(client, data)
    difference = check_onnx(onnx_bytes, network, sample, config.outputs, config.n_classes,
                            config.width)
    if not difference <= ONNX_TOLERANCE:
        raise NetworkError(
            f"The ONNX export of the network of {config.network.path} scores events up to "
            f"{difference:.3g} away from torch (tolerance {ONNX_TOLERANCE:g}); no bundle "
            "was written. Check the network for operations whose ONNX form differs "
            "(e.g. random ones left active in eval mode).")
    return onnx_bytes, opset, difference


def _sample(client: Any, data: Any) -> np.ndarray:
    """Up to :data:`CHECK_EVENTS` preprocessed events of the first partition that has
    validation (else training) events."""
    from distributed import Future

    from mlaas_dask.nn.loader import cut_piece, read_pieces

    for split in ("validation", "train"):
        for part, rows in enumerate(data.rows[split]):
            if rows and data.stream is not None:
                future = client.submit(read_pieces, data.stream, part, split,
                                       [(0, min(rows, CHECK_EVENTS))], data.preprocess,
                                       data.factors, pure=False, **data.stream.restrict())
                return np.asarray(future.result()[0])
            if rows:
                future = client.submit(cut_piece, Future(data.keys[part], client=client),
                                       split, 0, min(rows, CHECK_EVENTS), data.preprocess,
                                       data.factors, pure=False)
                return np.asarray(future.result()[0])
    return np.zeros((0, data.n_features), np.float32)


def learning_curve_png(history: dict[str, list[Any]]) -> bytes:
    """Loss per epoch, train vs validation (the validation AUC on a second axis)."""
    from mlaas_dask.train.metrics import _figure, _png

    fig, ax = _figure()
    epochs = range(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], marker="o", label="train loss")
    validation = [v for v in history["validation_loss"] if v is not None]
    if validation:
        ax.plot(epochs, history["validation_loss"], marker="o", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (event-weighted)")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _png(fig)


def _onnx_model(data: bytes) -> Any:
    from mlaas_dask.bundle import OnnxModel

    return OnnxModel(data)


def _params(model: Any) -> dict[str, Any]:
    return {key: getattr(model, key) for key in (
        "epochs", "batch_size", "learning_rate", "optimizer", "weight_decay",
        "early_stopping_rounds", "lr_schedule", "seed", "stream", "balance_classes")}
