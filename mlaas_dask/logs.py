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
import sys
from collections.abc import Iterator
from typing import TextIO

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
