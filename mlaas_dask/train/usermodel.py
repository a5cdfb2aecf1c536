"""Models the user brings: an importable estimator class or an MLaaS4HEP-style model file.

A model file is a Python file that defines ``model()`` or ``model(n_features)`` returning
an estimator. It is loaded on the client, and uploaded to the Dask workers under the same
module name, so that estimators of the user's own classes can travel to them. Errors
inside the file are reported with the user's own traceback lines, not ours.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from mlaas_dask.errors import ConfigError
from mlaas_dask.usercode import import_file, module_name


def estimator_from_class(path: str, params: dict[str, Any]) -> Any:
    """Instantiate ``package.module.Class(**params)``."""
    module_path, _, class_name = path.rpartition(".")
    if not module_path:
        raise ConfigError(f"model.class {path!r} must be a full path such as "
                          "'sklearn.linear_model.SGDClassifier'.")
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:
        raise ConfigError(f"model.class {path!r}: cannot import {module_path!r} ({err}). "
                          "Is the package installed?") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        from mlaas_dask.errors import did_you_mean

        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"model.class {path!r}: {module_path} has no {class_name!r}."
                          + did_you_mean(class_name, names, "names"))
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"model.class {path!r} rejected model.params: {err}.") from None


def estimator_from_file(path: str | Path, n_features: int) -> Any:
    """Call the ``model()`` factory of a user's model file."""
    path = Path(path)
    module = load_model_file(path)
    factory = getattr(module, "model", None)
    if not callable(factory):
        raise ConfigError(f"Model file {path} defines no model() function. Add "
                          "'def model(n_features): return SomeClassifier(...)'.")
    takes_argument = bool(inspect.signature(factory).parameters)
    try:
        estimator = factory(n_features) if takes_argument else factory()
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise ConfigError(_user_traceback(path, err, "model() raised")) from None
    if estimator is None or not hasattr(estimator, "fit"):
        raise ConfigError(f"model() in {path} returned {type(estimator).__name__}, not an "
                          "estimator with fit() (and predict_proba()).")
    return estimator


def load_model_file(path: Path) -> ModuleType:
    """Import a model file as a module (:func:`mlaas_dask.usercode.share_file` shares it
    with the workers)."""
    if not path.is_file():
        raise ConfigError(f"Model file {path} does not exist. Check model.file in the job.")
    try:
        return import_file(path, module_name(path.read_bytes()))
    except SyntaxError as err:
        line = (err.text or "").rstrip()
        raise ConfigError(
            f"Model file {path}, line {err.lineno}: syntax error: {err.msg}.\n    {line}"
        ) from None
    except Exception as err:  # noqa: BLE001
        raise ConfigError(_user_traceback(path, err, "importing it raised")) from None


def _user_traceback(path: Path, err: BaseException, what: str) -> str:
    """The traceback frames that are in the user's file, most recent last."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    lines = "".join(traceback.format_list(frames)) if frames else ""
    return (f"Model file {path}: {what} {type(err).__name__}: {err}\n{lines}".rstrip()
            + "\nFix the model file and run again.")
