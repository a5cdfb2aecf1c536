"""Raw events as JSON -> the arrays :meth:`FeatureSpec.transform` reads.

Two layouts are accepted, both with one value per event for flat branches and one list per
event for jagged ones (``[]`` when an event has no such object)::

    {"events": [{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0]}, {"MET_pt": 12.0, "Jet_pt": []}]}
    {"columns": {"MET_pt": [41.2, 12.0], "Jet_pt": [[88.1, 45.0], []]}}

Whether a branch is flat or jagged is read from the values themselves, so the FeatureSpec
explains a misuse (a jagged branch listed as flat, say) exactly as it would at training
time. Only the branches the FeatureSpec reads are converted; other keys are ignored.

Numbers with a fraction become float32 (the type of nearly all HEP branches, so derived
features are computed as at training time), whole numbers int64 (float32 beyond its
range), booleans bool; ``null`` marks a missing flat value (XGBoost's "missing").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from mlaas_dask.errors import did_you_mean
from mlaas_dask.serve.errors import BadRequest, PayloadTooLarge
from mlaas_dask.serve.protocol import kind_of

LAYOUTS = (
    '{"events": [{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0]}, ...]} or '
    '{"columns": {"MET_pt": [41.2, ...], "Jet_pt": [[88.1, 45.0], ...]}}'
)


@dataclass
class EventColumns:
    """Checked events of one request, as numpy: flat values, and (counts, content) for
    jagged branches. Requests with the same :meth:`signature` can be merged."""

    n_events: int
    flat: dict[str, np.ndarray]
    jagged: dict[str, tuple[np.ndarray, np.ndarray]]

    def signature(self) -> tuple[tuple[str, str, str], ...]:
        """Branch, kind and dtype of every column: merging keeps each request's types."""
        return tuple(
            [(b, "flat", a.dtype.str) for b, a in self.flat.items()]
            + [(b, "jagged", c.dtype.str) for b, (_, c) in self.jagged.items()]
        )

    @classmethod
    def merge(cls, parts: Sequence[EventColumns]) -> EventColumns:
        """One set of columns holding the events of ``parts`` in order (same signature)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        flat = {b: np.concatenate([p.flat[b] for p in parts]) for b in first.flat}
        jagged = {
            b: (np.concatenate([p.jagged[b][0] for p in parts]),
                np.concatenate([p.jagged[b][1] for p in parts]))
            for b in first.jagged
        }
        return cls(sum(p.n_events for p in parts), flat, jagged)

    def arrays(self) -> dict[str, Any]:
        """Branch -> numpy (flat) or awkward (jagged) array, as FeatureSpec.transform reads."""
        import awkward as ak

        arrays: dict[str, Any] = dict(self.flat)
        for branch, (counts, content) in self.jagged.items():
            offsets = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            arrays[branch] = ak.Array(ak.contents.ListOffsetArray(
                ak.index.Index64(offsets), ak.contents.NumpyArray(content)))
        return arrays


def parse_events(payload: Any, branches: Sequence[str], max_rows: int) -> EventColumns:
    """Check a request's events and convert the branches the model reads.

    Raises
    ------
    BadRequest
        For a body in neither layout, a missing branch, or a value of the wrong kind, with
        the event and branch named.
    PayloadTooLarge
        For more than ``max_rows`` events.
    """
    if not isinstance(payload, dict) or ("events" in payload) == ("columns" in payload):
        raise BadRequest(f"Send events as {LAYOUTS}.")
    if "events" in payload:
        columns = _rows_to_columns(payload["events"], branches, max_rows)
    else:
        columns = _checked_columns(payload["columns"], branches, max_rows)
    n_events = len(next(iter(columns.values()))) if columns else 0
    flat: dict[str, np.ndarray] = {}
    jagged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for branch, values in columns.items():
        first = next((v for v in values if v is not None), None)
        if isinstance(first, list):
            jagged[branch] = _jagged(branch, values)
        else:
            flat[branch] = _flat(branch, values)
    return EventColumns(n_events, flat, jagged)


def events_to_arrays(
    payload: Any, branches: Sequence[str], max_rows: int
) -> tuple[dict[str, Any], int]:
    """Branch name -> numpy (flat) or awkward (jagged) array, and the number of events
    (:func:`parse_events` then :meth:`EventColumns.arrays`)."""
    columns = parse_events(payload, branches, max_rows)
    return columns.arrays(), columns.n_events


def _check_count(n: int, max_rows: int) -> None:
    if n == 0:
        raise BadRequest(f"No events were sent. Send events as {LAYOUTS}.")
    if n > max_rows:
        raise PayloadTooLarge(
            f"The request holds {n} events; at most {max_rows} are allowed per request. "
            "Split it into smaller requests."
        )


def _rows_to_columns(
    events: Any, branches: Sequence[str], max_rows: int
) -> dict[str, list[Any]]:
    if not isinstance(events, list):
        raise BadRequest(f"'events' must be a list of objects, got {kind_of(events)}. {LAYOUTS}")
    _check_count(len(events), max_rows)
    for i, event in enumerate(events):
        if type(event) is not dict:
            raise BadRequest(
                f"events[{i}] is {kind_of(event)}; each event is an object of branch name -> "
                "value (a number, or a list of numbers for a jagged branch)."
            )
    columns = {}
    for branch in branches:
        try:
            columns[branch] = [event[branch] for event in events]
        except KeyError:
            i = next(i for i, event in enumerate(events) if branch not in event)
            raise BadRequest(
                f"Event {i} has no {branch!r}, which the model's features need."
                + did_you_mean(branch, events[i], "branches in that event")
                + f" The model reads: {', '.join(branches)}."
            ) from None
    return columns


def _checked_columns(
    columns: Any, branches: Sequence[str], max_rows: int
) -> dict[str, list[Any]]:
    if not isinstance(columns, dict):
        raise BadRequest(f"'columns' must be an object of branch name -> list, got "
                         f"{kind_of(columns)}.")
    lengths = {}
    for branch in branches:
        if branch not in columns:
            raise BadRequest(
                f"Column {branch!r}, which the model's features need, is missing."
                + did_you_mean(branch, columns, "columns")
                + f" The model reads: {', '.join(branches)}."
            )
        values = columns[branch]
        if not isinstance(values, list):
            raise BadRequest(f"Column {branch!r} must be a list (one entry per event), got "
                             f"{kind_of(values)}.")
        lengths[branch] = len(values)
    if len(set(lengths.values())) > 1:
        shortest = min(lengths, key=lengths.__getitem__)
        longest = max(lengths, key=lengths.__getitem__)
        raise BadRequest(
            f"Columns have different lengths: {shortest!r} has {lengths[shortest]} events, "
            f"{longest!r} has {lengths[longest]}. Every column holds one entry per event."
        )
    _check_count(next(iter(lengths.values()), 0), max_rows)
    return {branch: columns[branch] for branch in branches}


def _flat(branch: str, values: list[Any]) -> np.ndarray:
    array = _numbers(values)
    if array is None:
        for i, value in enumerate(values):
            if value is not None and not _is_number(value):
                raise BadRequest(
                    f"Branch {branch!r}, event {i}: expected a number (or null when missing), "
                    f"got {kind_of(value)}."
                    + (" A jagged branch needs a list in every event ([] for none)."
                       if isinstance(value, list) else "")
                )
        with np.errstate(over="ignore"):
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            array = array.astype(np.float32)
    return array


def _jagged(branch: str, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    for i, value in enumerate(values):
        if type(value) is not list:
            raise BadRequest(
                f"Branch {branch!r}, event {i}: expected a list of numbers (one per object, "
                f"[] for none) as in the other events, got {kind_of(value)}."
            )
    array = _numbers(list(chain.from_iterable(values)))
    if array is None:
        i, value = _first_bad_object(values)
        raise BadRequest(
            f"Branch {branch!r}, event {i}: the list holds {kind_of(value)}; a jagged branch "
            "holds one number per object (no null, no nested lists; leave missing objects "
            "out)."
        )
    counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return counts, array


def _numbers(values: list[Any]) -> np.ndarray | None:
    """A 1-d numeric array of ``values``, or ``None`` when they are not all numbers."""
    try:
        array = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if array.dtype.kind == "O" and all(_is_number(v) for v in values):
        array = np.array(values, dtype=np.float64)  # integers beyond 64 bits
    elif array.dtype.kind == "u":
        # whole numbers >= 2**63: numpy makes them uint64, which awkward's kernels and
        # the features' int64 arithmetic do not take; as floats, like larger ones
        array = array.astype(np.float64)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "biuf"):
        return None
    if array.dtype.kind == "f" or array.size == 0:
        with np.errstate(over="ignore"):
            return array.astype(np.float32)
    return array


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _first_bad_object(values: list[list[Any]]) -> tuple[int, Any]:
    for i, objects in enumerate(values):
        for value in objects:
            if not _is_number(value):
                return i, value
    return 0, None
