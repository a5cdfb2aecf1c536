"""One partition -> per-split matrices, labels and weights, against a direct computation."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas_dask.data.dataset import Partition
from mlaas_dask.errors import DataError
from mlaas_dask.features import Collection, FeatureSpec
from mlaas_dask.train.matrix import PartitionPlan, process_partition
from mlaas_dask.train.split import SPLIT_NAMES, assign_split


def _events(n: int = 3_000) -> ak.Array:
    rng = np.random.default_rng(2)
    counts = rng.poisson(2.5, n)
    return ak.Array({
        "MET_pt": rng.exponential(30, n).astype(np.float32),
        "Jet_pt": ak.unflatten(rng.exponential(40, counts.sum()).astype(np.float32), counts),
        "w": rng.normal(1, 0.2, n).astype(np.float32),
        "label": rng.integers(0, 3, n),
        "run": np.full(n, 1, np.uint32),
        "event": np.arange(n, dtype=np.uint64) + 1000,
    })


def _plan(**changes) -> PartitionPlan:
    spec = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=3)})
    options = {"spec": spec, "cut": "MET_pt > 15 and count(Jet_pt) >= 1",
               "weight_branch": "w", "id_branches": ("run", "event"), "fractions": (0.6, 0.2),
               "seed": 4, "group_weights": (2.0,), "labels": (1,), "n_classes": 2}
    return PartitionPlan(**{**options, **changes})


def test_each_split_holds_exactly_its_events_features_labels_and_weights() -> None:
    events = _events()
    plan = _plan()
    out = process_partition(events, Partition(0, 0, "f.root", 0, len(events)), plan)
    passed = ak.to_numpy((events.MET_pt > 15) & (ak.num(events.Jet_pt) >= 1))
    split = assign_split([np.asarray(events.run), np.asarray(events.event)], 0.6, 0.2, 4)
    assert out["stats"]["read"] == len(events)
    assert out["stats"]["selected"] == passed.sum()
    for index, name in enumerate(SPLIT_NAMES):
        rows = passed & (split == index)
        X, y, w = out[name]
        np.testing.assert_array_equal(X, plan.spec.transform(events[rows]))
        np.testing.assert_array_equal(y, np.ones(rows.sum(), np.int32))
        np.testing.assert_allclose(w, 2.0 * ak.to_numpy(events.w)[rows], rtol=1e-6)
        assert out["stats"][name] == [0, int(rows.sum())]


def test_label_branch_checked_on_selected_events_only() -> None:
    events = _events()
    plan = _plan(label_branch="label", cut="label < 2", n_classes=2, weight_branch=None)
    out = process_partition(events, Partition(0, 0, "f.root", 0, len(events)), plan)
    labels = np.concatenate([out[name][1] for name in SPLIT_NAMES])
    assert set(labels) == {0, 1}  # label 2 is cut away before it is checked
    with pytest.raises(DataError, match=r"Label branch 'label' in f.root holds the value 2"):
        process_partition(events, Partition(0, 0, "f.root", 0, len(events)),
                          _plan(label_branch="label", cut=None, n_classes=2))
