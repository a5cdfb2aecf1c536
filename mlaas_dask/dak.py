"""Lazy scoring of dask-awkward collections: a bundle inside the physicist's analysis.

::

    events = uproot.dask({"ttbar.root": "Events"})        # or coffea NanoEvents
    selected = events[events.MET_pt > 20]                  # the user's own selection
    scores = ModelBundle.load("bundle").predict_dask(selected)   # lazy: nothing read yet
    dak.necessary_columns(scores)   # the selection's branches + the features' branches
    histogram(scores.compute())

:func:`predict_dask` returns a dask-awkward array with one score per event (float32; for
a multi-class bundle a record with one field per class, named by the classes). Nothing
is computed: the bundle's FeatureSpec runs on dask-awkward's typetracers
(:meth:`FeatureSpec.trace`), touching only the branches it reads, so column optimisation
reads those (and the selection's) and no others. Events may be a flat record of branches
(``uproot.dask``), NanoEvents-style records (``events.Jet.pt`` for ``Jet_pt``) or a dict
of branch name -> array (see :mod:`mlaas_dask.data.events`).

Every partition is scored by the same code as ``mlaas predict`` and the server
(:meth:`FeatureSpec.transform`, then :meth:`ModelBundle.predict_matrix`), so the scores are
the same. Empty partitions and partitions of unknown length (after a selection) are
scored like any other.

The model is loaded once per worker process, not once per partition: the tasks carry the
bundle's files (a few hundred kB for XGBoost) and the digest of their content, and each
process keeps the bundles it has loaded by digest (:func:`loaded_bundles`), so later
partitions, and later graphs scoring with the same bundle, reuse the loaded model.

This path reads through ``uproot.dask`` as the user set it up (no retries or redirector
fallbacks: those are the job path's, :mod:`mlaas_dask.predict`). One thing it does change
in the processes that score: uproot inflates ZLIB baskets with ISA-L there, as the job
path does (:mod:`mlaas_dask.data.decompression`: the same arrays, about 1.5x faster).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.bundle import WEIGHTS_FILE, ModelBundle
from mlaas_dask.data.events import is_dask_awkward, is_typetracer, select_branches
from mlaas_dask.errors import BundleError, FeatureError

logger = logging.getLogger(__name__)

#: digest -> the bundle loaded in this process
_LOADED: dict[str, ModelBundle] = {}
#: digest -> how many times this process loaded it (once, unless it was evicted)
_LOADS: dict[str, int] = {}
_LOCK = threading.Lock()
#: bundles kept loaded per process (the least recently used goes first)
MAX_LOADED = 8
#: bundle files a task need not carry (plots, and a network's weights kept for further
#: training: model.onnx holds them for scoring)
_NOT_FOR_SCORING = {WEIGHTS_FILE}


@dataclass(frozen=True)
class BundleRef:
    """A bundle as a task carries it: its files and their digest (never a pickle of the
    model: the worker loads the files with :meth:`ModelBundle.load`'s checks)."""

    digest: str
    files: tuple[tuple[str, bytes], ...]
    archive: bool
    trusted_types: tuple[str, ...] = ()
    name: str = field(default="bundle", compare=False)

    @classmethod
    def of(cls, bundle: ModelBundle, trusted_types: Sequence[str] = ()) -> BundleRef:
        """The reference of a bundle loaded from ``bundle.path`` (a folder or .tar.gz)."""
        path = Path(bundle.path)
        if path.is_file():
            files: tuple[tuple[str, bytes], ...] = (("bundle.tar.gz", path.read_bytes()),)
            archive = True
        elif path.is_dir():
            files = tuple((p.name, p.read_bytes()) for p in sorted(path.iterdir())
                          if p.is_file() and not p.name.startswith(".")
                          and p.name not in _NOT_FOR_SCORING and p.suffix != ".png")
            archive = False
        else:
            raise BundleError(f"Model bundle {path} is not on disk any more; lazy scoring "
                              "sends the bundle's files to the workers. Load the bundle "
                              "from its folder or .tar.gz.", bundle=str(path))
        digest = hashlib.sha256()
        for name, data in files:
            digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        digest.update(repr(sorted(trusted_types)).encode())
        return cls(digest.hexdigest(), files, archive, tuple(trusted_types), str(path))

    def load(self) -> ModelBundle:
        """The bundle, loaded once per process (then taken from this process's cache)."""
        with _LOCK:
            bundle = _LOADED.pop(self.digest, None)
            if bundle is None:
                bundle = self._load_files()
                _LOADS[self.digest] = _LOADS.get(self.digest, 0) + 1
            _LOADED[self.digest] = bundle  # most recently used last
            while len(_LOADED) > MAX_LOADED:
                _LOADED.pop(next(iter(_LOADED)))
            return bundle

    def _load_files(self) -> ModelBundle:
        with tempfile.TemporaryDirectory(prefix="mlaas-dak-") as folder:
            for name, data in self.files:
                (Path(folder) / os.path.basename(name)).write_bytes(data)
            target = Path(folder) / self.files[0][0] if self.archive else Path(folder)
            try:
                bundle = ModelBundle.load(target, trusted_types=self.trusted_types)
            except BundleError as err:
                raise BundleError(str(err).replace(str(target), self.name),
                                  bundle=self.name) from None
        bundle.path = Path(self.name)
        return bundle

    def remember(self, bundle: ModelBundle) -> None:
        """Keep an already loaded bundle (the caller's own) under this digest, so that
        scoring in this process (e.g. dask's local schedulers) does not load it again."""
        with _LOCK:
            _LOADED.setdefault(self.digest, bundle)


def loaded_bundles() -> dict[str, int]:
    """Digest -> how many times this process has loaded that bundle (run it on the
    workers with ``client.run`` to see that each loaded it once)."""
    with _LOCK:
        return dict(_LOADS)


class _Score:
    """The function every partition is scored with (and traced with, on typetracers)."""

    def __init__(self, ref: BundleRef, spec: Any, classes: list[str]) -> None:
        self.ref, self.spec, self.classes = ref, spec, classes

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled on a worker with its task, before the partition is read (dask-awkward
        # fuses the read and the scoring into one task): uproot there inflates ZLIB
        # baskets with ISA-L from now on, as the job path does (the same bytes, faster)
        from mlaas_dask.data.decompression import use_fastest_zlib

        use_fastest_zlib()
        self.__dict__.update(state)

    def __call__(self, events: Any) -> Any:
        if is_typetracer(events):
            self.spec.trace(events)  # touches exactly the branches the features read
            return _as_typetracer(_output(np.zeros((0, len(self.classes)), np.float32),
                                          self.classes))
        bundle = self.ref.load()
        return _output(bundle.predict_events(events), self.classes)

    def __repr__(self) -> str:  # task names and logs: no payload
        return f"score({self.ref.name})"


def _output(scores: np.ndarray, classes: list[str]) -> Any:
    import awkward as ak

    scores = np.asarray(scores, dtype=np.float32)
    if len(classes) == 2:
        return ak.Array(np.ascontiguousarray(scores if scores.ndim == 1 else scores[:, -1]))
    return ak.zip({name: np.ascontiguousarray(scores[:, i]) for i, name in enumerate(classes)})


def _as_typetracer(array: Any) -> Any:
    import awkward as ak

    return ak.Array(array.layout.to_typetracer(forget_length=True))


def predict_dask(bundle: ModelBundle | str | os.PathLike[str], events: Any, *,
                 trusted_types: Sequence[str] = ()) -> Any:
    """Lazy scores of a dask-awkward collection (see the module docstring).

    Parameters
    ----------
    bundle
        A loaded :class:`ModelBundle` (from a folder or .tar.gz still on disk), or its path.
    events
        A dask-awkward array of events: ``uproot.dask`` records, NanoEvents-style records,
        after any selection; or a dict of branch name -> dask-awkward array.
    trusted_types
        Extra types the workers may load from a scikit-learn bundle, as for
        :meth:`ModelBundle.load`.

    Returns
    -------
    dask_awkward.Array
        One float32 score per event (binary), or a record with one field per class.

    Raises
    ------
    FeatureError
        When the events cannot give the features (a missing branch, named with the
        closest names; a jagged branch used as flat or the reverse; a structure that is
        not a record of branches) -- raised here, before anything is computed.
    """
    import dask_awkward as dak

    model = bundle if isinstance(bundle, ModelBundle) else ModelBundle.load(
        bundle, trusted_types=trusted_types)
    if not (is_dask_awkward(events) or (isinstance(events, dict) and events and all(
            is_dask_awkward(v) for v in events.values()))):
        raise FeatureError(
            f"predict_dask scores dask-awkward collections (e.g. uproot.dask or coffea "
            f"NanoEvents), not {type(events).__name__}; for arrays in memory use "
            "ModelBundle.predict_events.")
    what = f"the features of bundle {model.path}"
    selected = select_branches(events, model.spec.branches(), what)
    model.spec.trace(selected._meta)  # every mismatch raised now, not at compute time
    ref = BundleRef.of(model, trusted_types)
    ref.remember(model)
    scorer = _Score(ref, model.spec, list(model.classes))
    meta = scorer(selected._meta)
    return dak.map_partitions(scorer, selected, label="mlaas-score", meta=meta)


class _Features:
    """The function every partition is turned into features with."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, events: Any) -> Any:
        import awkward as ak

        matrix = self.spec.transform(events)  # a typetracer when events are one
        return matrix if is_typetracer(events) else ak.Array(np.ascontiguousarray(matrix))


def features_dask(spec: Any, events: Any) -> Any:
    """The lazy feature matrix of a dask-awkward collection: one row of
    ``spec.n_features`` float32 per event (NaN for missing objects), as
    :meth:`FeatureSpec.transform` makes it, reading only ``spec.branches()``.

    ``spec`` is a :class:`~mlaas_dask.features.FeatureSpec` or a :class:`ModelBundle`
    (its spec); ``events`` as for :func:`predict_dask`.
    """
    import dask_awkward as dak

    spec = spec.spec if isinstance(spec, ModelBundle) else spec
    selected = select_branches(events, spec.branches())
    function = _Features(spec)
    return dak.map_partitions(function, selected, label="mlaas-features",
                              meta=function(selected._meta))
