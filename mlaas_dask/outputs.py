"""Writing outputs (bundles, archives, score files) safely.

- Disk space: a check before writing anything whose size is known, and one clear message
  (the path, the bytes needed and free) when a disk or quota fills up anyway. Callers
  write into a hidden temporary file or folder and remove it on any error, so a full disk
  leaves no partial output behind.
- Manifests: outputs record the names of the files they wrote, so that replacing them
  later removes exactly those; :func:`plain_names` keeps a crafted list from reaching
  outside the folder.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlaas_dask.errors import MlaasError

#: errors that mean "no room": the disk is full, or the user's quota is
FULL = (errno.ENOSPC, errno.EDQUOT)
#: a file takes whole blocks on disk; 4 KiB is the common size
BLOCK = 4096


class DiskSpaceError(MlaasError):
    """Not enough free space (or quota) to write an output."""


def size_on_disk(sizes: Iterable[int]) -> int:
    """Bytes that files of these sizes take, each rounded up to whole blocks, plus one
    block for their folder."""
    return BLOCK + sum(-(-int(size) // BLOCK) * BLOCK for size in sizes)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem that holds ``path`` (or would: its nearest existing
    folder), or ``None`` when that cannot be told."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def check_free_space(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` before any work when ``needed`` bytes do not fit
    where ``path`` goes. ``what`` names the output (e.g. ``the model bundle``)."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskSpaceError(
            f"Not enough disk space for {what} at {path}: it needs about {human(needed)} "
            f"and {human(free)} are free there. Nothing was written. Free some space, or "
            "choose another --out on a disk with room."
        )


@contextmanager
def reporting_full_disk(path: str | os.PathLike[str], needed: int, what: str,
                        cleanup: Callable[[], None]) -> Iterator[None]:
    """Turn a full disk or quota (ENOSPC, EDQUOT) met while writing into one
    :class:`DiskSpaceError` that names ``path`` and the bytes needed and free (counted
    after ``cleanup`` has removed the partial files)."""
    try:
        yield
    except OSError as err:
        if err.errno not in FULL:
            raise
        cleanup()
        free = free_bytes(path)
        raise DiskSpaceError(
            f"The disk filled up while writing {what} at {path} ({os.strerror(err.errno)}): "
            f"it needs about {human(needed)}"
            + (f" and {human(free)} are free there now" if free is not None else "")
            + ". Nothing was left half-written. Free some space, or choose another --out "
            "on a disk with room."
        ) from None


def short_size(size: int) -> str:
    """``1.5 MB``, ``512 B`` (decimal units)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human(size: int) -> str:
    """``1.5 MB (1,548,288 bytes)``, or ``512 bytes``."""
    return f"{size:,} bytes" if size < 1000 else f"{short_size(size)} ({size:,} bytes)"


def plain_names(names: Any) -> set[str]:
    """The entries of a recorded file list that are plain file names (no folders, no
    ``..``): the only ones ever joined to an output folder."""
    if not isinstance(names, list):
        return set()
    return {name for name in names if isinstance(name, str)
            and name not in ("", ".", "..") and "/" not in name and "\\" not in name}
