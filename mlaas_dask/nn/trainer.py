"""The training loop of one rank, run inside a Dask task on the training worker.

:func:`train_rank` ``(config, data, rank=0, world=1, process_group=None)`` is the hook
for data-parallel training (:mod:`mlaas_dask.nn.distributed`): each rank builds the
network from the model file with the same seed, wraps it through :func:`wrap_model`
(DistributedDataParallel when a process group is given), trains on its share of every
epoch's chunks (:class:`~mlaas_dask.nn.loader.Loader` with ``rank``/``world``) and
evaluates the validation split; rank 0 reports progress and checkpoints. With
``world=1`` (today's single-worker training) there is no process group and nothing is
wrapped.

Per epoch, rank 0 sends one Dask event on ``config.topic``: the epoch's line (train and
validation loss, validation AUC, learning rate, events/s) and the weights (safetensors)
as the checkpoint the client keeps next to the bundle. Early stopping (patience
``early_stopping_rounds`` epochs on the validation loss) restores the best epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.errors import MlaasError
from mlaas_dask.features import Preprocess  # noqa: F401 - TrainingData's field type
from mlaas_dask.nn.loader import Loader, TrainingData
from mlaas_dask.nn.modelfile import NetworkFile

logger = logging.getLogger(__name__)


class NetworkError(MlaasError):
    """Training a network failed because of the network, its settings or its inputs.

    Attributes
    ----------
    epoch
        The 1-based epoch it failed in (None before training).
    layer
        The layer at fault, when known.
    """

    attributes = ("epoch", "layer")

    def __init__(self, message: str, *, epoch: int | None = None,
                 layer: str | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.layer = layer



@dataclass
class TrainConfig:
    """Everything a rank needs besides its data (picklable)."""

    network: NetworkFile
    n_features: int
    n_classes: int
    width: int
    outputs: str
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    patience: int = 0
    lr_schedule: str = "none"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    topic: str | None = None
    kind: str = "torch"
    extra: dict[str, Any] = field(default_factory=dict)


def train_task(config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    """The Dask task that trains on one worker (``world=1``): leaves the worker's thread
    pool while it runs (it submits the loader's tasks itself) and returns
    :func:`train_rank`'s result with the worker's address."""
    from distributed import get_worker, rejoin, secede

    address = get_worker().address
    secede()
    try:
        # streamed data passes through this worker chunk after chunk: hand freed heap
        # back above 16 MB, or its RSS would keep up to 256 MB of old chunks
        with training_allocator(16 << 20 if data.mode == "stream" else 256 << 20):
            result = train_rank(config, data)
    finally:
        rejoin()
    result["worker"] = address
    return result


#: glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@contextlib.contextmanager
def training_allocator(trim_threshold: int = 256 << 20) -> Iterator[None]:
    """glibc's allocator set for training while the block runs, in a Dask worker.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it pins
    glibc's mmap threshold at 128 kB, so every batch's activations and gradients (a
    512 x 128 float32 tensor is 256 kB) are mmapped and page-faulted afresh: measured
    here, 627 page faults per batch of a 3 x 128 MLP and twice the CPU time. While
    training, allocations up to 64 MB come from the heap and are reused; afterwards the
    worker's settings are restored and the freed memory handed back (``malloc_trim``).
    Elsewhere (no such setting, or no glibc) nothing is changed.
    """
    import ctypes
    import os

    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    try:
        libc = ctypes.CDLL("libc.so.6") if trim and trim.isdigit() else None
    except OSError:
        libc = None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, int(trim or 0))
        libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        libc.malloc_trim(0)


def wrap_model(network: Any, rank: int, world: int, process_group: Any, device: Any) -> Any:
    """The model the loop trains: the network itself, or DistributedDataParallel over it
    when a process group is given (the data-parallel hook)."""
    if process_group is None or world == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(network, device_ids=ids, process_group=process_group)


def train_rank(config: TrainConfig, data: TrainingData, rank: int = 0, world: int = 1,
               process_group: Any = None, client: Any = None, loader: Loader | None = None,
               on_epoch: Any = None) -> dict[str, Any]:
    """Train one rank; return the best epoch's weights (safetensors bytes), the history
    and the loader's report (see the module docstring). Data-parallel ranks give their
    own ``loader`` (equal steps per epoch) and ``on_epoch(epoch, network)``, called after
    each epoch's evaluation."""
    import torch

    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, config.threads))
    device = _device(config.device)
    network = config.network.build(config.n_features, config.kind).to(device)
    model = wrap_model(network, rank, world, process_group, device)
    loss_fn, weighted = make_loss(config)
    optimizer = make_optimizer(config, network)
    scheduler = make_scheduler(config, optimizer)
    loader = loader or Loader(data, config.batch_size, config.seed, rank, world, client=client)
    history: dict[str, list[float | None]] = {"train_loss": [], "validation_loss": [],
                                              "validation_auc": [], "learning_rate": [],
                                              "events_per_second": [],
                                              "train_cpu_seconds": []}
    best: tuple[float, int, dict[str, Any]] | None = None
    waited = 0
    for epoch in range(1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start, cpu = time.perf_counter(), time.thread_time()
        train_loss, events = _train_epoch(model, loader, epoch, loss_fn, weighted,
                                          optimizer, config, device)
        seconds = time.perf_counter() - start
        history["train_cpu_seconds"].append(time.thread_time() - cpu)  # this thread's
        validation_loss, auc = evaluate(network, loader, loss_fn, weighted, config, device)
        for key, value in (("train_loss", train_loss), ("validation_loss", validation_loss),
                           ("validation_auc", auc), ("learning_rate", lr),
                           ("events_per_second", events / max(seconds, 1e-9))):
            history[key].append(value)
        _step_scheduler(scheduler, config, validation_loss)
        if on_epoch is not None:
            on_epoch(epoch, network)
        watched = validation_loss if validation_loss is not None else train_loss
        improved = best is None or watched < best[0]
        if improved:
            best = (watched, epoch, _state_copy(network))
            waited = 0
        else:
            waited += 1
        if rank == 0:
            _report(config, epoch, history, network if improved else None)
        if config.patience and validation_loss is not None and waited >= config.patience:
            break
        if world == 1 and stop_requested(config):
            raise NetworkError(f"Training was stopped by the client after epoch {epoch}.",
                               epoch=epoch)
    assert best is not None
    network.load_state_dict(best[2])
    return {"weights": state_bytes(best[2]), "best_epoch": best[1],
            "epochs": len(history["train_loss"]), "history": history,
            "stopped_early": len(history["train_loss"]) < config.epochs,
            "loader": loader.report(), "device": str(device),
            "threads": torch.get_num_threads()}


def stop_event(config: TrainConfig) -> str:
    """The name of the Dask Event the client sets to stop this training (Ctrl-C, a
    failure on its side); the loop looks at it after every epoch."""
    return f"{config.topic}-stop"


def stop_requested(config: TrainConfig) -> bool:
    """Whether the client asked this training to stop (one look at its Dask Event; with
    several ranks they would have to agree, so only single-worker training looks)."""
    if config.topic is None:
        return False
    from distributed import Event

    try:
        return bool(Event(stop_event(config)).is_set())
    except Exception:  # noqa: BLE001 - no client or scheduler reachable: keep training
        return False


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise NetworkError(
            "model.device is cuda but torch on the training worker sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Check the "
            "worker's GPU and driver (nvidia-smi), or set model.device: cpu.")
    return torch.device(name)


def _train_epoch(model: Any, loader: Loader, epoch: int, loss_fn: Any, weighted: bool,
                 optimizer: Any, config: TrainConfig, device: Any) -> tuple[float, int]:
    import torch

    model.train()
    total = weight = 0.0
    events = 0
    for batch, (x, y, w) in enumerate(loader.epoch(epoch), start=1):
        xb, yb, wb = (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device),
                      torch.from_numpy(w).to(device))
        try:
            optimizer.zero_grad(set_to_none=True)
            loss, batch_weight = batch_loss(model(xb), yb, wb, loss_fn, weighted, config)
            value = loss.detach().item()  # one sync per batch: names the batch of a NaN
            if not math.isfinite(value):
                raise NetworkError(_nan_message(value, epoch, batch, config), epoch=epoch)
            loss.backward()
            optimizer.step()
        except (RuntimeError, MemoryError) as err:
            if isinstance(err, NetworkError) or not _out_of_memory(err):
                raise
            raise NetworkError(
                f"Out of memory on {device} in epoch {epoch}, batch {batch} "
                f"({len(y)} events of {config.n_features} features): "
                f"{str(err).splitlines()[0][:200]}. Lower model.batch_size (now "
                f"{config.batch_size}) or use a smaller network.", epoch=epoch) from None
        total += value * batch_weight
        weight += batch_weight
        events += len(y)
    return total / max(weight, 1e-30), events


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or \
        "can't allocate memory" in text or "cannot allocate memory" in text


def _nan_message(loss: float, epoch: int, batch: int, config: TrainConfig) -> str:
    return (f"The training loss became {loss} in epoch {epoch} (batch {batch}) of "
            f"{config.network.path}. Try a lower model.learning_rate (now "
            f"{config.learning_rate:g}), and check the inputs: features with huge values "
            "or infinities (model.scale: true standardises them), and event weights.")


def batch_loss(outputs: Any, y: Any, w: Any, loss_fn: Any, weighted: bool,
               config: TrainConfig) -> tuple[Any, float]:
    """The event-weighted mean loss of a batch, and the batch's total weight."""
    target = _target(outputs, y, config)
    values = loss_fn(_loss_input(outputs, config), target)
    if weighted and values.dim() > 0:
        total = w.sum()
        return (values.reshape(-1) * w).sum() / total.clamp_min(1e-30), float(total)
    return values.mean() if values.dim() > 0 else values, float(len(y))


def _target(outputs: Any, y: Any, config: TrainConfig) -> Any:
    if config.width == 1:
        return y.to(outputs.dtype).reshape(outputs.shape)
    return y


def _loss_input(outputs: Any, config: TrainConfig) -> Any:
    import torch

    if config.extra.get("user_loss"):
        return outputs
    if config.outputs == "probabilities" and config.width > 1:
        return torch.log(outputs.clamp_min(1e-12))
    if config.outputs == "probabilities":
        return outputs.clamp(1e-7, 1 - 1e-7)
    return outputs


def make_loss(config: TrainConfig) -> tuple[Any, bool]:
    """The loss with one value per event (so that event weights apply): the file's
    ``loss()`` when it has one, else binary or categorical cross-entropy on logits or
    probabilities. ``weighted`` is False for a user loss that only gives a mean."""
    import torch

    if config.network.factory("loss") is not None:
        loss = config.network.call("loss")
        if hasattr(loss, "reduction"):
            loss.reduction = "none"
            return loss, True
        return loss, False
    if config.width == 1:
        loss = (torch.nn.BCEWithLogitsLoss if config.outputs == "logits"
                else torch.nn.BCELoss)(reduction="none")
    else:
        loss = (torch.nn.CrossEntropyLoss if config.outputs == "logits"
                else torch.nn.NLLLoss)(reduction="none")
    return loss, True


def make_optimizer(config: TrainConfig, network: Any) -> Any:
    """The file's ``optimizer(params)``, else adam, adamw or sgd (momentum 0.9) with the
    job's learning rate and weight decay."""
    import torch

    if config.network.factory("optimizer") is not None:
        return config.network.call("optimizer", network.parameters())
    lr, decay = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(network.parameters(), lr=lr, weight_decay=decay)


def make_scheduler(config: TrainConfig, optimizer: Any) -> Any:
    """The learning-rate schedule: none, cosine (to 0 over the epochs), step (x0.1 every
    third of them) or plateau (x0.1 after 2 epochs without a lower validation loss)."""
    import torch

    schedules = torch.optim.lr_scheduler
    if config.lr_schedule == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.lr_schedule == "step":
        return schedules.StepLR(optimizer, step_size=max(1, config.epochs // 3), gamma=0.1)
    if config.lr_schedule == "plateau":
        return schedules.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    return None


def _step_scheduler(scheduler: Any, config: TrainConfig, validation_loss: float | None) -> None:
    if scheduler is None:
        return
    if config.lr_schedule == "plateau":
        if validation_loss is not None:
            scheduler.step(validation_loss)
        return
    scheduler.step()


def probabilities(outputs: Any, config: TrainConfig) -> Any:
    """Scores from a network's outputs: the probability of the second class (binary),
    one column per class otherwise."""
    import torch

    if config.outputs == "logits":
        outputs = torch.sigmoid(outputs) if config.width == 1 else torch.softmax(outputs, -1)
    if config.n_classes == 2:
        return outputs[:, -1] if outputs.dim() > 1 else outputs
    return outputs


def evaluate(network: Any, loader: Loader, loss_fn: Any, weighted: bool,
             config: TrainConfig, device: Any) -> tuple[float | None, float | None]:
    """The validation loss (event-weighted) and AUC, or (None, None) without a
    validation split. Streamed jobs score it inside the tasks that read its partitions
    (:meth:`Loader.map_validation`), the network's weights sent along."""
    import torch

    network.eval()
    total = weight = 0.0
    scores, labels = [], []
    if loader.remote_validation:
        weights = state_bytes(_state_copy(network))
        for part_total, part_weight, part_scores, part_labels in loader.map_validation(
                score_validation, config, weights):
            total += part_total
            weight += part_weight
            scores.append(part_scores)
            labels.append(part_labels)
    else:
        with torch.no_grad():
            for x, y, w in loader.validation():
                part = _score_block(network, x, y, w, loss_fn, weighted, config, device)
                total, weight = total + part[0], weight + part[1]
                scores.append(part[2])
                labels.append(part[3])
    if not labels:
        return None, None
    return total / max(weight, 1e-30), _auc(np.concatenate(labels), np.concatenate(scores),
                                            config)


def _auc(y_all: np.ndarray, s_all: np.ndarray, config: TrainConfig) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_all)) < 2:
        return None
    if config.n_classes == 2:
        return float(roc_auc_score(y_all, s_all))
    return float(roc_auc_score(y_all, s_all, multi_class="ovr",
                               labels=list(range(config.n_classes))))


def _score_block(network: Any, x: np.ndarray, y: np.ndarray, w: np.ndarray, loss_fn: Any,
                 weighted: bool, config: TrainConfig,
                 device: Any) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A block's weighted loss total, weight, scores and labels (in no_grad mode)."""
    import torch

    total = weight = 0.0
    scores = []
    for start in range(0, len(y), 65536):
        xb = torch.from_numpy(x[start:start + 65536]).to(device)
        yb = torch.from_numpy(y[start:start + 65536]).to(device)
        wb = torch.from_numpy(w[start:start + 65536]).to(device)
        out = network(xb)
        loss, batch_weight = batch_loss(out, yb, wb, loss_fn, weighted, config)
        total += loss.item() * batch_weight
        weight += batch_weight
        scores.append(probabilities(out, config).float().cpu().numpy())
    empty = np.zeros((0,) if config.n_classes == 2 else (0, config.n_classes), np.float32)
    return total, weight, np.concatenate(scores) if scores else empty, y


#: the network last built by :func:`score_validation` in this process: (key, network)
_SCORING: dict[str, Any] = {}
_SCORING_LOCK = threading.Lock()


def score_validation(x: np.ndarray, y: np.ndarray, w: np.ndarray, config: TrainConfig,
                     weights: bytes) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A validation partition scored where it was read (a streamed job's task, on CPU):
    the network built from its file with ``weights`` (once per epoch and process)."""
    import hashlib

    import torch

    key = f"{config.topic}-{hashlib.sha1(weights).hexdigest()}"
    with _SCORING_LOCK:
        network = _SCORING.get(key)
        if network is None:
            _SCORING.clear()
            network = load_state(config.network.build(config.n_features, config.kind),
                                 weights).eval()
            _SCORING[key] = network
    loss_fn, weighted = make_loss(config)
    with torch.no_grad():
        return _score_block(network, x, y, w, loss_fn, weighted, config,
                            torch.device("cpu"))


def _state_copy(network: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def state_bytes(state: dict[str, Any]) -> bytes:
    """Weights as safetensors (never a pickle); tied tensors are stored once each."""
    from safetensors.torch import save

    return save({k: v.contiguous().clone() for k, v in state.items()})


def load_state(network: Any, data: bytes) -> Any:
    """Load safetensors weights into a network built from the same file."""
    from safetensors.torch import load

    network.load_state_dict(load(data))
    return network


def epoch_line(epoch: int, epochs: int, history: dict[str, list[Any]]) -> str:
    """The progress line of an epoch."""
    def value(key: str, fmt: str) -> str:
        v = history[key][-1]
        return "n/a" if v is None else format(v, fmt)

    return (f"  epoch {epoch:>3}/{epochs}  train-loss={value('train_loss', '.4f')}  "
            f"validation-loss={value('validation_loss', '.4f')}  "
            f"validation-auc={value('validation_auc', '.4f')}  "
            f"lr={value('learning_rate', '.3g')}  "
            f"events/s={value('events_per_second', ',.0f')}")


def _report(config: TrainConfig, epoch: int, history: dict[str, list[Any]],
            improved: Any) -> None:
    """Send the epoch's line and checkpoint to the client (a Dask event)."""
    if config.topic is None:
        logger.info(epoch_line(epoch, config.epochs, history))
        return
    from distributed import get_worker

    message = {"epoch": epoch, "line": epoch_line(epoch, config.epochs, history),
               "history": history}
    if improved is not None:
        message["weights"] = state_bytes(_state_copy(improved))
    get_worker().log_event(config.topic, message)
