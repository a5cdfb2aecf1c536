"""Python files of the user's (model files) as modules, here and on Dask workers."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

#: prefix of the module names given to user files
PREFIX = "mlaas_user_model_"


def module_name(source: bytes) -> str:
    """A stable module name for a file's content (the same in every process)."""
    return PREFIX + hashlib.blake2b(source, digest_size=6).hexdigest()


def import_file(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` (registered in ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def share_with_workers(client: Any, source: bytes, name: str) -> None:
    """Make module ``name`` (with this source) importable on every worker of ``client``,
    so that objects of its classes can travel there."""
    folder = Path(tempfile.mkdtemp(prefix="mlaas-model-"))
    copy = folder / f"{name}.py"
    copy.write_bytes(source)
    try:
        client.upload_file(str(copy), load=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
