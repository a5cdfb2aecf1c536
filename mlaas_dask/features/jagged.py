"""Numpy kernels for jagged collections: offsets + contents -> fixed-width slots.

Working on the offsets and contents of a jagged array with a handful of vectorised gathers
is several times faster than ``ak.pad_none`` + ``ak.fill_none`` + ``ak.to_numpy`` per field
(measured in ``benchmarks/bench_read_features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def offsets_and_content(array: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(offsets, content)`` numpy views of a jagged 1-d list array, or ``None``.

    ``offsets`` has one more entry than there are events and indexes ``content`` directly
    (it need not start at 0). Returns ``None`` when ``array`` is not a list of numbers.
    Lists that are all empty (type ``var * unknown``, e.g. JSON events without a single
    muon) are a list of numbers with no objects.
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
    if isinstance(content, ak.contents.EmptyArray):
        content = content.to_NumpyArray(np.float64)
    elif content.is_option and isinstance(content.content, ak.contents.NumpyArray):
        # a missing value inside a list (e.g. null in JSON events) is NaN, "missing"
        content = ak.to_layout(ak.fill_none(ak.Array(content), np.nan, axis=0))
    if not isinstance(content, ak.contents.NumpyArray) or content.data.ndim != 1:
        return None
    return np.asarray(layout.offsets.data), np.asarray(content.data)


def order_within_events(
    offsets: np.ndarray, key: np.ndarray, descending: bool = True
) -> np.ndarray | None:
    """Indices into ``key`` that sort every event's objects by ``key``, or ``None`` if
    they are already in that order (the common case: NanoAOD stores jets by falling pt).

    ``offsets`` index ``key`` directly. NaN keys go last. The sort is stable, so ties keep
    their stored order.
    """
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop - start < 2:
        return None
    values = key[start:stop]
    if values.dtype.kind not in "f" or np.isfinite(values.sum(dtype=np.float64)):
        # no NaN: one comparison pass over the stored values, no copy
        wrong_way = np.greater if descending else np.less
        step_out_of_order = wrong_way(values[1:], values[:-1])
    else:
        with np.errstate(invalid="ignore"):  # inf - inf: equal keys, in order
            step_out_of_order = np.diff(_ascending_key(values, descending)) < 0
    # steps across an event boundary do not count
    boundary = offsets[1:-1] - start - 1
    step_out_of_order[boundary[(boundary >= 0) & (boundary < step_out_of_order.size)]] = False
    if not step_out_of_order.any():
        return None
    counts = np.diff(offsets)
    parents = np.repeat(np.arange(counts.size), counts)
    return np.lexsort((_ascending_key(values, descending), parents)) + start


def _ascending_key(values: np.ndarray, descending: bool) -> np.ndarray:
    """A float64 copy of ``values`` whose ascending order is the wanted one, NaN last."""
    key = values.astype(np.float64)
    if descending:
        key = -key
    key[np.isnan(key)] = np.inf  # NaN last, whatever the direction
    return key


@dataclass(frozen=True)
class Slot:
    """Where one slot's objects come from, for every output row.

    Dense (most events have an object in this slot): ``sources`` has one content index per
    row and ``missing`` marks the rows without an object. Sparse: ``rows`` are the rows
    with an object and ``sources`` their content indices.
    """

    sources: np.ndarray
    rows: np.ndarray | None = None
    missing: np.ndarray | None = None


def slots(offsets: np.ndarray, n: int, order: np.ndarray | None = None,
          events: np.ndarray | None = None) -> list[Slot]:
    """The first ``n`` objects of every event, slot by slot, for :func:`fill_slots`.

    ``order`` (from :func:`order_within_events`) reorders each event's objects first.
    ``events``, when given, are the events to keep, in output order (output row ``i`` is
    event ``events[i]``); by default every event, in stored order. Computed once per
    collection, then reused for each of its fields.
    """
    starts = offsets[:-1]
    counts = np.diff(offsets)
    if events is not None:
        starts, counts = starts[events], counts[events]
    found = []
    for slot in range(n):
        present = counts > slot
        kept = int(np.count_nonzero(present))
        if kept >= 0.95 * counts.size:  # dense: a gather per row beats a scatter
            sources = starts + slot
            missing = ~present
            sources[missing] = offsets[0]  # any valid index; overwritten with NaN
            found.append(Slot(_reorder(sources, order, offsets),
                              missing=missing if kept < counts.size else None))
        else:
            rows = np.flatnonzero(present)  # intp: numpy indexes without a cast
            found.append(Slot(_reorder(starts[rows] + slot, order, offsets), rows=rows))
    return found


def _reorder(sources: np.ndarray, order: np.ndarray | None, offsets: np.ndarray) -> np.ndarray:
    return sources if order is None else order[sources - offsets[0]]


def fill_slots(out: np.ndarray, column: int, where: list[Slot], content: np.ndarray) -> None:
    """Write ``content`` of the kept objects into ``out[:, column:column + n]``, and NaN
    where an event has no object.

    ``out`` should be column-major, so that every write runs through one contiguous column.
    """
    for slot, where_slot in enumerate(where):
        target = out[:, column + slot]
        if where_slot.rows is None:
            if content.dtype == target.dtype and target.flags.contiguous:
                np.take(content, where_slot.sources, out=target, mode="clip")  # unbuffered
            else:
                target[:] = content[where_slot.sources]
            if where_slot.missing is not None:
                target[where_slot.missing] = np.nan
        else:
            target.fill(np.nan)
            target[where_slot.rows] = content[where_slot.sources]
