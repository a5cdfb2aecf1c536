"""FeatureSpec against an independent per-event hand computation."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.errors import FeatureError
from mlaas_dask.features import Collection, Expression, FeatureSpec, estimate_n

from conftest import HEP_TUTORIAL, NANOAOD


def hand_features(event: dict, n: int, key: str = "pt") -> list[float]:
    """The HEP-tutorial spec below, event by event in plain Python."""
    jets = sorted(
        ({"pt": math.hypot(px, py), "E": e, "btag": b}
         for px, py, e, b in zip(event["Jet_Px"], event["Jet_Py"], event["Jet_E"],
                                 event["Jet_btag"])),
        key=lambda j: -j[key],
    )
    row = [event["MET_px"], event["MET_py"], float(len(jets))]
    for field in ("pt", "E", "btag"):
        row += [jets[i][field] if i < len(jets) else math.nan for i in range(n)]
    row.append(math.hypot(event["MET_px"], event["MET_py"]))
    row.append(sum(j["pt"] for j in jets))
    return row


def tutorial_spec(n: int = 3, key: str = "pt") -> FeatureSpec:
    return FeatureSpec(
        flat=["MET_px", "MET_py"],
        collections={"Jet": Collection("Jet", ["pt", "E", "btag"], n=n, sort_by=key,
                                       derived={"pt": "hypot(Px, Py)"})},
        derived={"MET": "hypot(MET_px, MET_py)", "HT": "sum(hypot(Jet_Px, Jet_Py))"},
    )


@pytest.mark.parametrize("key", ["pt", "btag"])
def test_matches_hand_computation_on_real_cms_events(key: str) -> None:
    spec = tutorial_spec(key=key)
    with uproot.open(HEP_TUTORIAL / "single_top.root") as f:
        events = f["events"].arrays(spec.branches(), entry_stop=400)
    X = spec.transform(events)
    assert X.dtype == np.float32 and X.shape == (400, spec.n_features)
    expected = np.array([hand_features(e, 3, key) for e in events.to_list()],
                        dtype=np.float32)
    np.testing.assert_allclose(X, expected, rtol=1e-5, equal_nan=True)
    # jets are stored by falling pt, not btag: the btag case exercises the sorting path
    btags = ak.to_list(events.Jet_btag)
    assert any(b != sorted(b, reverse=True) for b in btags)


def test_feature_names_and_json_round_trip() -> None:
    spec = tutorial_spec(2)
    assert spec.feature_names == ["MET_px", "MET_py", "nJet", "Jet_pt_0", "Jet_pt_1",
                                  "Jet_E_0", "Jet_E_1", "Jet_btag_0", "Jet_btag_1",
                                  "MET", "HT"]
    again = FeatureSpec.from_json(spec.to_json())
    assert again.feature_names == spec.feature_names
    events = {"MET_px": np.array([1.0]), "MET_py": np.array([2.0]),
              "Jet_Px": ak.Array([[3.0, 30.0]]), "Jet_Py": ak.Array([[4.0, 40.0]]),
              "Jet_E": ak.Array([[6.0, 60.0]]), "Jet_btag": ak.Array([[0.1, 0.9]])}
    np.testing.assert_array_equal(spec.transform(events), again.transform(events))
    np.testing.assert_allclose(spec.transform(events)[0],
                               [1, 2, 2, 50, 5, 60, 6, 0.9, 0.1, math.hypot(1, 2), 55],
                               rtol=1e-6)


def test_real_nanoaod_already_sorted_and_clipped() -> None:
    spec = FeatureSpec(flat=["MET_pt"], collections={
        "Jet": Collection("Jet", ["pt", "eta"], n=2, sort_by="pt")})
    with uproot.open(NANOAOD) as f:
        events = f["Events"].arrays(spec.branches())
    X = spec.transform(events)
    counts = ak.num(events.Jet_pt).to_numpy()
    np.testing.assert_array_equal(X[:, 1], counts)
    first = ak.to_numpy(ak.fill_none(ak.pad_none(events.Jet_pt, 2, clip=True), np.nan))
    np.testing.assert_allclose(X[:, 2:4], first, equal_nan=True)


def test_padding_is_nan_and_inputs_inf_become_nan_and_are_counted() -> None:
    spec = FeatureSpec(flat=["a"], collections={"J": Collection("J", ["x"], n=3)})
    events = {"a": np.array([1.0, np.inf, np.nan], dtype=np.float32),
              "J_x": ak.Array([[1.0], [], [2.0, -np.inf, 3.0, 4.0]])}
    X, nonfinite = spec.transform_with_stats(events)
    np.testing.assert_array_equal(X[:, 0], [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(X[:, 1], [1, 0, 4])
    np.testing.assert_array_equal(X[2, 2:], [2.0, np.nan, 3.0])
    assert np.isnan(X[0, 3:]).all() and np.isnan(X[1, 2:]).all()
    assert nonfinite == {"a": 2, "J_x": 1}


def test_ascending_sort_and_nan_keys_last() -> None:
    spec = FeatureSpec(collections={"J": Collection("J", ["x"], n=3, sort_by="x",
                                                    ascending=True, multiplicity=False)})
    X = spec.transform({"J_x": ak.Array([[3.0, np.nan, 1.0, 2.0]])})
    np.testing.assert_array_equal(X[0], [1.0, 2.0, 3.0])


def test_sliced_partitions_give_the_same_rows() -> None:
    spec = tutorial_spec()
    with uproot.open(HEP_TUTORIAL / "ww.root") as f:
        events = f["events"].arrays(spec.branches(), entry_stop=300)
    whole = spec.transform(events)
    np.testing.assert_array_equal(spec.transform(events[100:200]), whole[100:200])
    np.testing.assert_array_equal(spec.transform(events[events.MET_px > 0]),
                                  whole[ak.to_numpy(events.MET_px > 0)])


def _pad_reference(values: ak.Array, n: int, sort: bool) -> np.ndarray:
    if sort:
        values = values[ak.argsort(values, ascending=False, stable=True)]
    return ak.to_numpy(ak.fill_none(ak.pad_none(values, n, clip=True), np.nan))


@pytest.mark.parametrize("sort", [False, True])
def test_dense_and_sparse_slots_match_pad_none(sort: bool) -> None:
    # slot 0 is filled in 98% of events (written by a gather over every row), slot 2 in a
    # third of them (written by a scatter to the rows that have one)
    rng = np.random.default_rng(5)
    counts = np.where(rng.random(2_000) < 0.98, rng.integers(1, 4, 2_000), 0)
    x = ak.unflatten(rng.normal(size=counts.sum()).astype(np.float32), counts)
    spec = FeatureSpec(collections={"J": Collection("J", ["x"], n=3,
                                                    sort_by="x" if sort else None)})
    X = spec.transform({"J_x": x})
    np.testing.assert_array_equal(X[:, 0], counts)
    np.testing.assert_array_equal(X[:, 1:], _pad_reference(x, 3, sort))


def test_kept_events_in_any_order_give_the_same_rows() -> None:
    spec = tutorial_spec()
    with uproot.open(HEP_TUTORIAL / "ww.root") as f:
        events = f["events"].arrays(spec.branches(), entry_stop=500)
    keep = np.random.default_rng(1).permutation(500)[:321]
    X, _ = spec.transform_with_stats(events, keep)
    np.testing.assert_array_equal(X, spec.transform(events)[keep])


def test_non_finite_inputs_are_counted_in_kept_events_only() -> None:
    spec = FeatureSpec(flat=["a"], collections={"J": Collection("J", ["x"], n=2)},
                       derived={"b": "a * 2"})
    events = {"a": np.array([np.inf, 1.0, np.nan, 2.0], dtype=np.float32),
              "J_x": ak.Array([[np.nan, 1.0], [2.0], [np.inf, np.inf, 3.0], []])}
    X, nonfinite = spec.transform_with_stats(events, np.array([3, 2]))
    assert nonfinite == {"a": 1, "J_x": 2}
    np.testing.assert_array_equal(X[0], [2.0, 0, np.nan, np.nan, 4.0])
    np.testing.assert_array_equal(X[1], [np.nan, 3, np.nan, np.nan, np.nan])
    _, everything = spec.transform_with_stats(events)
    assert everything == {"a": 2, "J_x": 3}


def test_estimate_n_is_a_quantile() -> None:
    assert estimate_n(np.array([0, 1, 1, 2, 2, 2, 3, 9]), 0.5) == 2
    assert estimate_n(np.zeros(10, int)) == 1


def test_resolve_sizes_auto_collections() -> None:
    spec = FeatureSpec(collections={"J": Collection("J", ["x"])})
    assert not spec.is_resolved
    with pytest.raises(FeatureError, match="n: auto"):
        spec.transform({"J_x": ak.Array([[1.0]])})
    sized = spec.resolve({"J": np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])})
    assert sized.collections["J"].n == 10 and sized.feature_names[0] == "nJ"


def test_missing_branch_suggests_closest() -> None:
    spec = FeatureSpec(flat=["MET_pt"])
    with pytest.raises(FeatureError) as err:
        spec.transform({"MET_phi": np.zeros(2), "MET_Pt": np.zeros(2)})
    assert "'MET_pt'" in str(err.value) and "Did you mean 'MET_Pt'" in str(err.value)


def test_jagged_used_as_flat_and_reverse() -> None:
    with pytest.raises(FeatureError, match="'Jet_pt' is jagged.*collections"):
        FeatureSpec(flat=["Jet_pt"]).transform({"Jet_pt": ak.Array([[1.0], []])})
    with pytest.raises(FeatureError, match="'Jet_pt' of collection 'Jet' is not jagged.*flat"):
        FeatureSpec(collections={"Jet": Collection("Jet", ["pt"], n=2)}).transform(
            {"Jet_pt": np.array([1.0, 2.0])})
    spec = FeatureSpec(flat=["Jet_pt"])
    with pytest.raises(FeatureError, match="is jagged"):
        spec.check_schema({"Jet_pt": True})


def test_collection_fields_must_share_counts() -> None:
    spec = FeatureSpec(collections={"J": Collection("J", ["a", "b"], n=1)})
    with pytest.raises(FeatureError, match="different numbers of objects"):
        spec.transform({"J_a": ak.Array([[1.0], []]), "J_b": ak.Array([[1.0, 2.0], []])})


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "not allowed"),
    ("MET_pt.real", "not allowed"),
    ("MET_pt +", "not a valid expression"),
    ("open(1)", "not allowed"),
])
def test_expressions_refuse_anything_but_arithmetic(text: str, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        Expression(text, "derived feature 'x'")


def test_expressions_are_elementwise_and_boolean() -> None:
    cut = Expression("a > 1 and not b < 0 or count(j) >= 2")
    ns = {"a": np.array([0, 2, 2]), "b": np.array([1, 1, -1]),
          "j": ak.Array([[1, 2], [], []])}
    assert cut.names == {"a", "b", "j"}
    assert ak.to_list(cut(ns)) == [True, True, False]
    with pytest.raises(FeatureError, match="uses 'c'.*Did you mean"):
        Expression("c + 1")({"cc": np.zeros(1)})
