"""Lazy scoring of dask-awkward collections (mlaas_dask.dak) on a LocalCluster with worker
processes: uproot.dask records after a selection, coffea NanoEvents, a dict of branches;
XGBoost (binary and multi-class), scikit-learn and ONNX dak_bundles trained by ``train``; the
scores equal ``mlaas predict``'s, only the needed columns are read, the model loads once per
worker, empty and unknown-length partitions, and every bad input with its message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.dak import BundleRef, features_dask, loaded_bundles, predict_dask
from mlaas_dask.errors import FeatureError
from mlaas_dask.predict import predict_files

from conftest import write_events

dak = pytest.importorskip("dask_awkward")
pytestmark = pytest.mark.slow

N = 3000
#: what the features read: the selection below adds nothing (it cuts on MET_pt)
NEEDED = {"MET_pt", "Jet_pt", "Jet_eta"}
def uproot_events(dak_sample: Path, steps: int = 4) -> Any:
    files = {str(dak_sample / "sig.root"): "Events", str(dak_sample / "bkg.root"): "Events"}
    return uproot.dask(files, steps_per_file=steps)


def predicted(client: Any, bundle: Path, dak_sample: Path, out: Path) -> np.ndarray:
    """``mlaas predict``'s scores of sig.root then bkg.root (every entry, in order)."""
    import pyarrow.parquet as pq

    result = predict_files(bundle, [str(dak_sample / "sig.root"), str(dak_sample / "bkg.root")],
                           out, cluster=client, step_size=1000, progress=False)
    table = pq.read_table(result.parquet).to_pandas()
    order = np.lexsort((table["entry"], table["file"].cat.codes))  # codes: the files' order
    return table.iloc[order]


def met_of(dak_sample: Path) -> np.ndarray:
    return np.concatenate([uproot.open(dak_sample / f"{g}.root")["Events"]["MET_pt"].array(
        library="np") for g in ("sig", "bkg")])


@pytest.mark.parametrize("kind", ["xgboost", "sklearn", "onnx"])
def test_lazy_scores_read_only_the_needed_branches_and_equal_mlaas_predict(
        client: Any, dak_bundles: dict[str, Path], dak_sample: Path, tmp_path: Path,
        kind: str) -> None:
    bundle = ModelBundle.load(dak_bundles[kind])
    events = uproot_events(dak_sample)
    selected = events[events.MET_pt > 25]  # unknown partition lengths from here on
    scores = bundle.predict_dask(selected)
    assert isinstance(scores, dak.Array) and not scores.known_divisions
    assert str(scores.type).endswith("float32")
    (columns,) = dak.necessary_columns(scores).values()
    assert set(columns) == NEEDED  # no run, event, genWeight, Jet_phi, Jet_mass, MET_phi
    values = scores.compute()
    table = predicted(client, dak_bundles[kind], dak_sample, tmp_path / "scores")
    expected = table["score"].to_numpy()[met_of(dak_sample) > 25]
    assert len(values) == len(expected) > 1000
    np.testing.assert_allclose(ak.to_numpy(values), expected, rtol=0, atol=1e-6)


def test_the_model_loads_once_per_worker_process(client: Any, dak_bundles: dict[str, Path],
                                                 dak_sample: Path) -> None:
    """12 partitions, scored twice (two graphs) on 2 workers: each worker loads the
    bundle once, however many partitions it scores."""
    from distributed import get_task_stream

    bundle = ModelBundle.load(dak_bundles["xgboost"])
    digest = BundleRef.of(bundle).digest
    before = client.run(loaded_bundles)
    with get_task_stream(client) as stream:
        first = predict_dask(bundle, uproot_events(dak_sample, steps=6)).compute()
        again = predict_dask(dak_bundles["xgboost"], uproot_events(dak_sample, steps=6)).compute()
    np.testing.assert_array_equal(ak.to_numpy(first), ak.to_numpy(again))
    scored = [t for t in stream.data if "mlaas-score" in str(t["key"])]
    assert len(scored) == 24
    after = client.run(loaded_bundles)
    workers = {t["worker"] for t in scored}
    for worker in workers:
        assert after[worker].get(digest, 0) == 1, (before[worker], after[worker])


def test_multiclass_scores_are_a_record_of_one_field_per_class(
        client: Any, dak_bundles: dict[str, Path], dak_sample: Path, tmp_path: Path) -> None:
    bundle = ModelBundle.load(dak_bundles["multiclass"])
    assert bundle.classes == ["ttH", "WJets", "QCD"]
    scores = bundle.predict_dask(uproot_events(dak_sample))
    assert scores.fields == ["ttH", "WJets", "QCD"]
    values = scores.compute()
    table = predicted(client, dak_bundles["multiclass"], dak_sample, tmp_path / "scores")
    for name in bundle.classes:
        np.testing.assert_allclose(ak.to_numpy(values[name]), table[f"score_{name}"],
                                   rtol=0, atol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(values.ttH + values.WJets + values.QCD), 1,
                               rtol=1e-5)


def test_coffea_nanoevents_score_as_the_flat_branches_do(dak_bundles: dict[str, Path],
                                                         dak_sample: Path) -> None:
    nanoevents = pytest.importorskip("coffea.nanoevents")
    import warnings

    with warnings.catch_warnings():  # the schema misses cross-references our files lack
        warnings.simplefilter("ignore", RuntimeWarning)
        events = nanoevents.NanoEventsFactory.from_root(
            {str(dak_sample / "sig.root"): "Events"}, schemaclass=nanoevents.NanoAODSchema,
            mode="dask").events()
    bundle = ModelBundle.load(dak_bundles["xgboost"])
    scores = bundle.predict_dask(events[events.MET.pt > 25])
    (columns,) = dak.necessary_columns(scores).values()
    assert NEEDED <= set(columns) <= NEEDED | {"nJet"}  # NanoEvents counts jets with nJet
    flat = uproot.open(dak_sample / "sig.root")["Events"].arrays(bundle.spec.branches())
    expected = bundle.predict_events(flat[flat.MET_pt > 25])
    np.testing.assert_allclose(ak.to_numpy(scores.compute()), expected, rtol=0, atol=1e-6)


def test_empty_partitions_and_a_dict_of_corrected_branches(dak_bundles: dict[str, Path],
                                                           dak_sample: Path) -> None:
    bundle = ModelBundle.load(dak_bundles["xgboost"])
    events = uproot_events(dak_sample)
    # the signal file's events (ids below 2e7) all fail: its 4 partitions are empty
    selected = events[events.event > 20_000_000]
    corrected = {"MET_pt": selected.MET_pt * 1.02, "Jet_pt": selected.Jet_pt,
                 "Jet_eta": selected.Jet_eta}
    scores = bundle.predict_dask(corrected)
    values = scores.compute()
    background = uproot.open(dak_sample / "bkg.root")["Events"].arrays(bundle.spec.branches())
    background["MET_pt"] = background.MET_pt * np.float32(1.02)
    np.testing.assert_allclose(ak.to_numpy(values), bundle.predict_events(background),
                               rtol=0, atol=1e-6)
    sizes = [len(scores.partitions[i].compute()) for i in range(scores.npartitions)]
    assert sizes[:4] == [0, 0, 0, 0] and sum(sizes) == N


def test_the_feature_spec_runs_on_typetracers(dak_sample: Path,
                                               dak_bundles: dict[str, Path]) -> None:
    """FeatureSpec.transform traces only the features' branches on typetracers; the lazy
    matrix of features_dask equals the eager one."""
    spec = ModelBundle.load(dak_bundles["xgboost"]).spec
    events = uproot_events(dak_sample)
    traced = spec.transform(events._meta)
    assert str(traced.type) == f"## * {spec.n_features} * float32"
    matrix = features_dask(spec, events)
    (columns,) = dak.necessary_columns(matrix).values()
    assert set(columns) == NEEDED
    computed = ak.to_numpy(matrix.compute())
    eager = spec.transform(events.compute())
    np.testing.assert_array_equal(np.isnan(computed), np.isnan(eager))
    np.testing.assert_array_equal(np.nan_to_num(computed), np.nan_to_num(eager))


# -- bad input: one clear message each, raised before anything is computed -------------------


def test_a_missing_branch_is_named_with_the_closest_names_first(
        dak_bundles: dict[str, Path], tmp_path: Path) -> None:
    path = write_events(tmp_path / "nojets.root", n=200, drop=("Jet",),
                        extra={"Jet_et": ak.Array([[1.0]] * 200), "MET_eta": np.ones(200)})
    events = uproot.dask({str(path): "Events"})
    with pytest.raises(FeatureError) as err:
        predict_dask(dak_bundles["xgboost"], events)
    message = str(err.value)
    assert message.startswith("Branch 'Jet_pt' needed by the features of bundle ")
    assert "is missing from the events. Did you mean 'Jet_et'" in message
    assert err.value.branch == "Jet_pt"


def test_jagged_and_flat_mismatches_are_explained(dak_bundles: dict[str, Path],
                                                  dak_sample: Path) -> None:
    events = uproot_events(dak_sample)
    with pytest.raises(FeatureError, match=r"Branch 'MET_pt' is jagged \(a list per event"):
        predict_dask(dak_bundles["xgboost"], {"MET_pt": events.Jet_pt, "Jet_pt": events.Jet_pt,
                                          "Jet_eta": events.Jet_eta})
    with pytest.raises(FeatureError, match=r"Branch 'Jet_eta' of collection 'Jet' is not "
                                           r"jagged \(one value per event"):
        predict_dask(dak_bundles["xgboost"], {"MET_pt": events.MET_pt, "Jet_pt": events.Jet_pt,
                                          "Jet_eta": events.MET_pt})


def test_structures_the_features_cannot_map(dak_bundles: dict[str, Path], dak_sample: Path) -> None:
    events = uproot_events(dak_sample)
    with pytest.raises(FeatureError, match=r"The events are not a record of branches \(their "
                                           r"type is var \* float32\): pass the events"):
        predict_dask(dak_bundles["xgboost"], events.Jet_pt)
    nested = dak.zip({"MET_pt": events.MET_pt, "Jet": dak.zip(
        {"pt": events.Jet_pt, "eta": events.Jet_eta}), "Jet_eta": dak.zip(
        {"a": events.MET_pt})}, depth_limit=1)
    with pytest.raises(FeatureError, match=r"Branch 'Jet_eta' is a record in the events "
                                           r"\(events.Jet_eta has fields a\)"):
        predict_dask(dak_bundles["xgboost"], nested)
    with pytest.raises(FeatureError, match=r"not Array; for arrays in memory use "
                                           r"ModelBundle\.predict_events"):
        predict_dask(dak_bundles["xgboost"], events.compute())


def test_a_bundle_archive_scores_as_its_folder(dak_bundles: dict[str, Path], dak_sample: Path,
                                               tmp_path: Path) -> None:
    from mlaas_dask.bundle import export_archive

    archive = export_archive(dak_bundles["sklearn"], tmp_path / "sgd.tar.gz")
    events = uproot_events(dak_sample)
    from_archive = predict_dask(archive, events).compute()
    from_folder = predict_dask(dak_bundles["sklearn"], events).compute()
    np.testing.assert_array_equal(ak.to_numpy(from_archive), ak.to_numpy(from_folder))
