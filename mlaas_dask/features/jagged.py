"""Numpy kernels for jagged collections: offsets + contents -> fixed-width slots.

Working on the offsets and contents of a jagged array with a handful of vectorised gathers
is several times faster than ``ak.pad_none`` + ``ak.fill_none`` + ``ak.to_numpy`` per field
(measured in ``benchmarks/bench_features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def offsets_and_content(array: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(offsets, content)`` numpy views of a jagged 1-d list array, or ``None``.

    ``offsets`` has one more entry than there are events and indexes ``content`` directly
    (it need not start at 0). Returns ``None`` when ``array`` is not a list of numbers.
    """
    import awkward as ak

    if isinstance(array, np.ndarray):
        return None
    layout = ak.to_layout(array, allow_record=False)
    if isinstance(layout, ak.contents.IndexedOptionArray | ak.contents.UnmaskedArray):
        return None
    if isinstance(layout, ak.contents.ListArray | ak.contents.IndexedArray):
        layout = ak.to_layout(ak.to_packed(ak.Array(layout)))
    if isinstance(layout, ak.contents.RegularArray):
        layout = layout.to_ListOffsetArray64(False)
    if not isinstance(layout, ak.contents.ListOffsetArray):
        return None
    content = layout.content
    if not isinstance(content, ak.contents.NumpyArray) or content.data.ndim != 1:
        return None
    return np.asarray(layout.offsets.data), np.asarray(content.data)


def order_within_events(
    offsets: np.ndarray, key: np.ndarray, descending: bool = True
) -> np.ndarray | None:
    """Indices into ``key`` that sort every event's objects by ``key``, or ``None`` if
    they are already in that order (the common case: NanoAOD stores jets by falling pt).

    NaN keys go last. The sort is stable, so ties keep their stored order.
    """
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop - start < 2:
        return None
    values = key[start:stop].astype(np.float64)
    if descending:
        values = -values
    values[np.isnan(values)] = np.inf  # NaN last, whatever the direction
    counts = np.diff(offsets)
    # a step down inside one event means the objects are not yet in order
    step_down = np.diff(values) < 0
    last_of_event = offsets[1:-1] - start - 1
    step_down[last_of_event[(last_of_event >= 0) & (last_of_event < step_down.size)]] = False
    if not step_down.any():
        return None
    parents = np.repeat(np.arange(counts.size), counts)
    return np.lexsort((values, parents)) + start


@dataclass(frozen=True)
class Slots:
    """Where each kept object goes: flat positions in a column-major (Fortran-ordered)
    events x columns matrix, relative to its first column, and the content index it
    comes from."""

    target: np.ndarray
    source: np.ndarray


def slots(offsets: np.ndarray, n: int, order: np.ndarray | None = None) -> Slots:
    """The first ``n`` objects of every event, as :class:`Slots` for :func:`fill_slots`.

    ``order`` (from :func:`order_within_events`) reorders each event's objects first.
    Computed once per collection, then reused for each of its fields. Targets are grouped
    by slot, so the writes of :func:`fill_slots` run through each column in order.
    """
    events = offsets.size - 1
    counts = np.diff(offsets)
    small = events * (n + 1) < 2**31 and offsets[-1] < 2**31
    dtype = np.int32 if small else np.int64  # half the memory traffic when it fits
    starts = offsets[:-1].astype(dtype)
    targets, sources = [], []
    for slot in range(n):
        rows = np.flatnonzero(counts > slot).astype(dtype, copy=False)
        if rows.size == 0:
            break
        targets.append(rows + dtype(slot * events))
        sources.append(starts[rows] + dtype(slot))
    if not targets:
        return Slots(np.zeros(0, dtype), np.zeros(0, dtype))
    source = np.concatenate(sources)
    if order is not None:
        source = order[source - offsets[0]]
    return Slots(np.concatenate(targets), source)


def fill_slots(out: np.ndarray, column: int, where: Slots, content: np.ndarray) -> None:
    """Write ``content`` of the kept objects into ``out[:, column:column + n]``.

    ``out`` must be Fortran-ordered. Slots past an event's multiplicity are left as they
    are (NaN when ``out`` was made with ``np.full(..., np.nan, order="F")``).
    """
    flat = out.T.reshape(-1)  # a view: out is column-major
    flat[where.target + column * out.shape[0]] = content[where.source]
