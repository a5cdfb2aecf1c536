"""Progress lines of the package: the ``mlaas_dask`` logger.

Every module logs to ``logging.getLogger(__name__)``. So that a notebook or a script sees
the progress of a training without configuring logging (as ``distributed`` does for its
own logger), the ``mlaas_dask`` logger gets one handler that writes INFO messages, bare,
to the *current* ``sys.stdout``. Configure the logger as usual to change that: set its
level to ``WARNING`` to silence the lines (``mlaas ... --quiet`` does), or remove the
handler and let the records propagate to your own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

NAME = "mlaas_dask"


class _CurrentStdout(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stdout`` is when a line is logged
    (pytest's capture, a notebook's cell output), not the one at import."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def install() -> None:
    """Give the ``mlaas_dask`` logger its stdout handler, once."""
    logger = logging.getLogger(NAME)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        logger.addHandler(_CurrentStdout())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence the package's INFO lines inside the block (warnings still show)."""
    logger = logging.getLogger(NAME)
    level = logger.level
    if enabled:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


#: plain progress lines (not a terminal) report every this fraction of the tasks
PROGRESS_STEP = 0.1


def show_progress(futures: list[Any], what: str) -> None:
    """Wait for ``futures``, showing how many are done.

    In a terminal or a notebook this is distributed's progress bar; elsewhere (a batch
    job's log, a pipe, CI) a bar redrawn with carriage returns would fill the log with
    one long line, so plain lines are printed instead: ``what: 4/40 done (10%, 3 s)``,
    every tenth of the tasks. Failed tasks count as done; their errors come with the
    results.
    """
    if not futures:
        return
    from distributed.utils import is_kernel

    stream = sys.stdout
    if is_kernel() or (hasattr(stream, "isatty") and stream.isatty()):
        from distributed import progress

        progress(futures)
        print()
        return
    from distributed import as_completed

    total, start = len(futures), time.monotonic()
    every = max(1, math.ceil(total * PROGRESS_STEP))
    print(f"{what}: 0/{total} done", flush=True)
    for done, _ in enumerate(as_completed(futures), 1):
        if done % every == 0 or done == total:
            print(f"{what}: {done}/{total} done ({done / total:.0%}, "
                  f"{time.monotonic() - start:.0f} s)", flush=True)


#: the line XGBoost's collective tracker writes to the process's stderr from a native
#: thread for every worker that joins (Python's logging and warnings never see it)
XGBOOST_RANK_LINE = re.compile(rb"^\[\d\d:\d\d:\d\d\] Task \[xgboost\.dask-\d+\]:\S+ got rank \d+$")


@contextlib.contextmanager
def native_lines_dropped(pattern: re.Pattern[bytes] = XGBOOST_RANK_LINE,
                         enabled: bool = True) -> Iterator[None]:
    """Drop the lines matching ``pattern`` that native code writes to file descriptor 2
    inside the block; every other line passes through (``--quiet``). Where stderr has no
    file descriptor (a notebook, pytest's capture), nothing is filtered.

    Processes started inside the block (local Dask workers) inherit the filtered stderr.
    """
    try:
        fd = sys.stderr.fileno() if enabled else -1
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd < 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not pattern.match(line.rstrip(b"\r\n")):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="mlaas-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer here: the thread sees its end
        thread.join(timeout=5)  # a lingering child may hold the pipe: do not wait on it
        os.close(saved)
