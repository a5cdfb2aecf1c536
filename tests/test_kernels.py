"""The compiled feature kernels write bit for bit the matrix the numpy path writes.

Both paths run on the same events (real CMS files and generated ones with empty events,
NaN and inf, unsorted objects, many dtypes) and the same row selections (all events, a
cut, the split order, nothing), and the matrices are compared as raw bits, with the
non-finite counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.features import FeatureSpec, kernels

pytest.importorskip("numba")


def both(spec: FeatureSpec, events: Any, keep: np.ndarray | None,
         monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, dict[str, int]]:
    """The matrix and counts of the numpy path, checked equal to the kernels'."""
    monkeypatch.setattr(kernels, "MIN_ROWS", 0)
    monkeypatch.setenv("MLAAS_KERNELS", "numpy")
    expected, expected_counts = spec.transform_with_stats(events, keep)
    monkeypatch.setenv("MLAAS_KERNELS", "numba")
    got, counts = spec.transform_with_stats(events, keep)
    assert got.flags.c_contiguous and expected.flags.f_contiguous
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    assert np.array_equal(np.ascontiguousarray(got).view(np.uint32),
                          np.ascontiguousarray(expected).view(np.uint32))
    assert counts == expected_counts
    return got, counts


def selections(n: int, seed: int = 0) -> list[np.ndarray | None]:
    """All events; a cut; the split order (grouped, stored order within); none."""
    rng = np.random.default_rng(seed)
    cut = np.flatnonzero(rng.random(n) < 0.6)
    split = rng.integers(0, 4, n)  # 3: cut away
    grouped = np.argsort(split, kind="stable")
    grouped = grouped[: np.count_nonzero(split < 3)]
    return [None, cut, grouped, np.zeros(0, dtype=np.intp)]


def jagged(counts: np.ndarray, content: np.ndarray) -> ak.Array:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets),
                                                ak.contents.NumpyArray(content)))


def generated(n: int, seed: int = 1) -> dict[str, Any]:
    """Events with empty ones, NaN / inf, unsorted objects and assorted dtypes."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, n)
    counts[rng.random(n) < 0.2] = 0  # empty events
    total = int(counts.sum())
    pt = rng.exponential(40.0, total).astype(np.float32)
    pt[rng.random(total) < 0.01] = np.nan
    pt[rng.random(total) < 0.005] = np.inf
    eta = rng.normal(0, 2, total)  # float64: cast to float32 like numpy does
    eta[rng.random(total) < 0.01] = -np.inf
    mu_counts = rng.integers(0, 3, n)
    mu_total = int(mu_counts.sum())
    met = rng.exponential(30.0, n).astype(np.float64)
    met[rng.random(n) < 0.01] = np.nan
    return {
        "MET": met,
        "nPV": rng.integers(0, 60, n).astype(np.int64),
        "flag": rng.random(n) < 0.5,
        "big": rng.integers(-(2**40), 2**40, n),  # int64 beyond float32's exact range
        "Jet_pt": jagged(counts, pt),
        "Jet_eta": jagged(counts, eta),
        "Jet_id": jagged(counts, rng.integers(0, 8, total).astype(np.uint8)),
        "Jet_n": jagged(counts, rng.integers(-5, 5, total).astype(np.int32)),
        "Mu_pt": jagged(mu_counts, rng.exponential(20, mu_total).astype(np.float32)),
        "Mu_q": jagged(mu_counts, rng.choice([-1, 1], mu_total).astype(np.int32)),
    }


GENERATED_SPEC = {
    "flat": ["MET", "nPV", "flag", "big"],
    "collections": {
        "Jet": {"fields": ["pt", "eta", "id", "n", "pt2"], "n": 4, "sort_by": "pt",
                "derived": {"pt2": "pt * pt"}},
        "Mu": {"fields": ["pt", "q"], "n": 3, "sort_by": "pt", "ascending": True,
               "multiplicity": False},
        "Unsorted": {"fields": ["pt"], "n": 12, "prefix": "Jet_"},
    },
    "derived": {"HT": "sum(Jet_pt)", "ratio": "MET / nPV"},
}


@pytest.mark.parametrize("n", [0, 1, 500, 40_000])
def test_generated_events(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FeatureSpec.from_dict(GENERATED_SPEC)
    events = generated(n)
    for keep in selections(n):
        matrix, counts = both(spec, events, keep, monkeypatch)
        if n >= 500 and keep is None:
            assert np.isnan(matrix).any() and not np.isinf(matrix).any()
            assert counts["Jet_pt"] > 0 and counts["MET"] > 0


def test_records_and_sliced_contents(monkeypatch: pytest.MonkeyPatch) -> None:
    """An awkward record array whose lists do not start at 0 (a slice of a partition)."""
    events = ak.zip(generated(30_000, seed=3), depth_limit=1)[7_000:29_000]
    spec = FeatureSpec.from_dict(GENERATED_SPEC)
    for keep in selections(len(events), seed=4):
        both(spec, events, keep, monkeypatch)


def test_large_generated_default_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MLAAS_KERNELS=numba, from MIN_ROWS on the kernels are what transform uses."""
    spec = FeatureSpec.from_dict(GENERATED_SPEC)
    events = generated(kernels.MIN_ROWS + 10)
    monkeypatch.setenv("MLAAS_KERNELS", "numba")
    assert kernels.usable(kernels.MIN_ROWS)
    assert spec.transform(events).flags.c_contiguous
    assert not spec.transform({k: v[:100] for k, v in events.items()}).flags.c_contiguous
    both(spec, events, None, monkeypatch)


def test_cms_nanoaod(nanoaod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FeatureSpec.from_dict({
        "flat": ["MET_pt", "PV_npvs", "run"],
        "collections": {
            "Jet": {"fields": ["pt", "eta", "phi", "mass", "btagDeepB", "jetId"], "n": 6,
                    "sort_by": "pt"},
            "Muon": {"fields": ["pt", "eta", "charge"], "n": 2, "sort_by": "eta"},
            "Electron": {"fields": ["pt", "eta", "charge"], "n": 3},
        },
        "derived": {"HT": "sum(Jet_pt)"},
    })
    with uproot.open(nanoaod) as handle:
        events = handle["Events"].arrays(spec.branches())
    for keep in selections(len(events)):
        both(spec, events, keep, monkeypatch)


def test_cms_hep_tutorial(hep_tutorial: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived per-object pt, stored unsorted: the ordered kernel."""
    spec = FeatureSpec.from_dict({
        "flat": ["MET_px", "MET_py", "NJet"],
        "collections": {
            "Jet": {"fields": ["pt", "btag", "ID", "E"], "n": 4, "sort_by": "pt",
                    "derived": {"pt": "hypot(Px, Py)"}},
            "Muon": {"fields": ["pt", "Charge", "Iso"], "n": 2, "sort_by": "pt",
                     "derived": {"pt": "hypot(Px, Py)"}},
        },
        "derived": {"MET": "hypot(MET_px, MET_py)"},
    })
    for name in ("zz.root", "ww.root", "single_top.root"):
        with uproot.open(hep_tutorial / name) as handle:
            events = handle["events"].arrays(spec.branches())
        for keep in selections(len(events)):
            both(spec, events, keep, monkeypatch)


def test_opt_in_and_small_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLAAS_KERNELS", raising=False)
    assert not kernels.usable(10**7)  # the numpy path by default
    monkeypatch.setenv("MLAAS_KERNELS", "numpy")
    assert not kernels.usable(10**7)
    monkeypatch.setenv("MLAAS_KERNELS", "numba")
    assert kernels.usable(10**7) and not kernels.usable(kernels.MIN_ROWS - 1)
