"""Event records -> the branches a FeatureSpec names.

A FeatureSpec names branches as they are stored in NanoAOD-like trees: ``MET_pt``,
``Jet_pt``. The user's events come in one of three shapes, all mapped here to a flat
record with exactly those fields:

- a flat record of branches, as ``uproot.dask`` (or ``uproot.open(...).arrays()``) gives:
  ``events["Jet_pt"]``;
- NanoEvents-style nested records, as coffea's ``NanoEventsFactory`` gives:
  ``Jet_pt`` is ``events.Jet.pt``, ``MET_pt`` is ``events.MET.pt`` (the branch name is
  split at an underscore where the record has a field of that name);
- a mapping of branch names to arrays, e.g. ``{"Jet_pt": events.Jet.pt, ...}`` (for
  corrected or new columns under the names the features use).

The same code serves awkward arrays (one partition) and dask-awkward arrays (lazy): the
structure is read from the array's form (for dask-awkward, its typetracer metadata), so
nothing is computed and nothing is read. Only field access is done; which branches are
then read is up to dask-awkward's column optimisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlaas_dask.errors import FeatureError, did_you_mean

#: how deep nested records are searched for a branch (NanoEvents nests one level:
#: events.Jet.pt; two allows e.g. events.Jet.matched.pt)
MAX_DEPTH = 3


def is_dask_awkward(array: Any) -> bool:
    """Whether ``array`` is a dask-awkward collection."""
    return type(array).__module__.startswith("dask_awkward")


def is_typetracer(array: Any) -> bool:
    """Whether ``array`` is an awkward array without data (dask-awkward's metadata, or
    what dask-awkward passes a function to learn which columns it reads)."""
    import awkward as ak

    if isinstance(array, Mapping):
        return any(is_typetracer(value) for value in array.values())
    try:
        return bool(ak.backend(array) == "typetracer")
    except TypeError:
        return False


def _structure(events: Any) -> Any:
    """What the structure is read from: a dask-awkward array's typetracer metadata, or
    the awkward array itself."""
    return events._meta if is_dask_awkward(events) else events


def _fields(array: Any) -> list[str]:
    """The record fields of an array (of records, or lists of records); [] if none."""
    import awkward as ak

    try:
        return list(ak.fields(array))
    except TypeError:
        return []


def branch_path(structure: Any, branch: str, depth: int = 0) -> tuple[str, ...] | None:
    """The fields to follow in ``structure`` to reach ``branch``, or ``None``.

    A field of that exact name wins; otherwise the branch is split at an underscore
    where ``structure`` has a record field named by the part before it (the longest
    such field first), e.g. ``Jet_pt`` -> ``("Jet", "pt")``.
    """
    fields = _fields(structure)
    if branch in fields:
        return (branch,)
    if depth >= MAX_DEPTH:
        return None
    prefixes = [f for f in fields if branch.startswith(f + "_") and len(branch) > len(f) + 1]
    for field in sorted(prefixes, key=len, reverse=True):
        inner = structure[field]
        if _fields(inner):
            rest = branch_path(inner, branch[len(field) + 1:], depth + 1)
            if rest is not None:
                return (field, *rest)
    return None


def available_branches(structure: Any, depth: int = 0) -> list[str]:
    """Every branch name the structure offers, as :func:`branch_path` reads them
    (``Jet_pt`` for ``events.Jet.pt``): for the hint of a missing branch."""
    names: list[str] = []
    for field in _fields(structure):
        inner = structure[field]
        if _fields(inner) and depth < MAX_DEPTH:
            names.extend(f"{field}_{n}" for n in available_branches(inner, depth + 1))
        else:
            names.append(field)
    return names


def _describe(structure: Any) -> str:
    import awkward as ak

    try:
        return str(ak.type(structure).content)
    except Exception:  # noqa: BLE001 - only for a message
        return type(structure).__name__


def select_branches(events: Any, branches: Sequence[str], what: str = "the features") -> Any:
    """A record (awkward or dask-awkward, as ``events`` is) with exactly ``branches`` as
    fields, taken from ``events`` in any of the shapes of this module's docstring.

    Raises
    ------
    FeatureError
        ``events`` is not a record of branches; a branch is missing (named, with the
        closest names the events do have first); a branch leads to a record rather
        than to numbers or lists of numbers.
    """
    branches = list(dict.fromkeys(branches))
    if isinstance(events, Mapping):
        return _zip_mapping(events, branches, what)
    structure = _structure(events)
    if not _fields(structure):
        raise FeatureError(
            f"The events are not a record of branches (their type is "
            f"{_describe(structure)}): pass the events themselves (e.g. events, or "
            f"events[mask] after a selection), or a dict of branch name -> array, with the "
            f"branches {what} read: {', '.join(branches)}.")
    columns = {}
    for branch in branches:
        path = branch_path(structure, branch)
        if path is None:
            raise FeatureError(
                f"Branch {branch!r} needed by {what} is missing from the events."
                + did_you_mean(branch, available_branches(structure), "branches"),
                branch=branch)
        value = events
        for field in path:
            value = value[field]
        _check_not_record(_structure(value), branch, path)
        columns[branch] = value
    return _zip(columns, like=events)


def _check_not_record(structure: Any, branch: str, path: tuple[str, ...]) -> None:
    inner = _fields(structure)
    if inner:
        where = ".".join(path)
        raise FeatureError(
            f"Branch {branch!r} is a record in the events (events.{where} has fields "
            f"{', '.join(inner[:8])}{', ...' if len(inner) > 8 else ''}), not numbers or "
            f"lists of numbers; the features must name one of its fields, e.g. "
            f"{branch}_{inner[0]}.", branch=branch)


def _zip_mapping(events: Mapping[str, Any], branches: list[str], what: str) -> Any:
    missing = [b for b in branches if b not in events]
    if missing:
        raise FeatureError(
            f"Branch {missing[0]!r} needed by {what} is missing from the events."
            + did_you_mean(missing[0], [str(k) for k in events], "branches"),
            branch=missing[0])
    for branch in branches:
        _check_not_record(_structure(events[branch]), branch, (branch,))
    columns = {b: events[b] for b in branches}
    kinds = {is_dask_awkward(v) for v in columns.values()}
    if len(kinds) > 1:
        raise FeatureError("The dict of branches mixes dask-awkward and in-memory arrays; "
                           "give all of one kind.")
    return _zip(columns, like=next(iter(columns.values())))


def _zip(columns: dict[str, Any], like: Any) -> Any:
    """One record of the columns, side by side (depth 1: each keeps its own lists)."""
    if is_dask_awkward(like):
        import dask_awkward as dak

        try:
            return dak.zip(columns, depth_limit=1)
        except ValueError as err:
            if "partition" not in str(err).lower():
                raise
            raise FeatureError(
                f"The arrays given for the branches {', '.join(columns)} are not partitioned "
                "alike, so they cannot be lined up event by event: take them all from the "
                f"same events collection ({err}).") from None
    import awkward as ak

    return ak.zip(columns, depth_limit=1)
