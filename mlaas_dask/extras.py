"""Optional dependencies, imported on demand with an error that gives the pip command."""

from __future__ import annotations

import importlib
from types import ModuleType

from mlaas_dask.errors import MlaasError

#: module name -> (extra, what it is for)
_EXTRAS = {
    "fsspec_xrootd": ("xrootd", "reading root:// URLs"),
    "XRootD": ("xrootd", "reading root:// URLs"),
    "aiohttp": ("xrootd", "reading https:// URLs"),
    "dask_jobqueue": ("jobqueue", "SLURM / HTCondor / PBS clusters"),
    "tritonclient": ("test", "the Open Inference Protocol client tests"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an :class:`MlaasError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra, purpose = _EXTRAS.get(module.split(".")[0], (None, None))
        if extra is None:
            raise
        raise MlaasError(
            f"The optional package {module!r} is needed for {purpose} but is not installed.\n"
            f"Install it with:  pip install 'mlaas_dask[{extra}]'"
        ) from err
