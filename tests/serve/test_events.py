"""Raw JSON events -> arrays -> the bundle's FeatureSpec (no server)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas_dask.serve.errors import BadRequest, PayloadTooLarge
from mlaas_dask.serve.events import events_to_arrays

from .conftest import Trained

BRANCHES = ["MET_pt", "Jet_pt"]


def convert(payload, branches=BRANCHES, max_rows=100):
    return events_to_arrays(payload, branches, max_rows)


def test_row_wise_and_columnar_give_the_same_arrays():
    rows = {"events": [{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0], "other": "ignored"},
                       {"MET_pt": None, "Jet_pt": []}]}
    columns = {"columns": {"MET_pt": [41.2, None], "Jet_pt": [[88.1, 45.0], []]}}
    (a, n_a), (b, n_b) = convert(rows), convert(columns)
    assert n_a == n_b == 2
    np.testing.assert_array_equal(a["MET_pt"], np.array([41.2, np.nan], np.float32))
    assert a["MET_pt"].dtype == np.float32
    assert ak.to_list(a["Jet_pt"]) == ak.to_list(b["Jet_pt"]) == [
        [np.float32(88.1), np.float32(45.0)], []]


def test_whole_numbers_stay_integers():
    arrays, _ = convert({"events": [{"MET_pt": 3, "Jet_pt": [1, 2]}]})
    assert arrays["MET_pt"].dtype == np.int64
    assert str(ak.type(arrays["Jet_pt"]).content) == "var * int64"


def test_spec_on_json_events_equals_spec_on_file_events(trained: Trained):
    spec = trained.spec
    events = trained.events[:300]
    rows = ak.to_list(events)
    arrays, n = convert({"events": rows}, spec.branches(), 1000)
    assert n == 300
    np.testing.assert_array_equal(spec.transform(arrays), spec.transform(events))


@pytest.mark.parametrize(
    "payload,error,message",
    [
        ([1, 2], BadRequest, 'Send events as {"events": '),
        ({"events": [], "columns": {}}, BadRequest, "Send events as"),
        ({"events": {"MET_pt": 1}}, BadRequest, "'events' must be a list of objects, got an "
                                                "object"),
        ({"events": []}, BadRequest, "No events were sent"),
        ({"events": [[1, 2]]}, BadRequest, r"events\[0\] is a list; each event is an object"),
        ({"events": [{"MET_pt": 1, "Jet_pt": []}, {"MET_PT": 2, "Jet_pt": []}]}, BadRequest,
         "Event 1 has no 'MET_pt', which the model's features need. Did you mean 'MET_PT'?"),
        ({"events": [{"MET_pt": "41", "Jet_pt": []}]}, BadRequest,
         "Branch 'MET_pt', event 0: expected a number \\(or null when missing\\), got a "
         "string"),
        ({"events": [{"MET_pt": 1, "Jet_pt": [1.0]}, {"MET_pt": 1, "Jet_pt": 5.0}]}, BadRequest,
         "Branch 'Jet_pt', event 1: expected a list of numbers \\(one per object, \\[\\] for "
         "none\\) as in the other events, got a number"),
        ({"events": [{"MET_pt": 1, "Jet_pt": [1.0, None]}]}, BadRequest,
         "Branch 'Jet_pt', event 0: the list holds null; a jagged branch holds one number"),
        ({"events": [{"MET_pt": 1, "Jet_pt": [[1.0]]}]}, BadRequest,
         "the list holds a list"),
        ({"events": [{"MET_pt": [1], "Jet_pt": []}, {"MET_pt": 2, "Jet_pt": []}]}, BadRequest,
         "Branch 'MET_pt', event 1: expected a list of numbers"),
        ({"columns": {"MET_pt": [1, 2]}}, BadRequest,
         "Column 'Jet_pt', which the model's features need, is missing"),
        ({"columns": {"MET_pt": [1, 2], "Jet_pt": [[]]}}, BadRequest,
         "Columns have different lengths: 'Jet_pt' has 1 events, 'MET_pt' has 2"),
        ({"columns": {"MET_pt": 1, "Jet_pt": [[]]}}, BadRequest,
         "Column 'MET_pt' must be a list \\(one entry per event\\), got a number"),
        ({"columns": [1]}, BadRequest, "'columns' must be an object"),
        ({"events": [{"MET_pt": 1, "Jet_pt": []}] * 101}, PayloadTooLarge,
         "holds 101 events; at most 100 are allowed"),
    ],
)
def test_bad_events_name_the_event_and_branch(payload, error, message):
    with pytest.raises(error, match=message):
        convert(payload)


def test_huge_numbers_do_not_warn_or_fail():
    arrays, _ = convert({"events": [{"MET_pt": 1e300, "Jet_pt": [2 ** 70]}]})
    assert np.isinf(arrays["MET_pt"][0])
    assert ak.to_list(arrays["Jet_pt"])[0][0] > 1e20
