"""FeatureSpec against an independent per-event hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.errors import FeatureError
from mlaas_dask.features import Collection, Expression, FeatureSpec, estimate_n


def hand_features(event: dict, n: int, key: str = "pt") -> list[float]:
    """The HEP-tutorial spec below, event by event in plain Python."""
    jets = sorted(
        ({"pt": math.hypot(px, py), "E": e, "btag": b}
         for px, py, e, b in zip(event["Jet_Px"], event["Jet_Py"], event["Jet_E"],
                                 event["Jet_btag"], strict=False)),
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
def test_matches_hand_computation_on_real_cms_events(hep_tutorial: Path, key: str) -> None:
    spec = tutorial_spec(key=key)
    with uproot.open(hep_tutorial / "single_top.root") as f:
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


def test_real_nanoaod_already_sorted_and_clipped(nanoaod: Path) -> None:
    spec = FeatureSpec(flat=["MET_pt"], collections={
        "Jet": Collection("Jet", ["pt", "eta"], n=2, sort_by="pt")})
    with uproot.open(nanoaod) as f:
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


def test_sliced_partitions_give_the_same_rows(hep_tutorial: Path) -> None:
    spec = tutorial_spec()
    with uproot.open(hep_tutorial / "ww.root") as f:
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


def test_kept_events_in_any_order_give_the_same_rows(hep_tutorial: Path) -> None:
    spec = tutorial_spec()
    with uproot.open(hep_tutorial / "ww.root") as f:
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
    # the derived b = a * 2 is a feature of its own: its NaN counts under its name too
    assert nonfinite == {"a": 1, "J_x": 2, "b (derived)": 1}
    np.testing.assert_array_equal(X[0], [2.0, 0, np.nan, np.nan, 4.0])
    np.testing.assert_array_equal(X[1], [np.nan, 3, np.nan, np.nan, np.nan])
    _, everything = spec.transform_with_stats(events)
    assert everything == {"a": 2, "J_x": 3, "b (derived)": 2}


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
    with pytest.raises(FeatureError, match=r"'Jet_pt' is jagged.*collections"):
        FeatureSpec(flat=["Jet_pt"]).transform({"Jet_pt": ak.Array([[1.0], []])})
    with pytest.raises(FeatureError, match=r"'Jet_pt' of collection 'Jet' is not jagged.*flat"):
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
    with pytest.raises(FeatureError, match=r"uses 'c'.*Did you mean"):
        Expression("c + 1")({"cc": np.zeros(1)})


# -- expressions from elsewhere are bounded ------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("sum(Jet_pt) + 10**10**7", "'10**10**7' raises to the power 1e+07"),
    ("2**2**2**2**2", "raises to the power 65536"),
    ("(10**100)**100", "'10**100' raises to the power 100"),
    ("MET_pt ** 1000", "constant exponents may be at most 64"),
    ("(" * 10_000 + "MET_pt" + ")" * 10_000, "20,006 characters long"),
    ("MET_pt + " * 120_000 + "1", "1,080,001 characters long"),
    ("-" * 500 + "MET_pt", "nested more than 50 levels deep"),
    ("(" * 300 + "MET_pt" + ")" * 300, "too many nested parentheses"),
    ("9" * 40, "integers must fit in 64 bits"),
    ("2**63 + MET_pt", "integers must fit in 64 bits"),
    ("1e999 * MET_pt", "not a finite number"),
    ("MET_pt + 1 / (1 - 1)", "cannot be computed (division by zero)"),
    ("(-8) ** 0.5", "is not a real number"),
    ("sqrt(MET_pt, MET_phi)", "gives sqrt() 2 argument(s); it takes 1"),
    ("where(MET_pt > 1)", "gives where() 1 argument(s); it takes 3"),
])
def test_expressions_are_bounded(text: str, message: str) -> None:
    with pytest.raises(FeatureError) as err:
        Expression(text, "derived feature 'x'")
    assert message in str(err.value) and "derived feature 'x'" in str(err.value)
    assert len(str(err.value)) < 600  # a 1 MB expression is not echoed back


def test_constant_parts_are_computed_once_with_python_semantics() -> None:
    expression = Expression("2**-1 + x * 2**10 - 7 // 2")
    np.testing.assert_array_equal(expression({"x": np.array([0.0, 1.0])}), [-2.5, 1021.5])
    assert ak.to_list(Expression("not x")({"x": np.array([True, False, True])})) == \
        [False, True, False]


def test_a_function_cannot_write_into_the_events() -> None:
    """numpy's second positional argument is out=: sqrt(a, b) would overwrite b."""
    b = np.array([4.0, 9.0])
    with pytest.raises(FeatureError):
        Expression("sqrt(a, b)")
    assert Expression("sqrt(b)")({"b": b}).tolist() == [2.0, 3.0] and b.tolist() == [4.0, 9.0]


def test_an_expression_that_fails_on_the_events_names_itself() -> None:
    with pytest.raises(FeatureError, match="'nJet \\*\\* -1' cannot be computed on these "
                                           "events: ValueError"):
        Expression("nJet ** -1")({"nJet": np.array([1, 2])})


# -- features.json from elsewhere is checked -----------------------------------------------


def _features(**change: object) -> dict:
    data = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=2)},
                       derived={"HT": "sum(Jet_pt)"}).to_dict()
    data.update(change)
    return data


@pytest.mark.parametrize("change, message", [
    ({"flat": "MET_pt"}, "flat must be a list, not str"),
    ({"flat": [3]}, "An entry of flat must be a name"),
    ({"flat": ["x" * 300]}, "1 to 256 printable characters"),
    ({"flat": ["MET\npt"]}, "printable"),
    ({"derived": {"HT": 3}}, "derived feature 'HT' must be a string, not int"),
    ({"derived": {"HT": "sum(Jet_pt) + 10**10**7"}}, "raises to the power 1e+07"),
    ({"derived": ["HT"]}, "derived must be a mapping"),
    ({"collections": {"Jet": {"fields": ["pt"], "n": 10**9}}}, "n must be an integer from 1"),
    ({"collections": {"Jet": {"fields": ["pt"], "n": True}}}, "not True"),
    ({"collections": {"Jet": {"fields": "pt", "n": 2}}}, "fields must be a list"),
    ({"collections": {"Jet": {"fields": ["pt"], "n": 2, "multiplicity": "yes"}}},
     "multiplicity must be true or false"),
    ({"collections": {"Jet": {"fields": ["pt"], "n": 2, "quantile": "0.9"}}},
     "quantile must be in (0, 1]"),
    ({"collections": {"Jet": {"fields": ["pt"], "n": 2, "code": "x"}}},
     "unknown keys ['code']"),
    ({"collections": {"Jet": ["pt"]}}, "must be a mapping of settings"),
    ({"collections": {"Jet": {"fields": ["pt"] * 60, "n": 1000}}}, "at most 50,000"),
    ({"feature_names": ["a", "b"]}, "feature_names does not match"),
    ({"version": 2}, "version 2"),
    ({"extra": 1}, "unknown keys ['extra']"),
])
def test_features_json_is_checked(change: dict, message: str) -> None:
    import json

    with pytest.raises(FeatureError) as err:
        FeatureSpec.from_json(json.dumps(_features(**change)))
    assert message in str(err.value)


def test_features_json_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(FeatureError, match="must be a mapping, not list"):
        FeatureSpec.from_json("[1, 2]")
    with pytest.raises(FeatureError, match="not valid JSON"):
        FeatureSpec.from_json("[" * 100_000)


def test_auto_n_is_at_most_the_bound() -> None:
    from mlaas_dask.features.spec import MAX_OBJECTS

    assert estimate_n(np.full(10, 5 * MAX_OBJECTS)) == MAX_OBJECTS


# -- collections with no object at all -----------------------------------------------------


def _no_muon_spec() -> FeatureSpec:
    return FeatureSpec(flat=["MET_pt"],
                       collections={"Muon": Collection("Muon", ["pt", "eta"], n=2,
                                                       sort_by="pt")},
                       derived={"HT": "sum(Muon_pt)"})


def test_a_collection_without_any_object_is_jagged() -> None:
    """No event has a muon: awkward types the lists ``var * unknown``."""
    events = ak.Array({"MET_pt": [10.0, 20.0], "Muon_pt": [[], []], "Muon_eta": [[], []]})
    assert str(events["Muon_pt"].type.content) == "var * unknown"
    matrix = _no_muon_spec().transform(events)
    expected = [[10.0, 0.0, np.nan, np.nan, np.nan, np.nan, 0.0],
                [20.0, 0.0, np.nan, np.nan, np.nan, np.nan, 0.0]]
    np.testing.assert_array_equal(matrix, np.array(expected, np.float32))


def test_predict_events_without_any_object(tmp_path: Path) -> None:
    import xgboost

    from mlaas_dask.bundle import ModelBundle, write_bundle

    spec = _no_muon_spec()
    events = ak.Array({"MET_pt": [10.0, 20.0, 30.0], "Muon_pt": [[5.0], [], [7.0, 3.0]],
                       "Muon_eta": [[0.1], [], [0.2, -1.0]]})
    matrix = spec.transform(events)
    booster = xgboost.train({"objective": "binary:logistic", "nthread": 1},
                            xgboost.DMatrix(matrix, np.array([0, 1, 1]), missing=np.nan), 2)
    bundle = ModelBundle.load(write_bundle(
        tmp_path / "b", model=bytes(booster.save_raw("ubj")), spec=spec,
        metadata={"classes": ["background", "signal"]}, metrics={}))
    empty = ak.Array({"MET_pt": [10.0, 20.0], "Muon_pt": [[], []], "Muon_eta": [[], []]})
    scores = bundle.predict_events(empty)
    by_hand = booster.inplace_predict(spec.transform(empty), missing=np.nan)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, by_hand)


def test_a_missing_value_inside_a_list_is_nan() -> None:
    spec = FeatureSpec(collections={"Muon": Collection("Muon", ["pt"], n=2)})
    matrix = spec.transform({"Muon_pt": ak.Array([[1.0, None], [], [3.0]])})
    np.testing.assert_array_equal(matrix, np.array(
        [[2, 1, np.nan], [0, np.nan, np.nan], [1, 3, np.nan]], np.float32))
    with pytest.raises(FeatureError, match="is a list per event but not of numbers"):
        spec.transform({"Muon_pt": ak.Array([[[1.0]], []])})


def test_nan_made_by_a_derived_feature_is_counted_under_its_name() -> None:
    """Found as a new user: log of a negative gave NaN that no count named."""
    events = ak.Array({"MET_pt": np.array([50.0, 150.0, 80.0, 300.0], np.float32),
                       "Jet_pt": ak.Array([[70.0, 40.0], [], [65.0], [90.0, 61.0, 20.0]])})
    spec = FeatureSpec.from_dict({
        "flat": ["MET_pt"], "derived": {"logm": "log(MET_pt - 100)"},
        "collections": {"Jet": {"fields": ["pt", "lpt"], "n": 2,
                                "derived": {"lpt": "log(pt - 60)"}}}})
    with np.errstate(all="raise"):  # the expressions' own warnings are silenced
        matrix, nonfinite = spec.transform_with_stats(events)
    assert nonfinite == {"logm (derived)": 2, "Jet_lpt (derived)": 2}
    assert np.isnan(matrix[[0, 2], spec.feature_names.index("logm")]).all()
    _, kept = spec.transform_with_stats(events, np.array([1, 3]))
    assert kept == {"Jet_lpt (derived)": 1}
