"""Python files of the user's (model files) as modules, here and on Dask workers.

This is the one way user code is imported and shared: a file's module is named after its
content (:func:`module_name`), so the client, every worker and a bundle's copy of the file
agree on the name that pickled objects of its classes refer to. Import with
:func:`import_user_file`, share with :func:`share_file` (a file on disk) or
:func:`share_with_workers` (source kept in memory, e.g. from a bundle archive).
"""

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


def import_user_file(path: Path, source: bytes | None = None) -> ModuleType:
    """Import a user's file under the name of its content (``source``: its bytes, when
    already read), the name it has on the workers too."""
    return import_file(path, module_name(path.read_bytes() if source is None else source))


def share_with_workers(client: Any, source: bytes, name: str | None = None) -> str:
    """Make the module of this source importable on every worker of ``client``, so that
    objects of its classes can travel there; return its name (:func:`module_name`, unless
    ``name`` is given)."""
    name = name or module_name(source)
    folder = Path(tempfile.mkdtemp(prefix="mlaas-model-"))
    copy = folder / f"{name}.py"
    copy.write_bytes(source)
    try:
        client.upload_file(str(copy), load=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return name


def share_file(client: Any, path: str | Path) -> str:
    """:func:`share_with_workers` for a file on disk."""
    return share_with_workers(client, Path(path).read_bytes())
