"""Generated NanoAOD-style sample data: a signal and a background class in ROOT files.

The events are a toy, but a physically plausible one, so that examples, tests and
benchmarks exercise the same paths as real CMS NanoAOD:

- ``signal`` mixes ttH- and ttbar-like events: many jets, several of them b-tagged, hard
  jets, an isolated lepton and genuine missing transverse momentum from neutrinos;
- ``background`` mixes W+jets-like events (few jets, a lepton, a neutrino) and QCD-like
  multi-jet events (light jets, rarely a lepton, MET from resolution only).

The two classes overlap on every variable, so a classifier reaches a good but imperfect
separation (XGBoost on the jet, lepton and MET features: ROC AUC about 0.88).

Branches follow NanoAOD: ``run``, ``luminosityBlock``, ``event``; counter ``nJet`` with
``Jet_pt``, ``Jet_eta``, ``Jet_phi``, ``Jet_mass``, ``Jet_btagDeepB`` (objects sorted by
falling pt); ``nMuon`` / ``nElectron`` with ``_pt``, ``_eta``, ``_phi``, ``_charge``; flat
``MET_pt``, ``MET_phi``, ``PV_npvs`` and ``genWeight``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.errors import DataError, MlaasError, did_you_mean

TREE_NAME = "Events"
CLASSES = ("signal", "background")
#: how the events are stored: a TTree, or an RNTuple (collections as fields ``Jet.pt``...,
#: read back under the same branch names)
FORMATS = ("ttree", "rntuple")
#: events per ``TTree.extend`` call (one basket per branch); also the unit of the random
#: streams, so the content of a file depends only on the seed and the event counts.
CHUNK_EVENTS = 100_000
#: ROOT's default level for each algorithm, used when the level is not given.
DEFAULT_LEVELS = {"zlib": 1, "lzma": 7, "lz4": 4, "zstd": 5}
MAX_LEVELS = {"zlib": 9, "lzma": 9, "lz4": 12, "zstd": 22}
COMPRESSION_HELP = (
    "Use 'none' or ALGORITHM:LEVEL with ALGORITHM one of zlib, lzma, lz4, zstd "
    "(e.g. zlib:4, lz4:1, zstd:5)."
)

_JET_PT_MIN = 20.0
_LEPTON_PT_MIN = 10.0
_JET_ETA_MAX = 4.7
_MUON_ETA_MAX = 2.4
_ELECTRON_ETA_MAX = 2.5
_LUMI_BLOCK_EVENTS = 2000
#: jet flavour -> (a, b) of the beta distribution of the b-tag discriminant
_BTAG_BETA = {"b": (3.0, 1.5), "c": (1.5, 3.0), "light": (0.6, 6.0)}


@dataclass(frozen=True)
class _Process:
    """Kinematics of one physics process."""

    jets_min: int
    jets_extra: float
    jet_pt_index: float
    jet_eta_sigma: float
    b_fraction: float
    c_fraction: float
    leptons: tuple[float, float, float]
    lepton_pt_scale: float
    neutrino_probability: float
    neutrino_pt_scale: float


_PROCESSES = {
    "ttH": _Process(3, 2.5, 2.4, 1.3, 0.35, 0.10, (0.35, 0.55, 0.10), 40.0, 0.90, 55.0),
    "ttbar": _Process(2, 2.2, 2.6, 1.3, 0.25, 0.10, (0.35, 0.55, 0.10), 40.0, 0.90, 55.0),
    "wjets": _Process(1, 1.5, 3.0, 1.6, 0.06, 0.10, (0.15, 0.80, 0.05), 32.0, 0.90, 40.0),
    "qcd": _Process(2, 2.2, 2.8, 1.7, 0.10, 0.12, (0.85, 0.14, 0.01), 15.0, 0.10, 15.0),
}
#: per-event value of a :class:`_Process` attribute
_Parameter = Callable[[str], np.ndarray]
#: class -> (process, fraction of the class)
_MIXTURES = {
    "signal": (("ttH", 0.4), ("ttbar", 0.6)),
    "background": (("wjets", 0.6), ("qcd", 0.4)),
}


def parse_compression(text: str) -> Any:
    """The uproot compression object for ``none`` or ``ALGORITHM[:LEVEL]``.

    Parameters
    ----------
    text
        ``"none"``, or one of ``zlib``, ``lzma``, ``lz4``, ``zstd`` optionally followed by
        ``:LEVEL`` (1-9 for zlib and lzma, 1-12 for lz4, 1-22 for zstd); without a level,
        ROOT's default for that algorithm is used.

    Returns
    -------
    uproot.compression.Compression or None
        ``None`` means uncompressed.

    Raises
    ------
    MlaasError
        For an unknown algorithm or a level out of range.
    """
    import uproot

    spec = str(text).strip().lower()
    if spec in ("none", "0", ""):
        return None
    algorithm, _, level_text = spec.partition(":")
    if algorithm not in DEFAULT_LEVELS:
        raise MlaasError(
            f"Unknown compression {text!r}."
            + did_you_mean(algorithm, ["none", *DEFAULT_LEVELS], "algorithms")
            + " "
            + COMPRESSION_HELP
        )
    try:
        level = int(level_text) if level_text else DEFAULT_LEVELS[algorithm]
    except ValueError:
        raise MlaasError(
            f"Compression {text!r} has a level that is not a whole number. {COMPRESSION_HELP}"
        ) from None
    if not 1 <= level <= MAX_LEVELS[algorithm]:
        raise MlaasError(
            f"Compression {text!r}: the {algorithm} level must be between 1 and "
            f"{MAX_LEVELS[algorithm]}, or use 'none' for no compression."
        )
    return getattr(uproot, algorithm.upper())(level)


def sample_paths(out_dir: str | Path, files_per_class: int = 1) -> dict[str, list[Path]]:
    """The files :func:`generate_sample` writes: ``signal.root`` and ``background.root``,
    or ``signal_000.root``, ``signal_001.root``, ... when ``files_per_class > 1``."""
    out = Path(out_dir)
    if files_per_class == 1:
        return {name: [out / f"{name}.root"] for name in CLASSES}
    return {
        name: [out / f"{name}_{i:03d}.root" for i in range(files_per_class)] for name in CLASSES
    }


def generate_sample(
    out_dir: str | Path,
    events: int,
    *,
    seed: int = 0,
    compression: str = "zlib:4",
    files_per_class: int = 1,
    signal_fraction: float = 0.5,
    overwrite: bool = False,
    format: str = "ttree",  # noqa: A002 - the name of the CLI option
) -> dict[str, list[Path]]:
    """Write a signal and a background sample as NanoAOD-style ROOT files.

    Each file holds one TTree (or RNTuple) named ``Events`` (see the module docstring for
    its branches).
    Files are written under hidden temporary names and renamed only when all of them are
    complete, so a failed or interrupted run leaves no complete-looking file behind.

    Parameters
    ----------
    out_dir
        Directory for the files; created if needed.
    events
        Total number of events, both classes together.
    seed
        Random seed; the same arguments give the same events.
    compression
        ``none`` or ``ALGORITHM:LEVEL`` (see :func:`parse_compression`).
    files_per_class
        Files per class; each class's events are split evenly between its files.
    signal_fraction
        Fraction of ``events`` that are signal.
    overwrite
        Replace existing files instead of refusing to touch them.
    format
        ``ttree`` or ``rntuple`` (the same events; an RNTuple's collections are fields
        ``Jet`` with subfields ``pt``... that datasets read as ``nJet``, ``Jet_pt``...).

    Returns
    -------
    dict
        ``{"signal": [paths], "background": [paths]}``.

    Raises
    ------
    MlaasError
        For invalid arguments, or when a file exists and ``overwrite`` is false.
    """
    codec = parse_compression(compression)
    if format not in FORMATS:
        raise MlaasError(f"Unknown sample format {format!r}."
                         + did_you_mean(str(format), FORMATS, "formats")
                         + f" Use one of {', '.join(FORMATS)}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MlaasError(f"The seed must be a non-negative whole number, not {seed!r}.")
    counts = event_counts(events, signal_fraction, files_per_class)
    paths = sample_paths(out_dir, files_per_class)
    _check_targets(paths, overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = []
    for class_id, name in enumerate(CLASSES):
        first = 0
        for file_index, (path, n) in enumerate(zip(paths[name], counts[name], strict=True)):
            jobs.append((path, name, class_id, file_index, n, first))
            first += n
    _write_all(jobs, codec, int(seed), format)
    return paths


# -- arguments ----------------------------------------------------------------------------


def event_counts(events: int, signal_fraction: float = 0.5,
                 files_per_class: int = 1) -> dict[str, list[int]]:
    """Events in each file :func:`generate_sample` writes, per class, in file order.

    Raises
    ------
    MlaasError
        For a non-positive ``events`` or ``files_per_class``, or a fraction outside [0, 1].
    """
    if isinstance(events, bool) or not isinstance(events, int | np.integer) or events < 1:
        raise MlaasError(f"The number of events must be a positive whole number, not {events!r}.")
    if (isinstance(files_per_class, bool) or not isinstance(files_per_class, int | np.integer)
            or files_per_class < 1):
        raise MlaasError(
            f"files_per_class must be a positive whole number, not {files_per_class!r}."
        )
    if not isinstance(signal_fraction, int | float) or not 0.0 <= signal_fraction <= 1.0:
        raise MlaasError(f"signal_fraction must be between 0 and 1, not {signal_fraction!r}.")
    n_signal = round(int(events) * float(signal_fraction))
    totals = {"signal": n_signal, "background": int(events) - n_signal}
    return {name: _split(total, int(files_per_class)) for name, total in totals.items()}


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _check_targets(paths: dict[str, list[Path]], overwrite: bool) -> None:
    for path in (p for group in paths.values() for p in group):
        if path.is_dir():
            raise DataError(f"Cannot write {path}: a directory of that name exists.",
                            file=str(path))
        if path.exists() and not overwrite:
            raise DataError(
                f"{path} already exists; nothing was written. Pass --overwrite "
                "(overwrite=True) to replace it, or choose another --out directory.",
                file=str(path))


# -- writing ------------------------------------------------------------------------------


def _branch_types() -> dict[str, Any]:
    lepton = "var * {pt: float32, eta: float32, phi: float32, charge: int32}"
    return {
        "run": np.uint32,
        "luminosityBlock": np.uint32,
        "event": np.uint64,
        "Jet": "var * {pt: float32, eta: float32, phi: float32, mass: float32, "
        "btagDeepB: float32}",
        "Muon": lepton,
        "Electron": lepton,
        "MET_pt": np.float32,
        "MET_phi": np.float32,
        "PV_npvs": np.int32,
        "genWeight": np.float32,
    }


class _Cancelled(Exception):
    """Another file of the same sample failed or the run was interrupted."""


def _write_all(jobs: list[tuple[Any, ...]], codec: Any, seed: int,
               format: str = "ttree") -> None:  # noqa: A002
    """Write every file under a temporary name, then rename them all: a failure or an
    interruption leaves none of the sample's files behind, and none half-written.

    Files are written by threads (compression releases the GIL, so they use every core).
    """
    cancel = threading.Event()
    temporaries = [_temporary_name(job[0]) for job in jobs]

    def write(temporary: Path, name: str, class_id: int, file_index: int, n: int,
              first: int) -> None:
        chunks = _chunks(name, class_id, file_index, n, first, seed)
        _write_file(temporary, chunks, codec, f"mlaas_dask sample: {name}", cancel, format)

    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlaas-sample") as pool:
            futures = [pool.submit(write, temporary, *job[1:])
                       for temporary, job in zip(temporaries, jobs, strict=True)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                cancel.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                raise
        for temporary, job in zip(temporaries, jobs, strict=True):
            os.replace(temporary, job[0])
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def _temporary_name(path: Path) -> Path:
    """A hidden name in the same directory, which no ``*.root`` glob matches."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _write_file(path: Path, chunks: Iterator[dict[str, Any]], codec: Any, title: str,
                cancel: threading.Event, format: str = "ttree") -> None:  # noqa: A002
    import uproot

    with uproot.recreate(path, compression=codec) as file:
        tree = None
        for chunk in chunks:
            if cancel.is_set():
                raise _Cancelled(path)
            if tree is None and format == "rntuple":  # its fields' types from the data
                tree = file.mkrntuple(TREE_NAME, chunk, description=title)
                continue
            if tree is None:
                tree = file.mktree(TREE_NAME, _branch_types(), title=title)
            tree.extend(chunk)


def _chunks(name: str, class_id: int, file_index: int, n_events: int, first: int,
            seed: int) -> Iterator[dict[str, Any]]:
    """Chunks of one file; ``first`` is the index of its first event within the class. An
    empty file has one empty chunk (an RNTuple takes its fields' types from the data)."""
    for chunk_index, start in enumerate(range(0, max(n_events, 1), CHUNK_EVENTS)):
        size = min(CHUNK_EVENTS, n_events - start)
        rng = np.random.default_rng([seed, class_id, file_index, chunk_index])
        yield _as_branches(_generate_events(rng, name, size), class_id, first + start)


def _as_branches(columns: dict[str, Any], class_id: int, first: int) -> dict[str, Any]:
    import awkward as ak

    n = len(columns["MET_pt"])
    index = np.arange(first, first + n, dtype=np.uint64)
    # classes interleave in event number, so ids carry no class information
    event = index * np.uint64(2) + np.uint64(class_id + 1)
    out: dict[str, Any] = {
        "run": np.ones(n, dtype=np.uint32),
        "luminosityBlock": ((event - np.uint64(1)) // np.uint64(_LUMI_BLOCK_EVENTS)
                            + np.uint64(1)).astype(np.uint32),
        "event": event,
    }
    for collection in ("Jet", "Muon", "Electron"):
        offsets, fields = columns.pop(collection)
        record = ak.contents.RecordArray(
            [ak.contents.NumpyArray(v) for v in fields.values()], list(fields)
        )
        out[collection] = ak.Array(
            ak.contents.ListOffsetArray(ak.index.Index64(offsets), record)
        )
    out.update(columns)
    return out


# -- physics ------------------------------------------------------------------------------


def _generate_events(rng: np.random.Generator, name: str, n: int) -> dict[str, Any]:
    """Columns of ``n`` events of class ``name``: collections as ``(offsets, fields)``."""
    processes = [_PROCESSES[p] for p, _ in _MIXTURES[name]]
    fractions = np.array([f for _, f in _MIXTURES[name]])
    process = rng.choice(len(processes), size=n, p=fractions / fractions.sum())

    def param(attribute: str) -> np.ndarray:
        return np.array([getattr(p, attribute) for p in processes])[process]

    jet_offsets, jets = _jets(rng, param)
    ht = _per_event_sum(jet_offsets, jets["pt"])
    muons, electrons = _leptons(rng, param, n)
    npv = np.maximum(rng.poisson(20.0, n), 1).astype(np.int32)
    has_lepton = (np.diff(muons[0]) + np.diff(electrons[0])) > 0
    met_pt, met_phi = _met(rng, param, ht, npv, has_lepton)
    return {
        "Jet": (jet_offsets, jets),
        "Muon": muons,
        "Electron": electrons,
        "MET_pt": met_pt,
        "MET_phi": met_phi,
        "PV_npvs": npv,
        "genWeight": rng.lognormal(0.0, 0.1, n).astype(np.float32),
    }


def _jets(rng: np.random.Generator, param: _Parameter
          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    counts = param("jets_min") + rng.poisson(param("jets_extra"))
    offsets = _offsets(counts)
    owner = np.repeat(np.arange(len(counts)), counts)
    total = int(offsets[-1])
    # power-law spectrum: a monotone map of exponentials, so sorted stays sorted
    exponential = _sorted_exponentials(rng, offsets)
    pt = _JET_PT_MIN * np.exp(exponential / param("jet_pt_index")[owner])
    eta = _squash(rng.normal(0.0, 1.0, total) * param("jet_eta_sigma")[owner], _JET_ETA_MAX)
    phi = rng.uniform(-np.pi, np.pi, total)
    flavour = _flavours(rng, param("b_fraction")[owner], param("c_fraction")[owner])
    btag_a = np.array([_BTAG_BETA[f][0] for f in ("b", "c", "light")])[flavour]
    btag_b = np.array([_BTAG_BETA[f][1] for f in ("b", "c", "light")])[flavour]
    btag = rng.beta(btag_a, btag_b)
    mass = pt * rng.lognormal(np.log(0.11), 0.35, total) * np.where(flavour == 0, 1.2, 1.0)
    fields = {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btagDeepB": btag}
    return offsets, {k: v.astype(np.float32) for k, v in fields.items()}


def _leptons(rng: np.random.Generator, param: _Parameter, n: int
             ) -> tuple[tuple[np.ndarray, dict[str, np.ndarray]], ...]:
    thresholds = np.cumsum(param("leptons"), axis=1)[:, :-1]
    n_leptons = (rng.random(n)[:, None] >= thresholds).sum(axis=1)
    n_muons = rng.binomial(n_leptons, 0.5)
    scale = param("lepton_pt_scale")
    return (
        _lepton_collection(rng, n_muons, scale, _MUON_ETA_MAX),
        _lepton_collection(rng, n_leptons - n_muons, scale, _ELECTRON_ETA_MAX),
    )


def _lepton_collection(rng: np.random.Generator, counts: np.ndarray, scale: np.ndarray,
                       eta_max: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    offsets = _offsets(counts)
    owner = np.repeat(np.arange(len(counts)), counts)
    total = int(offsets[-1])
    pt = _LEPTON_PT_MIN + scale[owner] * _sorted_exponentials(rng, offsets)
    fields = {
        "pt": pt.astype(np.float32),
        "eta": _squash(rng.normal(0.0, 1.1, total), eta_max).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, total).astype(np.float32),
        "charge": np.where(rng.random(total) < 0.5, -1, 1).astype(np.int32),
    }
    return offsets, fields


def _met(rng: np.random.Generator, param: _Parameter, ht: np.ndarray, npv: np.ndarray,
         has_lepton: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neutrinos (mostly with a lepton) plus a resolution that grows with HT and pileup."""
    n = len(ht)
    probability = param("neutrino_probability")
    neutrino = rng.random(n) < np.where(has_lepton, probability, 0.3 * probability)
    nu_pt = neutrino * rng.exponential(param("neutrino_pt_scale"))
    nu_phi = rng.uniform(-np.pi, np.pi, n)
    sigma = 0.5 * np.sqrt(ht + 50.0) + 0.3 * npv
    x = nu_pt * np.cos(nu_phi) + rng.normal(0.0, 1.0, n) * sigma
    y = nu_pt * np.sin(nu_phi) + rng.normal(0.0, 1.0, n) * sigma
    return np.hypot(x, y).astype(np.float32), np.arctan2(y, x).astype(np.float32)


# -- vectorised helpers -------------------------------------------------------------------


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _sorted_exponentials(rng: np.random.Generator, offsets: np.ndarray) -> np.ndarray:
    """Standard exponentials, in falling order within each event, without a sort.

    Rényi's representation: the k-th smallest of n exponentials is
    ``sum(Z_i / (n - i + 1) for i <= k)`` with independent exponentials ``Z_i``.
    """
    counts = np.diff(offsets)
    total = int(offsets[-1])
    starts = np.repeat(offsets[:-1], counts)
    position = np.arange(total) - starts
    n_in_event = np.repeat(counts, counts)
    cumulative = np.cumsum(rng.standard_exponential(total) / (n_in_event - position))
    before = np.concatenate(([0.0], cumulative))[starts]
    ascending = cumulative - before
    return ascending[starts + n_in_event - 1 - position]


def _flavours(rng: np.random.Generator, b_fraction: np.ndarray,
              c_fraction: np.ndarray) -> np.ndarray:
    """0 for b, 1 for c, 2 for light jets."""
    u = rng.random(len(b_fraction))
    return np.where(u < b_fraction, 0, np.where(u < b_fraction + c_fraction, 1, 2))


def _squash(values: np.ndarray, limit: float) -> np.ndarray:
    """Smoothly fold values into the detector acceptance ``(-limit, limit)``."""
    return limit * np.tanh(values / limit)


def _per_event_sum(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return np.bincount(owner, weights=values, minlength=len(offsets) - 1)
