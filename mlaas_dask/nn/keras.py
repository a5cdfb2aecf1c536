"""Keras 3 model files, trained on Keras' torch backend through the torch path.

On the torch backend a Keras model *is* a ``torch.nn.Module`` whose weights are torch
Parameters, so it trains with the same loader, trainer, data-parallel ranks and ONNX
export as a torch network; one runtime serves both. Three things need care:

- the backend is chosen when Keras is first imported: :func:`prefer_torch` sets
  ``KERAS_BACKEND=torch`` before a model file is imported (on the client and on the
  workers); a process that already runs Keras on another backend gets a clear error;
- Keras names its weights after global counters (``dense_3/kernel`` the second time a
  file builds its model) and lists them twice in ``state_dict``: :class:`KerasModule`
  wraps the model with its weights registered under stable names (``w000_kernel``...),
  in the model's own order, and calls it with ``training=`` following ``train()`` /
  ``eval()`` (Keras' Dropout would otherwise never drop);
- a compiled model keeps its loss and optimizer: :func:`compiled_settings` maps
  ``model.compile(loss=..., optimizer=...)`` to torch equivalents (binary and
  categorical cross-entropy with ``from_logits`` and label smoothing, MSE; Adam, AdamW,
  SGD, RMSprop, Adagrad, Adamax, Nadam with their settings), and refuses what has none.
  A file's own ``loss()`` / ``optimizer(params)`` factories come first, the job's
  ``optimizer``/``learning_rate`` only for an uncompiled model.

:func:`load_weights` puts a bundle's ``weights.safetensors`` back into a fresh Keras
model of the same file (to predict with Keras or train further).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlaas_dask.errors import ConfigError
from mlaas_dask.nn.modelfile import NetworkFile

if TYPE_CHECKING:
    from mlaas_dask.train.fitted import Fitted
    from mlaas_dask.train.pipeline import FitContext

logger = logging.getLogger(__name__)

#: Keras loss names (and function names) -> the torch loss family used
LOSSES = {
    "binary_crossentropy": "binary", "bce": "binary", "binarycrossentropy": "binary",
    "categorical_crossentropy": "categorical", "categoricalcrossentropy": "categorical",
    "sparse_categorical_crossentropy": "categorical",
    "sparsecategoricalcrossentropy": "categorical",
    "mean_squared_error": "mse", "mse": "mse", "meansquarederror": "mse",
}
#: Keras optimizer settings that have no torch equivalent here (refused when set)
UNMAPPED_OPTIMIZER = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                      "gradient_accumulation_steps", "loss_scale_factor")


def prefer_torch() -> None:
    """Make Keras use its torch backend in this process, before Keras is imported.

    Raises
    ------
    ConfigError
        When Keras is loaded already (or asked for, by ``KERAS_BACKEND``) with another
        backend.
    """
    wanted = os.environ.get("KERAS_BACKEND")
    if "keras" in sys.modules:
        backend = _loaded_backend()
        if backend not in (None, "torch"):
            raise _backend_error(backend, "Keras is already loaded here")
        return
    if wanted and wanted != "torch":
        raise _backend_error(wanted, f"KERAS_BACKEND is {wanted!r}")
    os.environ["KERAS_BACKEND"] = "torch"


def _loaded_backend() -> str | None:
    keras = sys.modules.get("keras")
    try:
        return str(keras.backend.backend()) if keras is not None else None
    except AttributeError:  # keras half-imported (an import error under way)
        return None


def _backend_error(backend: str, what: str) -> ConfigError:
    return ConfigError(
        f"{what} with the {backend} backend; mlaas trains Keras models on Keras' torch "
        "backend (one runtime and one data-parallel path for torch and Keras). Unset "
        "KERAS_BACKEND or set KERAS_BACKEND=torch for the client and the Dask workers.",
        key="model.file")


class _Module:
    """Built lazily: torch is imported only when a Keras model is."""

    cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.cls is None:
            cls.cls = _define_module()
        return cls.cls


def _define_module() -> Any:
    import torch

    class KerasModule(torch.nn.Module):
        """A Keras model (torch backend) as a plain torch Module with stable parameter
        names; ``forward`` calls it with ``training=self.training``."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            object.__setattr__(self, "keras_model", model)  # not a submodule: its names
            for index, variable in enumerate(model.variables):
                self.register_parameter(weight_name(index, variable), variable.value)

        def forward(self, x: Any) -> Any:
            model: Any = self.keras_model
            return model(x, training=self.training)

    return KerasModule


def weight_name(index: int, variable: Any) -> str:
    """The stable name of a Keras model's ``index``-th variable."""
    name = "".join(c if c.isalnum() else "_" for c in str(variable.name))
    return f"w{index:03d}_{name}"


def wrap(model: Any) -> Any:
    """``model`` (a Keras model on the torch backend) as a :class:`KerasModule`."""
    return _Module.get()(model)


def load_weights(model: Any, weights: bytes | str | os.PathLike[str]) -> Any:
    """Put safetensors weights (a bundle's ``weights.safetensors``, as bytes or a path)
    into a Keras model built by the same file; returns the model."""
    from safetensors.torch import load, load_file

    state = load(weights) if isinstance(weights, bytes) else load_file(str(weights))
    wrap(model).load_state_dict(state)
    return model


@dataclass(frozen=True)
class KerasNetworkFile(NetworkFile):
    """A model file whose ``model()`` returns a Keras 3 model: built on the torch
    backend and wrapped (:class:`KerasModule`); its compiled loss and optimizer serve
    as the file's ``loss()`` / ``optimizer(params)`` unless it defines those."""

    compiled: dict[str, Any] = field(default_factory=dict)

    def module(self) -> Any:
        prefer_torch()
        return super().module()

    def build(self, n_features: int, expected: str = "keras") -> Any:
        network = super().build(n_features, "keras")
        _check_backend(self.path)
        return wrap(network)

    def factory(self, name: str) -> Any:
        own = super().factory(name)
        if own is not None or name not in self.compiled:
            return own
        return lambda *args: self.call(name, *args)

    def call(self, name: str, *args: Any) -> Any:
        if super().factory(name) is not None:
            return super().call(name, *args)
        if name == "loss":
            return make_loss(self.compiled["loss"])
        return make_optimizer(self.compiled["optimizer"], args[0])


def _check_backend(path: str) -> None:
    backend = _loaded_backend()
    if backend != "torch":
        raise _backend_error(str(backend), f"model() in {path} built a Keras model")


def compiled_settings(model: Any, path: str, n_classes: int) -> dict[str, Any]:
    """The torch form of a compiled Keras model's loss and optimizer (empty entries for
    an uncompiled model).

    Raises
    ------
    ConfigError
        For a loss or optimizer (or one of its settings) with no torch equivalent here,
        naming it and what to do.
    """
    settings: dict[str, Any] = {}
    if not getattr(model, "compiled", False):
        return settings
    loss = getattr(model, "loss", None)
    if loss is not None:
        settings["loss"] = _loss_settings(loss, path, n_classes)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        settings["optimizer"] = _optimizer_settings(optimizer, path)
    return settings


def _loss_settings(loss: Any, path: str, n_classes: int) -> dict[str, Any]:
    if isinstance(loss, (list, tuple, dict)):
        raise ConfigError(f"The Keras model of {path} is compiled with several losses "
                          f"({loss!r}); a classifier here has one output and one loss.",
                          file=path)
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", None) or \
        type(loss).__name__
    family = LOSSES.get(str(name).lower())
    if family is None:
        raise ConfigError(
            f"The Keras model of {path} is compiled with loss {name!r}, which mlaas cannot "
            "train on torch; the losses it maps are binary_crossentropy, "
            "(sparse_)categorical_crossentropy and mean_squared_error. Use one of them, or "
            "define 'def loss(): return <a torch loss>' in the file.", file=path)
    if family == "mse" and n_classes != 2:
        raise ConfigError(f"The Keras model of {path} uses mean_squared_error with "
                          f"{n_classes} classes; it is mapped for binary classification "
                          "only. Use categorical_crossentropy.", file=path)
    return {"name": str(name), "family": family,
            "from_logits": bool(config.get("from_logits", False)),
            "label_smoothing": float(config.get("label_smoothing", 0.0) or 0.0)}


def _optimizer_settings(optimizer: Any, path: str) -> dict[str, Any]:
    config = optimizer.get_config()
    name = type(optimizer).__name__.lower()  # config["name"] is the instance's (adam_1)
    if name not in _OPTIMIZERS:
        raise ConfigError(
            f"The Keras model of {path} is compiled with the {type(optimizer).__name__} "
            f"optimizer, which has no torch equivalent here (mapped: "
            f"{', '.join(sorted(_OPTIMIZERS))}). Compile with one of them, or define "
            "'def optimizer(params): return torch.optim....(params)' in the file.",
            file=path)
    for key in UNMAPPED_OPTIMIZER:
        if config.get(key) not in (None, False):
            raise ConfigError(
                f"The Keras optimizer of {path} sets {key}={config[key]!r}, which mlaas does "
                "not carry over to torch. Remove it, or define 'def optimizer(params): ...' "
                "in the file.", file=path)
    rate = config.get("learning_rate")
    if not isinstance(rate, (int, float)):
        raise ConfigError(
            f"The Keras optimizer of {path} has a learning-rate schedule ({rate!r}); give "
            "it a number and choose the schedule with model.lr_schedule (none, cosine, "
            "step, plateau).", file=path)
    return {**{k: v for k, v in config.items() if v is not None}, "name": name,
            "learning_rate": float(rate)}


def _adam(config: dict[str, Any], params: Any) -> Any:
    import torch

    decay = float(config.get("weight_decay") or 0.0)
    cls = torch.optim.AdamW if decay or config["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=config["learning_rate"],
               betas=(config.get("beta_1", 0.9), config.get("beta_2", 0.999)),
               eps=config.get("epsilon", 1e-7), weight_decay=decay,
               amsgrad=bool(config.get("amsgrad", False)))


def _sgd(config: dict[str, Any], params: Any) -> Any:
    import torch

    return torch.optim.SGD(params, lr=config["learning_rate"],
                           momentum=float(config.get("momentum", 0.0)),
                           nesterov=bool(config.get("nesterov", False)),
                           weight_decay=float(config.get("weight_decay") or 0.0))


def _rmsprop(config: dict[str, Any], params: Any) -> Any:
    import torch

    return torch.optim.RMSprop(params, lr=config["learning_rate"],
                               alpha=config.get("rho", 0.9), eps=config.get("epsilon", 1e-7),
                               momentum=float(config.get("momentum", 0.0)),
                               centered=bool(config.get("centered", False)),
                               weight_decay=float(config.get("weight_decay") or 0.0))


def _adagrad(config: dict[str, Any], params: Any) -> Any:
    import torch

    return torch.optim.Adagrad(
        params, lr=config["learning_rate"], eps=config.get("epsilon", 1e-7),
        initial_accumulator_value=config.get("initial_accumulator_value", 0.1),
        weight_decay=float(config.get("weight_decay") or 0.0))


def _adamax(config: dict[str, Any], params: Any) -> Any:
    import torch

    return torch.optim.Adamax(params, lr=config["learning_rate"],
                              betas=(config.get("beta_1", 0.9), config.get("beta_2", 0.999)),
                              eps=config.get("epsilon", 1e-7),
                              weight_decay=float(config.get("weight_decay") or 0.0))


def _nadam(config: dict[str, Any], params: Any) -> Any:
    import torch

    return torch.optim.NAdam(params, lr=config["learning_rate"],
                             betas=(config.get("beta_1", 0.9), config.get("beta_2", 0.999)),
                             eps=config.get("epsilon", 1e-7),
                             weight_decay=float(config.get("weight_decay") or 0.0),
                             decoupled_weight_decay=True)


_OPTIMIZERS = {"adam": _adam, "adamw": _adam, "sgd": _sgd, "rmsprop": _rmsprop,
               "adagrad": _adagrad, "adamax": _adamax, "nadam": _nadam}


def make_optimizer(settings: dict[str, Any], params: Any) -> Any:
    """The torch optimizer of a compiled Keras optimizer's settings."""
    return _OPTIMIZERS[settings["name"]](settings, params)


def make_loss(settings: dict[str, Any]) -> Any:
    """The torch loss of a compiled Keras loss's settings: one value per event when its
    ``reduction`` is ``"none"`` (the trainer sets it, to apply event weights)."""
    import torch

    family = settings["family"]
    logits, smoothing = settings["from_logits"], settings["label_smoothing"]

    class KerasLoss(torch.nn.Module):
        reduction = "mean"

        def forward(self, outputs: Any, target: Any) -> Any:
            if family == "binary":
                values = _binary(outputs, target, logits, smoothing)
            elif family == "categorical":
                values = _categorical(outputs, target, logits, smoothing)
            else:
                p = torch.sigmoid(outputs) if logits else outputs
                values = ((p - target) ** 2).reshape(len(target), -1).mean(-1)
            return values if self.reduction == "none" else values.mean()

    return KerasLoss()


def _binary(outputs: Any, target: Any, logits: bool, smoothing: float) -> Any:
    import torch.nn.functional as F

    target = target * (1 - smoothing) + 0.5 * smoothing
    if logits:
        values = F.binary_cross_entropy_with_logits(outputs, target, reduction="none")
    else:  # as Keras: probabilities clipped to [1e-7, 1 - 1e-7]
        values = F.binary_cross_entropy(outputs.clamp(1e-7, 1 - 1e-7), target,
                                        reduction="none")
    return values.reshape(len(target), -1).mean(-1)


def _categorical(outputs: Any, target: Any, logits: bool, smoothing: float) -> Any:
    import torch
    import torch.nn.functional as F

    log_p = outputs if logits else torch.log(outputs.clamp(1e-7, 1.0))
    # cross_entropy's log_softmax leaves log-probabilities as they are
    return F.cross_entropy(log_p, target, reduction="none", label_smoothing=smoothing)


def fit_keras(context: FitContext) -> Fitted:
    """Train the job's Keras model (see the module docstring): the torch path with a
    :class:`KerasNetworkFile`, Keras' backend set on the client and the workers."""
    from pathlib import Path

    from mlaas_dask.extras import require
    from mlaas_dask.train.network import fit_torch

    prefer_torch()
    require("keras", "Keras models (model.kind: keras)")
    context.client.run(prefer_torch)
    path = str(context.job.model.file)
    plain = KerasNetworkFile(path, Path(path).read_bytes())
    model = plain.build(context.spec.n_features).keras_model
    compiled = compiled_settings(model, path, len(context.classes))
    network_file = KerasNetworkFile(plain.path, plain.source, compiled)
    logger.info("Keras %s model of %s (torch backend)%s.", type(model).__name__, path,
                _describe(compiled))
    fitted = fit_torch(context, network_file=network_file, kind="keras")
    fitted.model_metadata["keras"] = {"compiled": compiled,
                                      "version": sys.modules["keras"].__version__}
    return fitted


def _describe(compiled: dict[str, Any]) -> str:
    if not compiled:
        return ", not compiled: the job's optimizer and a cross-entropy loss"
    loss, optimizer = compiled.get("loss"), compiled.get("optimizer")
    parts = []
    if loss:
        parts.append(f"loss {loss['name']}" + (" (from logits)" if loss["from_logits"] else ""))
    if optimizer:
        parts.append(f"optimizer {optimizer['name']} (learning rate "
                     f"{optimizer['learning_rate']:g})")
    return ", compiled: " + ", ".join(parts)
