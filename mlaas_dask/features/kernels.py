"""Compiled kernels (numba) that write a partition's feature matrix in one pass per collection.

The numpy path of :meth:`FeatureSpec.transform_with_stats` makes every slot of every field
with a few vectorised passes (sources, missing mask, gather, NaN), and a partition's rows
grouped by split turn those gathers into three interleaved streams: about 100 ms for
500k events x 48 features here, a third of reading them. The kernels here walk the output
rows once per collection and write each row's slots of every field (row-major, so each
row's cache lines are written together): about 35-45 ms for the same matrix, in a loop
over one partition in split order; but a single all-rows transform of 500k events, first
touch included, took 0.136 s with them and 0.10-0.11 s with numpy on a quiet machine
(``benchmarks/bench_read_features.py``). They write exactly the values the numpy path
writes: float32 contents are copied bit for bit, and other dtypes are cast to float32 by
numpy before the kernel sees them, as numpy's assignment would cast them.

They are opt-in (``MLAAS_KERNELS=numba``): in a fresh process numba's import and first
call (even with the kernels cached on disk) cost 1-2.5 s here, once per worker, while the
whole pipeline (bench_read_features, 2M events, quiet machine) gained nothing measurable
over the numpy path (0.75 of the raw read either way; the matrix's first touch, see
:func:`kept_matrix`, was the cost that mattered). Small inputs (below :data:`MIN_ROWS`)
always take the numpy path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

#: the fewest output rows worth a compiled kernel (one serving request stays on numpy)
MIN_ROWS = 16_384


def usable(rows: int) -> bool:
    """Whether :func:`fill_flat` and :func:`fill_collection` run for ``rows`` output rows:
    ``MLAAS_KERNELS=numba`` asks for them, numba is installed and there are enough rows."""
    if rows < MIN_ROWS or os.environ.get("MLAAS_KERNELS", "").lower() != "numba":
        return False
    return _kernels() is not None


@functools.cache
def _kernels() -> dict[str, Any] | None:
    try:
        return _compile()
    except ImportError:
        return None


def _compile() -> dict[str, Any]:
    """The numba kernels (compiled on first call; cached on disk next to this module or
    in numba's user cache, so a later process only loads them)."""
    import numba

    jit = numba.njit(nogil=True, cache=True)

    # Element indices are unsigned, so that numba does not test every access for a
    # negative index (Python's wrap-around): that test made the loops twice as slow, and
    # so did a test inside the loops (hence one kernel with an order, one without).
    @jit
    def flat_kernel(out: Any, column: Any, rows: Any, columns: Any) -> None:
        width = out.shape[1]
        target = out.reshape(-1)
        for r in range(rows.shape[0]):
            i = np.uint64(rows[r])
            base = np.uint64(r * width + column)
            for values in columns:
                target[base] = values[i]
                base += np.uint64(1)

    @jit
    def collection_kernel(out: Any, column: Any, rows: Any, offsets: Any, n: Any,
                          multiplicity: Any, fields: Any) -> None:
        width = out.shape[1]
        target = out.reshape(-1)
        nan = np.float32(np.nan)
        for r in range(rows.shape[0]):
            i = np.uint64(rows[r])
            start = np.uint64(offsets[i])
            count = np.uint64(offsets[i + np.uint64(1)]) - start
            base = np.uint64(r * width + column)
            if multiplicity:
                target[base] = count
                base += np.uint64(1)
            kept = min(count, np.uint64(n))
            for values in fields:
                for j in range(kept):
                    target[base + np.uint64(j)] = values[start + np.uint64(j)]
                for j in range(kept, n):
                    target[base + np.uint64(j)] = nan
                base += np.uint64(n)

    @jit
    def ordered_collection_kernel(out: Any, column: Any, rows: Any, offsets: Any, n: Any,
                                  multiplicity: Any, order: Any, fields: Any) -> None:
        width = out.shape[1]
        target = out.reshape(-1)
        nan = np.float32(np.nan)
        for r in range(rows.shape[0]):
            i = np.uint64(rows[r])
            start = np.uint64(offsets[i])
            count = np.uint64(offsets[i + np.uint64(1)]) - start
            base = np.uint64(r * width + column)
            if multiplicity:
                target[base] = count
                base += np.uint64(1)
            kept = min(count, np.uint64(n))
            for values in fields:
                for j in range(kept):
                    target[base + np.uint64(j)] = values[np.uint64(order[start + np.uint64(j)])]
                for j in range(kept, n):
                    target[base + np.uint64(j)] = nan
                base += np.uint64(n)

    return {"flat": flat_kernel, "collection": collection_kernel,
            "ordered": ordered_collection_kernel}


def kept_matrix(rows: int, columns: int, order: str) -> np.ndarray:
    """An uninitialised float32 matrix for memory that is kept (a partition's features,
    held by its worker until training), allocated without numpy's huge-page advice.

    numpy advises ``MADV_HUGEPAGE`` for every array of 4 MiB or more. Freed and
    allocated again, huge pages are cheap (6 ms to first touch 96 MB here), but while
    earlier matrices are held each new one lands on fresh huge pages, and touching them
    first cost 250 ms per 96 MB on the 2-core test VM instead of 41 ms with normal pages
    (more than writing the features): ``benchmarks/bench_read_features.py`` measures it.
    Short-lived arrays (the events read) keep the advice.
    """
    advice = _hugepage_advice(False)
    try:
        return np.empty((rows, columns), dtype=np.float32, order=order)  # type: ignore[call-overload]
    finally:
        _hugepage_advice(advice)


def _hugepage_advice(enabled: bool) -> bool:
    """Set numpy's huge-page advice for new arrays; returns the setting it had."""
    import importlib

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    return bool(multiarray._set_madvise_hugepage(enabled))


def _float32(values: np.ndarray) -> np.ndarray:
    """``values`` as contiguous float32 (numpy's cast, as an assignment into a float32
    matrix makes it)."""
    return np.ascontiguousarray(values, dtype=np.float32)


def _rows(out: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return np.arange(out.shape[0], dtype=np.intp)
    return np.ascontiguousarray(rows, dtype=np.intp)


def fill_flat(out: np.ndarray, column: int, rows: np.ndarray | None,
              columns: Sequence[np.ndarray]) -> None:
    """Write per-event ``columns`` into ``out[:, column:column + len(columns)]``.

    Parameters
    ----------
    out
        The C-contiguous float32 matrix, one row per output row.
    rows
        The event of every output row (``None``: row ``i`` is event ``i``).
    columns
        One value per event each (any numeric dtype; cast to float32 first).
    """
    if not columns:
        return
    kernels = _kernels()
    assert kernels is not None and out.flags.c_contiguous and out.dtype == np.float32
    kernels["flat"](out, column, _rows(out, rows), tuple(_float32(c) for c in columns))


def fill_collection(out: np.ndarray, column: int, rows: np.ndarray | None,
                    offsets: np.ndarray, n: int, multiplicity: bool,
                    order: np.ndarray | None, fields: Sequence[np.ndarray]) -> None:
    """Write a jagged collection's columns into ``out`` from ``column`` on: its
    multiplicity (when asked), then ``n`` slots of every field, NaN where an event has
    fewer objects.

    Parameters
    ----------
    out
        The C-contiguous float32 matrix, one row per output row.
    rows
        The event of every output row (``None``: row ``i`` is event ``i``).
    offsets
        Per event, where its objects start in every field (one more entry than events;
        starting at 0).
    order
        Indices into the fields that sort each event's objects (from
        :func:`~mlaas_dask.features.jagged.order_within_events`), or ``None``.
    fields
        The contents of the fields (any numeric dtype; cast to float32 first).
    """
    kernels = _kernels()
    assert kernels is not None and out.flags.c_contiguous and out.dtype == np.float32
    index = _rows(out, rows)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    contents = tuple(_float32(f) for f in fields)
    if order is None:
        kernels["collection"](out, column, index, offsets, n, multiplicity, contents)
    else:
        kernels["ordered"](out, column, index, offsets, n, multiplicity,
                           np.ascontiguousarray(order, dtype=np.intp), contents)
