"""FeatureSpec: the one object that turns events into a flat float32 matrix.

The same :meth:`FeatureSpec.transform` runs on every partition at training time and on every
request at serving time, so training and serving cannot disagree on the features.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.data.events import is_typetracer
from mlaas_dask.data.multiplicity import DEFAULT_QUANTILE, MAX_OBJECTS, estimate_n
from mlaas_dask.errors import FeatureError, did_you_mean
from mlaas_dask.features import kernels
from mlaas_dask.features.expressions import Expression
from mlaas_dask.features.jagged import (
    fill_slots,
    offsets_and_content,
    order_within_events,
    slots,
)

SPEC_VERSION = 1
#: the file of a model bundle that holds a FeatureSpec
FEATURES_FILE = "features.json"
#: bounds on what a FeatureSpec may describe: matrix columns, characters in a branch or
#: feature name (and objects kept per collection, MAX_OBJECTS, with the estimate of n)
MAX_FEATURES = 50_000
MAX_NAME_LENGTH = 256


@dataclass
class Collection:
    """A jagged collection of objects (jets, muons...) flattened to ``n`` slots per field.

    Parameters
    ----------
    name
        Collection name, e.g. ``"Jet"``; its branches are ``prefix + field``.
    fields
        Fields to use as features, e.g. ``["pt", "eta"]`` for ``Jet_pt``, ``Jet_eta``.
    n
        Number of objects kept per event (the rest are clipped; missing ones are NaN).
        ``None`` means "estimate from a sample of the data" (see :func:`estimate_n`).
    sort_by
        Field (stored or derived) to order objects by before clipping; ``None`` keeps
        the stored order.
    ascending
        Sort direction; the default (``False``) keeps the hardest objects.
    multiplicity
        Add the number of objects in the event (before clipping) as feature ``n<name>``.
    derived
        Per-object fields computed from stored ones, e.g. ``{"pt": "hypot(Px, Py)"}``.
    prefix
        Branch name prefix; defaults to ``name + "_"``.
    quantile
        Multiplicity quantile used when ``n`` is estimated.
    """

    name: str
    fields: list[str]
    n: int | None = None
    sort_by: str | None = None
    ascending: bool = False
    multiplicity: bool = True
    derived: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None
    quantile: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        where = f"Collection {_name(self.name, 'a collection name')!r}"
        _names(self.fields, f"{where}: fields")
        key = f"collections.{self.name}"
        if not self.fields:
            raise FeatureError(f"{where} lists no fields; give at least one.",
                               feature=self.name, key=f"{key}.fields")
        if self.n is not None and (not _is_int(self.n) or not 1 <= self.n <= MAX_OBJECTS):
            raise FeatureError(
                f"{where}: n must be an integer from 1 to {MAX_OBJECTS:,} or 'auto', "
                f"not {self.n!r}.", feature=self.name, key=f"{key}.n")
        if self.sort_by is not None:
            _name(self.sort_by, f"{where}: sort_by")
        if self.prefix is not None and not isinstance(self.prefix, str):
            raise FeatureError(f"{where}: prefix must be a string, not {self.prefix!r}.",
                               feature=self.name, key=f"{key}.prefix")
        for flag in ("ascending", "multiplicity"):
            if not isinstance(getattr(self, flag), bool):
                raise FeatureError(f"{where}: {flag} must be true or false, not "
                                   f"{getattr(self, flag)!r}.", feature=self.name,
                                   key=f"{key}.{flag}")
        if not _is_number(self.quantile) or not 0 < self.quantile <= 1:
            raise FeatureError(
                f"{where}: quantile must be in (0, 1], not {self.quantile!r}.",
                feature=self.name, key=f"{key}.quantile")
        _expressions(self.derived, f"{where}: derived")
        self._derived = {
            key: Expression(text, f"derived field {key!r} of collection {self.name!r}")
            for key, text in self.derived.items()
        }

    @property
    def branch_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"{self.name}_"

    def stored_fields(self) -> list[str]:
        """Fields read from the file: used ones that are not derived, and the derived
        fields' inputs."""
        wanted = [f for f in self.fields if f not in self.derived]
        if self.sort_by is not None and self.sort_by not in self.derived:
            wanted.append(self.sort_by)
        for expression in self._derived.values():
            wanted.extend(sorted(expression.names))
        return list(dict.fromkeys(wanted))

    def branches(self) -> list[str]:
        return [self.branch_prefix + f for f in self.stored_fields()]

    def feature_names(self) -> list[str]:
        if self.n is None:
            raise FeatureError(
                f"Collection {self.name!r} has n: auto and has not been sized yet; call "
                "FeatureSpec.resolve() on a sample of the data first.", feature=self.name,
                key=f"collections.{self.name}.n")
        names = [f"n{self.name}"] if self.multiplicity else []
        for fld in self.fields:
            names.extend(f"{self.name}_{fld}_{i}" for i in range(self.n))
        return names

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fields": list(self.fields),
            "n": self.n if self.n is not None else "auto",
            "sort_by": self.sort_by,
            "ascending": self.ascending,
            "multiplicity": self.multiplicity,
        }
        if self.derived:
            out["derived"] = dict(self.derived)
        if self.prefix is not None:
            out["prefix"] = self.prefix
        if self.n is None or self.quantile != DEFAULT_QUANTILE:
            out["quantile"] = self.quantile
        return out


@dataclass
class FeatureSpec:
    """Events -> float32 matrix: flat branches, jagged collections, derived features.

    Parameters
    ----------
    flat
        Flat (one value per event) branches used as they are.
    collections
        Jagged collections, by name.
    derived
        Event-level features from expressions over branches, in order, e.g.
        ``{"HT": "sum(Jet_pt)", "MET": "hypot(MET_px, MET_py)"}``.

    Examples
    --------
    >>> spec = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=2)})
    >>> spec.feature_names
    ['MET_pt', 'nJet', 'Jet_pt_0', 'Jet_pt_1']
    """

    flat: list[str] = field(default_factory=list)
    collections: dict[str, Collection] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _names(self.flat, "flat")
        _expressions(self.derived, "derived")
        if not isinstance(self.collections, dict) or not all(
                isinstance(c, Collection) for c in self.collections.values()):
            raise FeatureError("collections must map names to collections.")
        self._derived = {
            key: Expression(text, f"derived feature {key!r}") for key, text in self.derived.items()
        }
        if not (self.flat or self.collections or self.derived):
            raise FeatureError(
                "The features block is empty: list flat branches, collections or derived "
                "features (run 'mlaas inspect FILE' for a suggested block)."
            )
        names = self.feature_names if self.is_resolved else []
        if len(names) > MAX_FEATURES:
            raise FeatureError(f"The features make {len(names):,} columns; at most "
                               f"{MAX_FEATURES:,} are allowed. Keep fewer objects per "
                               "collection (n).")
        counts = Counter(names)
        duplicates = sorted(n for n, k in counts.items() if k > 1)
        if duplicates:
            raise FeatureError(f"Feature names appear twice: {', '.join(duplicates)}.")

    # -- description ----------------------------------------------------------------------

    @property
    def is_resolved(self) -> bool:
        """True when every collection has a fixed ``n``."""
        return all(c.n is not None for c in self.collections.values())

    @property
    def feature_names(self) -> list[str]:
        """Column names of the matrix, in order."""
        names = list(self.flat)
        for collection in self.collections.values():
            names.extend(collection.feature_names())
        names.extend(self.derived)
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def flat_branches(self) -> list[str]:
        """Branches used as they are, one value per event."""
        return list(dict.fromkeys(self.flat))

    def derived_branches(self) -> list[str]:
        """Branches read by the event-level derived expressions (flat or jagged)."""
        names = (n for e in self._derived.values() for n in sorted(e.names))
        return list(dict.fromkeys(n for n in names if n not in self.derived))

    def jagged_branches(self) -> list[str]:
        """Branches read as one list per event."""
        return list(dict.fromkeys(b for c in self.collections.values() for b in c.branches()))

    def branches(self) -> list[str]:
        """Every branch :meth:`transform` reads: the column projection of a dataset."""
        return list(dict.fromkeys(
            self.flat_branches() + self.jagged_branches() + self.derived_branches()))

    def check_schema(self, jagged: Mapping[str, bool], where: str = "the data") -> None:
        """Raise :class:`FeatureError` if a flat feature is stored as a list per event, or
        a collection branch as one value per event (``jagged`` maps branch -> is a list)."""
        for name in self.flat_branches():
            if jagged.get(name):
                raise FeatureError(
                    f"Branch {name!r} in {where} is jagged (a list per event) but is used as "
                    f"a flat feature. Put it under 'collections:' instead, e.g. collections: "
                    f"{{{name.split('_')[0]}: {{fields: [{name.partition('_')[2] or name}], "
                    "n: 4}}.", feature=name, branch=name, key="flat")
        for collection in self.collections.values():
            for branch in collection.branches():
                if jagged.get(branch) is False:
                    raise FeatureError(
                        f"Branch {branch!r} of collection {collection.name!r} in {where} is "
                        "flat (one value per event), not a list per event. List it under "
                        "'flat:' instead, or pick the collection's per-object branches.",
                        feature=collection.name, branch=branch)

    # -- sizing -----------------------------------------------------------------------------

    def resolve(self, multiplicities: Mapping[str, np.ndarray]) -> FeatureSpec:
        """A copy whose ``n: auto`` collections are sized from sampled multiplicities.

        ``multiplicities`` maps collection names to per-event object counts from a sample.
        """
        collections = {}
        for name, collection in self.collections.items():
            if collection.n is None:
                counts = multiplicities.get(name)
                if counts is None or len(counts) == 0:
                    raise FeatureError(
                        f"Cannot estimate n for collection {name!r}: no events were sampled.",
                        feature=name, key=f"collections.{name}.n")
                n = estimate_n(counts, collection.quantile)
                collections[name] = dataclasses.replace(collection, n=n)
            else:
                collections[name] = collection
        return FeatureSpec(flat=list(self.flat), collections=collections,
                           derived=dict(self.derived))

    # -- the transformation -----------------------------------------------------------------

    def transform(self, events: Any) -> np.ndarray:
        """The float32 feature matrix of ``events``, one row per event.

        ``events`` is an awkward record array (one partition, or a request turned into
        awkward) or a mapping of branch names to arrays. Missing objects and non-finite
        inputs become NaN, XGBoost's "missing". The matrix is column-major (Fortran order), or
        row-major (C order) where the opt-in compiled kernels write it
        (``MLAAS_KERNELS=numba``, :mod:`mlaas_dask.features.kernels`); the values are
        the same either way.

        On typetracer events (the data-less arrays dask-awkward passes a function to learn
        its output type and the columns it reads) it is :meth:`trace`, so that a
        dask-awkward graph that transforms its partitions reads only :meth:`branches`
        (:func:`mlaas_dask.dak.features_dask` is that graph).
        """
        if is_typetracer(events):
            return self.trace(events)
        return self.transform_with_stats(events)[0]

    def trace(self, events: Any) -> Any:
        """The typetracer of :meth:`transform`'s matrix (unknown length x
        :attr:`n_features`, float32) for typetracer ``events``.

        Touches the data of exactly the branches :meth:`transform` reads, so that
        dask-awkward's column optimisation reads those and no others, and checks them as
        :meth:`transform` does (it runs on length-zero arrays of the same types): a
        missing branch, or a jagged branch used as flat, fails here, before anything is
        computed.
        """
        import awkward as ak

        available = set(_field_names(events))
        zero = {b: ak.typetracer.length_zero_if_typetracer(events[b])
                for b in self.branches() if b in available}
        if len(zero) < len(self.branches()):
            zero.update({b: None for b in available if b not in zero})  # for the hint
        matrix = self.transform_with_stats(zero)[0]
        return ak.Array(ak.to_layout(matrix).to_typetracer(forget_length=True))

    def transform_with_stats(
        self, events: Any, keep: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, int]]:
        """:meth:`transform`, plus the number of non-finite input values per branch.

        ``keep``, when given, are the indices of the events to transform, in the order of
        the output rows (row ``i`` is event ``keep[i]``): a selection cut and a reordering
        (e.g. by split) done in the same pass, without copying the events or the matrix.
        Non-finite values are counted in the kept events only.
        """
        if not self.is_resolved:
            _ = self.feature_names  # raises the explanation
        available = _field_names(events)
        missing = [b for b in self.branches() if b not in available]
        if missing:
            raise FeatureError(
                f"Branch {missing[0]!r} needed by the features is missing from the events."
                + did_you_mean(missing[0], available, "branches"), branch=missing[0])
        n_events = _length(events)
        selection = _Selection(keep, n_events)
        compiled = kernels.usable(selection.size)
        # compiled kernels write whole rows (row-major); the numpy path writes every
        # column in one contiguous pass (column-major; each one in full: no NaN prefill)
        out = kernels.kept_matrix(selection.size, self.n_features, "C" if compiled else "F")
        nonfinite: dict[str, int] = {}
        column = 0
        if compiled:
            flat = [_flat_values(events[name], name) for name in self.flat]
            for name, values in zip(self.flat, flat, strict=True):
                _count_nonfinite(values, name, nonfinite, selection=selection)
            kernels.fill_flat(out, column, selection.keep, flat)
            column += len(flat)
        else:
            for name in self.flat:
                values = selection.take(_flat_values(events[name], name))
                _count_nonfinite(values, name, nonfinite)
                out[:, column] = values
                column += 1
        for collection in self.collections.values():
            column = self._fill_collection(events, collection, out, column, nonfinite,
                                           selection, compiled)
        if self._derived:
            namespace = _LazyNamespace(events)
            for name, expression in self._derived.items():
                value = _as_column(expression(namespace), n_events, f"derived feature {name!r}")
                namespace[name] = value
                value = selection.take(value)
                _count_nonfinite(value, f"{name} (derived)", nonfinite)
                infinite = np.isinf(value)
                if infinite.any():
                    value = np.where(infinite, np.float32(np.nan), value)
                out[:, column] = value
                column += 1
        if nonfinite:
            out[np.isinf(out)] = np.nan
        return out, nonfinite

    def _fill_collection(
        self, events: Any, collection: Collection, out: np.ndarray, column: int,
        nonfinite: dict[str, int], selection: _Selection, compiled: bool = False,
    ) -> int:
        assert collection.n is not None
        stored: dict[str, np.ndarray] = {}
        offsets = None
        reference = None
        for fld, branch in zip(collection.stored_fields(), collection.branches(), strict=True):
            parts = offsets_and_content(events[branch])
            if parts is None:
                raise _not_jagged(events[branch], branch, collection.name)
            these_offsets, content = parts
            if offsets is None:
                offsets, reference = these_offsets, branch
            elif not _same_counts(offsets, these_offsets):
                raise FeatureError(
                    f"Branches {reference!r} and {branch!r} of collection "
                    f"{collection.name!r} have different numbers of objects per event; a "
                    "collection's branches must share one counter.",
                    feature=collection.name, branch=branch)
            # re-base onto the first field's offsets so every field shares one index
            stored[fld] = content[these_offsets[0]:these_offsets[-1]]
        assert offsets is not None
        offsets = offsets - offsets[0]
        for fld, branch in zip(collection.stored_fields(), collection.branches(), strict=True):
            _count_nonfinite(stored[fld], branch, nonfinite, lambda: selection.objects(offsets))
        values: dict[str, np.ndarray] = dict(stored)
        for key, expression in collection._derived.items():
            values[key] = np.asarray(expression(stored), dtype=np.float64)
            # NaN / inf made by the expression itself (log of a negative), named as the
            # feature: the input branches were counted above
            _count_nonfinite(values[key], f"{collection.name}_{key} (derived)", nonfinite,
                             lambda: selection.objects(offsets))
        order = None
        if collection.sort_by is not None:
            if collection.sort_by not in values:
                raise FeatureError(
                    f"Collection {collection.name!r} is sorted by {collection.sort_by!r}, "
                    f"which is neither a stored nor a derived field."
                    + did_you_mean(collection.sort_by, values, "fields"),
                    feature=collection.name, key=f"collections.{collection.name}.sort_by")
            order = order_within_events(
                offsets, values[collection.sort_by], descending=not collection.ascending
            )
        if compiled:
            kernels.fill_collection(out, column, selection.keep, offsets, collection.n,
                                    collection.multiplicity, order,
                                    [values[fld] for fld in collection.fields])
            return column + collection.multiplicity + collection.n * len(collection.fields)
        if collection.multiplicity:
            out[:, column] = selection.take(np.diff(offsets))
            column += 1
        where = slots(offsets, collection.n, order, selection.keep)
        for fld in collection.fields:
            fill_slots(out, column, where, values[fld])
            column += collection.n
        return column

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": SPEC_VERSION, "flat": list(self.flat)}
        out["collections"] = {k: c.to_dict() for k, c in self.collections.items()}
        out["derived"] = dict(self.derived)
        if self.is_resolved:
            out["feature_names"] = self.feature_names
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Build from the dict form (a job's ``features:`` block or ``features.json``).

        Every value is checked (types, bounds, expressions), so a file from elsewhere
        cannot make :meth:`transform` slow, huge or wrong.
        """
        if not isinstance(data, Mapping):
            raise FeatureError(f"The features must be a mapping, not {type(data).__name__}.")
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise FeatureError(f"The features have unknown keys {unknown}; allowed: "
                               f"{', '.join(sorted(_SPEC_KEYS))}.", key=str(unknown[0]))
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise FeatureError(
                f"{FEATURES_FILE} has version {version!r}; this mlaas_dask reads version "
                f"{SPEC_VERSION}. Retrain the model or upgrade mlaas_dask.", key="version")
        collections = {}
        blocks = data.get("collections") or {}
        if not isinstance(blocks, Mapping):
            raise FeatureError("collections must map collection names to their settings.",
                               key="collections")
        for name, block in blocks.items():
            if not isinstance(block, Mapping):
                raise FeatureError(f"Collection {name!r} must be a mapping of settings, not "
                                   f"{type(block).__name__}.", feature=str(name),
                                   key=f"collections.{name}")
            unknown = sorted(set(block) - _COLLECTION_KEYS)
            if unknown:
                raise FeatureError(f"Collection {name!r} has unknown keys {unknown}; allowed: "
                                   f"{', '.join(sorted(_COLLECTION_KEYS))}.", feature=str(name),
                                   key=f"collections.{name}.{unknown[0]}")
            spec = dict(block)
            n = spec.pop("n", "auto")
            collections[name] = Collection(
                name=name, n=None if n in (None, "auto") else n, **spec
            )
        built = cls(
            flat=_listed(data.get("flat"), "flat"),
            collections=collections,
            derived=_mapped(data.get("derived"), "derived"),
        )
        stated = data.get("feature_names")
        if stated is not None and built.is_resolved and stated != built.feature_names:
            raise FeatureError("feature_names does not match the features described "
                               "(flat, collections, derived); the file was edited or is "
                               "corrupt.", key="feature_names")
        return built

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Build from ``features.json`` text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise FeatureError(f"The features are not valid JSON: {err}") from None
        return cls.from_dict(data)


#: top-level keys of the dict form, and of one collection
_SPEC_KEYS = {"version", "flat", "collections", "derived", "feature_names"}
_COLLECTION_KEYS = {"fields", "n", "sort_by", "ascending", "multiplicity", "derived",
                    "prefix", "quantile"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH \
            or not value.isprintable():
        raise FeatureError(f"{what} must be a name of 1 to {MAX_NAME_LENGTH} printable "
                           f"characters, not {_clip(value)}.")
    return value


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _names(values: Any, what: str) -> None:
    if not isinstance(values, list):
        raise FeatureError(f"{what} must be a list of names, not {type(values).__name__}.")
    for value in values:
        _name(value, f"An entry of {what}")


def _expressions(values: Any, what: str) -> None:
    if not isinstance(values, dict):
        raise FeatureError(f"{what} must map names to expressions, not "
                           f"{type(values).__name__}.")
    for key in values:
        _name(key, f"A name in {what}")


def _listed(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FeatureError(f"{what} must be a list, not {type(value).__name__} {_clip(value)}.")
    return list(value)


def _mapped(value: Any, what: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FeatureError(f"{what} must be a mapping, not {type(value).__name__}.")
    return dict(value)


# -- helpers ------------------------------------------------------------------------------


class _LazyNamespace(dict[str, Any]):
    """Branch lookup for derived expressions: flat branches as numpy, jagged as awkward."""

    def __init__(self, events: Any) -> None:
        super().__init__()
        self.events = events
        self._names = set(_field_names(events))

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._names

    def keys(self) -> set[str]:  # type: ignore[override]
        return set(dict.keys(self)) | self._names

    def __missing__(self, key: str) -> Any:
        value = self.events[key]
        if offsets_and_content(value) is None:
            value = _flat_values(value, key)
        self[key] = value
        return value


def _field_names(events: Any) -> list[str]:
    fields = getattr(events, "fields", None)
    if fields is not None:
        return list(fields)
    return list(events.keys())


def _length(events: Any) -> int:
    if hasattr(events, "fields"):
        return len(events)
    for value in events.values():
        return len(value)
    return 0


def _type_name(array: Any) -> str:
    try:
        import awkward as ak

        return str(ak.type(array).content)
    except Exception:  # noqa: BLE001 - only for a message
        return type(array).__name__


def _not_jagged(array: Any, branch: str, collection: str) -> FeatureError:
    kind = _type_name(array)
    if kind.startswith(("var *", "option[var", "?var")) or kind[:1].isdigit():
        return FeatureError(
            f"Branch {branch!r} of collection {collection!r} is a list per event but not of "
            f"numbers (type {kind}); a collection field needs one number per object.",
            feature=collection, branch=branch)
    return FeatureError(
        f"Branch {branch!r} of collection {collection!r} is not jagged (one value per "
        f"event, type {kind}). List it under 'flat:' instead, or pick the collection's "
        "per-object branches.", feature=collection, branch=branch)


def _flat_values(array: Any, name: str) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.ndim == 1:
        return array
    if offsets_and_content(array) is not None:
        raise FeatureError(
            f"Branch {name!r} is jagged (a list per event, type {_type_name(array)}) but is "
            f"used as a flat feature. Put its collection under 'collections:' instead, e.g. "
            f"collections: {{{name.partition('_')[0]}: "
            f"{{fields: [{name.partition('_')[2] or name}], n: 4}}}}.", feature=name, branch=name)
    import awkward as ak

    try:
        values = ak.to_numpy(ak.fill_none(array, np.nan), allow_missing=False)
    except (ValueError, TypeError) as err:
        raise FeatureError(
            f"Branch {name!r} cannot be used as a number per event: {err}", feature=name,
            branch=name) from None
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        raise FeatureError(
            f"Branch {name!r} has type {_type_name(array)}; a flat feature needs one number "
            "per event.", feature=name, branch=name)
    return values


def _as_column(value: Any, n_events: int, what: str) -> np.ndarray:
    import awkward as ak

    if np.isscalar(value):
        return np.full(n_events, value, dtype=np.float32)
    if not isinstance(value, np.ndarray):
        if offsets_and_content(value) is not None:
            raise FeatureError(
                f"The {what} gives a list per event; reduce it to one number per event with "
                "sum(), max(), min(), mean() or count()."
            )
        value = ak.to_numpy(ak.fill_none(value, np.nan))
    return np.asarray(value, dtype=np.float32)


class _Selection:
    """The events a transform keeps, in output order (all of them when ``keep`` is None)."""

    def __init__(self, keep: np.ndarray | None, n_events: int) -> None:
        self.keep = None if keep is None else np.asarray(keep, dtype=np.intp)
        self.n_events = n_events
        self.size = n_events if keep is None else len(keep)

    def take(self, values: np.ndarray) -> np.ndarray:
        """Per-event ``values`` of the kept events."""
        return values if self.keep is None else values[self.keep]

    def objects(self, offsets: np.ndarray) -> np.ndarray | None:
        """A mask of the objects that belong to kept events (None: all of them)."""
        if self.keep is None:
            return None
        kept = np.zeros(self.n_events, dtype=bool)
        kept[self.keep] = True
        return np.repeat(kept, np.diff(offsets))


def _count_nonfinite(values: np.ndarray, name: str, counts: dict[str, int],
                     kept: Callable[[], np.ndarray | None] | None = None,
                     selection: _Selection | None = None) -> None:
    """Add the number of NaN / inf in ``values`` to ``counts[name]`` (a cheap sum first:
    it is finite when every value is, which is nearly always). ``kept`` gives a mask of
    the values to count, only computed when there is something to count; ``selection``
    the per-event values to count (:meth:`_Selection.take`), likewise."""
    if values.dtype.kind != "f" or values.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):
            return
    mask = kept() if kept is not None else None
    if mask is not None:
        values = values[mask]
    if selection is not None:
        values = selection.take(values)
    count = int(values.size - np.count_nonzero(np.isfinite(values)))
    if count:
        counts[name] = counts.get(name, 0) + count


def _same_counts(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a[0] == b[0]:
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(np.diff(a), np.diff(b)))
