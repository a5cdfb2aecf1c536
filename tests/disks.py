"""A real small filesystem for full-disk tests: a tmpfs of a few hundred KiB, mounted on
the spot (root, or CAP_SYS_ADMIN, is needed: without it the test is skipped and says so)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_filesystem(where: Path, size: str = "512k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``where`` (created) for the duration."""
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("a full-disk test needs a small real filesystem: 'mount' is not installed")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"a full-disk test needs a small real filesystem, and mounting a tmpfs "
                    f"is not permitted here (needs root or CAP_SYS_ADMIN): "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free on ``disk``."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
        handle.flush()
        os.fsync(handle.fileno())


def entries(folder: Path) -> list[str]:
    """Everything in ``folder`` but the filler, hidden files included."""
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")
