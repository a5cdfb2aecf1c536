"""The user's network file: ``model(n_features)`` (or ``model()``) returning a
``torch.nn.Module`` (or a Keras 3 model), with optional ``loss()`` and
``optimizer(params)`` factories.

The same file is imported on the client (to check it before any work: a module, an
output width that fits the classes, an export that ONNX can hold) and on the training
worker (under the same module name, see :mod:`mlaas_dask.usercode`).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mlaas_dask.errors import ConfigError

#: model kinds a model file can hold
FILE_KINDS = ("torch", "keras", "sklearn")
#: final modules that make a torch network's outputs probabilities
PROBABILITY_LAYERS = ("Sigmoid", "Softmax")


def detect_kind(path: str | Path) -> str:
    """The kind of network or estimator a model file builds: ``torch`` when it uses
    torch (and not Keras), ``keras`` when it uses Keras, else ``sklearn``.

    Looked up from what the file imports (its module's globals), without calling
    ``model()``: the number of features is not known yet when a job is loaded. The
    training step checks what ``model()`` really returns.
    """
    from mlaas_dask.nn.keras import prefer_torch
    from mlaas_dask.train.usermodel import load_model_file

    prefer_torch()  # a Keras file imported now must get Keras' torch backend
    try:
        module = load_model_file(Path(path))
    except ConfigError as err:
        if "No module named 'torch'" in str(err):
            from mlaas_dask.extras import require

            require("torch", f"the network of {path}")  # names the extra to install
        raise
    used = {_root_package(value) for value in vars(module).values()}
    if "keras" in used or ("tensorflow" in used and "torch" not in used):
        return "keras"
    if "torch" in used:
        return "torch"
    return "sklearn"


def _root_package(value: Any) -> str:
    if isinstance(value, ModuleType):
        return value.__name__.split(".")[0]
    name = getattr(value, "__module__", None)
    if isinstance(value, type) and isinstance(name, str) and name.startswith(
            "mlaas_user_model_"):  # a class of the file: what does it derive from?
        bases = {_root_package(base) for base in value.__mro__[1:]}
        return next((b for b in ("keras", "torch") if b in bases), "")
    return name.split(".")[0] if isinstance(name, str) else ""


def kind_of(obj: Any) -> str | None:
    """``torch`` for a torch Module (a Keras model on the torch backend is ``keras``),
    ``keras`` for a Keras model, ``sklearn`` for an estimator with ``fit``, else None.
    Keras is never imported here: only looked up when the object comes from it."""
    module = type(obj).__module__ or ""
    if module.startswith("keras") or any(
            (c.__module__ or "").startswith("keras") for c in type(obj).__mro__):
        return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        return "torch"
    if hasattr(obj, "fit"):
        return "sklearn"
    return None


@dataclass(frozen=True)
class NetworkFile:
    """A model file and how to call it; picklable (sent to the training worker).

    Attributes
    ----------
    path
        The file on the client (for messages).
    source
        Its content: the worker imports this, under the name of its content.
    """

    path: str
    source: bytes

    @classmethod
    def read(cls, path: str | Path) -> NetworkFile:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Model file {path} does not exist. Check model.file in the job.")
        return cls(str(path), path.read_bytes())

    def module(self) -> ModuleType:
        """The file's module, imported under the name of its content."""
        from mlaas_dask.train.usermodel import load_model_file
        from mlaas_dask.usercode import import_file, module_name

        name = module_name(self.source)
        if name in sys.modules:
            return sys.modules[name]
        if Path(self.path).is_file() and Path(self.path).read_bytes() == self.source:
            return load_model_file(Path(self.path))
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="mlaas-model-"))
        copy = folder / f"{name}.py"
        copy.write_bytes(self.source)
        return import_file(copy, name)

    def build(self, n_features: int, expected: str = "torch") -> Any:
        """Call ``model()`` and check that it returned a network of the ``expected``
        kind.

        Raises
        ------
        ConfigError
            For a file without ``model()``, a ``model()`` that raises, or an object that
            is not a torch Module, a Keras model nor an estimator (or not of the kind the
            job says).
        """
        from mlaas_dask.train.usermodel import _user_traceback

        factory = getattr(self.module(), "model", None)
        if not callable(factory):
            raise ConfigError(
                f"Model file {self.path} defines no model() function. Add 'def "
                "model(n_features): return torch.nn.Sequential(...)' (a torch.nn.Module, "
                "a Keras model or a scikit-learn estimator).", file=self.path)
        try:
            network = factory(n_features) if _takes_argument(factory) else factory()
        except Exception as err:  # noqa: BLE001 - the user's code may raise anything
            raise ConfigError(_user_traceback(Path(self.path), err, "model() raised"),
                              file=self.path) from None
        found = kind_of(network)
        if found is None:
            raise ConfigError(
                f"model() in {self.path} returned {type(network).__name__}, which is neither "
                "a torch.nn.Module, a Keras model nor a scikit-learn estimator. Return the "
                "network itself, e.g. 'return torch.nn.Sequential(...)'.", file=self.path)
        if found != expected:
            raise ConfigError(
                f"model() in {self.path} returned a {found} model "
                f"({type(network).__name__}), but the job trains it as model.kind: "
                f"{expected}. Set model.kind: {found}, or leave kind out to detect it.",
                file=self.path, key="model.kind")
        return network

    def factory(self, name: str) -> Any:
        """The file's optional ``loss`` or ``optimizer`` factory, or None."""
        value = getattr(self.module(), name, None)
        return value if callable(value) else None

    def call(self, name: str, *args: Any) -> Any:
        """Call the file's factory ``name``, reporting the user's own traceback."""
        from mlaas_dask.train.usermodel import _user_traceback

        try:
            return getattr(self.module(), name)(*args)
        except Exception as err:  # noqa: BLE001 - the user's code may raise anything
            raise ConfigError(_user_traceback(Path(self.path), err, f"{name}() raised"),
                              file=self.path) from None


def _takes_argument(factory: Any) -> bool:
    try:
        return bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: try with the argument
        return True


def output_width(n_classes: int, width: int, path: str) -> None:
    """Check a network's output width against the classes: 1 (or 2) for binary, one per
    class otherwise."""
    fits = width in (1, 2) if n_classes == 2 else width == n_classes
    if not fits:
        wanted = "1 output (or 2)" if n_classes == 2 else f"{n_classes} outputs (one per class)"
        raise ConfigError(
            f"The network of {path} gives {width} outputs per event, but the job has "
            f"{n_classes} classes, which need {wanted}. Change the last layer, e.g. "
            f"torch.nn.Linear(hidden, {1 if n_classes == 2 else n_classes}).", file=path)


def detect_outputs(network: Any, outputs: Any, declared: str | None) -> str:
    """``logits`` or ``probabilities``: as declared (``model.outputs``), else
    ``probabilities`` when the last module is a Sigmoid or Softmax, or when the outputs
    for a probe batch are in [0, 1] (and add up to 1 per event, for several outputs);
    ``logits`` otherwise."""
    if declared:
        return declared
    leaves = [m for m in network.modules() if not list(m.children())]
    if leaves and type(leaves[-1]).__name__ in PROBABILITY_LAYERS:
        return "probabilities"
    values = outputs.detach().float()
    in_range = values.numel() and bool(((values >= 0) & (values <= 1)).all())
    if in_range and (values.shape[-1] == 1 or bool((values.sum(-1) - 1).abs().max() < 1e-4)):
        return "probabilities"
    return "logits"
