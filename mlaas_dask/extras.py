"""Optional dependencies, imported on demand with an error that gives the pip command.

Every optional import of the package goes through here: :func:`require` when the feature
cannot work without it, :func:`available` when it is only faster with it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from mlaas_dask.errors import MissingExtra

#: module name -> (extra, what it is for)
_EXTRAS = {
    "fsspec_xrootd": ("xrootd", "reading root:// URLs"),
    "XRootD": ("xrootd", "reading root:// URLs"),
    "aiohttp": ("xrootd", "reading https:// URLs"),
    "dask_jobqueue": ("jobqueue", "SLURM / HTCondor / PBS clusters"),
    "tritonclient": ("test", "the Open Inference Protocol client tests"),
    "torch": ("torch", "neural networks"),
    "onnx": ("torch", "storing neural networks as ONNX"),
    "onnxscript": ("torch", "storing neural networks as ONNX"),
    "safetensors": ("torch", "storing a network's weights"),
    "keras": ("keras", "Keras models (trained on Keras' torch backend)"),
}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`~mlaas_dask.errors.MissingExtra` naming the
    extra to install (a module that no extra provides raises its ``ImportError``).

    ``purpose`` says what needs it (e.g. ``"slurm clusters"``); by default, what the
    extra is for.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra, default = _EXTRAS.get(module.split(".", maxsplit=1)[0], (None, None))
        if extra is None:
            raise
        raise MissingExtra(
            f"The optional package {module!r} is needed for {purpose or default} but is not "
            f"installed.\nInstall it with:  pip install 'mlaas_dask[{extra}]'",
            module=module, extra=extra,
        ) from err


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it, beyond its parents)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False
