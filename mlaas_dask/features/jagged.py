"""Numpy kernels for jagged collections: offsets + contents -> fixed-width slots.

Working on the offsets and contents of a jagged array with a handful of vectorised gathers
is several times faster than ``ak.pad_none`` + ``ak.fill_none`` + ``ak.to_numpy`` per field
(measured in ``benchmarks/bench_features.py``).
"""

from __future__ import annotations

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


def fill_slots(
    out: np.ndarray,
    column: int,
    offsets: np.ndarray,
    content: np.ndarray,
    n: int,
    order: np.ndarray | None = None,
) -> None:
    """Write the first ``n`` objects of each event into ``out[:, column:column + n]``.

    Slots past an event's multiplicity are left as they are (NaN when ``out`` was made with
    ``np.full(..., np.nan)``). ``order`` (from :func:`order_within_events`) reorders the
    content first; it indexes ``content`` like ``offsets`` does.
    """
    starts = offsets[:-1]
    counts = offsets[1:] - starts
    for slot in range(n):
        has = counts > slot
        if not has.any():
            break
        index = starts[has] + slot
        if order is not None:
            index = order[index - offsets[0]]
        out[has, column + slot] = content[index]
