"""End to end on a real Dask LocalCluster with worker processes: ROOT -> bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import uproot
from helpers import quiet, small_job

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import BundleError, DataError
from mlaas_dask.job import job_from_text, load_job
from mlaas_dask.train import train

from conftest import REPO, write_events

pytestmark = pytest.mark.slow

def test_cms_tutorial_end_to_end(client, tmp_path: Path, hep_tutorial: Path) -> None:
    job = load_job(REPO / "examples" / "cms-hep-tutorial.yaml")
    result = train(job, cluster=client, out=tmp_path / "bundle", **quiet)
    bundle = tmp_path / "bundle"
    # the evaluation report's files (report.html, report_*): tests/test_report.py
    assert sorted(p.name for p in bundle.iterdir() if not p.name.startswith("report")) == [
        "features.json", "metadata.json", "metrics.json", "model.ubj", "roc.png", "scores.png"]
    assert (bundle / "report.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert 0.8 < metrics["auc"] < 1.0
    assert set(metrics["seconds"]) >= {"read_features", "train", "evaluate"}
    per_class = metrics["events_per_class"]
    entries = {name: uproot.open(hep_tutorial / f"{name}.root")["events"].num_entries
               for name in ("single_top", "ww", "wz", "zz")}
    assert sum(per_class[s][1] for s in per_class) == entries["single_top"]
    assert sum(per_class[s][0] for s in per_class) == entries["ww"] + entries["wz"] + entries["zz"]
    assert per_class["train"][1] > 2 * per_class["test"][1]
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["classes"] == ["background", "signal"]
    assert metadata["versions"]["xgboost"] == "3.2.0"
    assert metadata["dataset"]["entries"] == sum(entries.values())
    assert (bundle / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # n: auto for muons was estimated and recorded
    features = json.loads((bundle / "features.json").read_text())
    assert isinstance(features["collections"]["Muon"]["n"], int)
    assert result.metrics["auc"] == metrics["auc"]


def test_auc_matches_single_process_xgboost(client, tmp_path: Path) -> None:
    """Same features, split, weights and parameters in one process: AUC within 0.01."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_cms_auc import single_process_auc

    job = load_job(REPO / "examples" / "cms-hep-tutorial.yaml")
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    reference = single_process_auc(job, ModelBundle.load(tmp_path / "b").spec)
    assert abs(result.metrics["auc"] - reference) < 0.01


def test_nan_and_inf_inputs_are_handled_and_counted(client, tmp_path: Path) -> None:
    met = np.random.default_rng(3).exponential(60, 3000).astype(np.float32)
    met[:7] = np.nan
    met[7:10] = np.inf
    write_events(tmp_path / "sig.root", n=3000, seed=1, extra={"MET_pt": met})
    write_events(tmp_path / "bkg.root", n=3000, seed=2)
    text = small_job(tmp_path).replace("sig.root]", "sig.root]")
    job = job_from_text(text, base=tmp_path)
    write_events(tmp_path / "sig.root", n=3000, seed=1, extra={"MET_pt": met})
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    assert result.metadata["data_summary"]["nonfinite_inputs"] == {"MET_pt": 10}
    assert result.metrics["auc"] > 0.6


def test_cut_weights_and_event_ids(client, tmp_path: Path) -> None:
    job = job_from_text(small_job(tmp_path, extra="  cut: 'MET_pt > 20 and count(Jet_pt) >= 1'\n"
                                            "  weight_branch: genWeight"), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    summary = result.metadata["data_summary"]
    assert summary["events_read"] == 6000
    expected = 0
    for name in ("sig", "bkg"):
        events = uproot.open(tmp_path / f"{name}.root")["Events"].arrays(["MET_pt", "nJet"])
        expected += int(np.sum((events.MET_pt > 20) & (events.nJet >= 1)))
    assert summary["events_selected"] == expected
    assert result.metadata["split"]["by"] == ["run", "luminosityBlock", "event"]


def test_zero_events_after_cut(client, tmp_path: Path) -> None:
    job = job_from_text(small_job(tmp_path, extra="  cut: 'MET_pt < 0'"), base=tmp_path)
    with pytest.raises(DataError,
                       match=r"No events pass the selection cut 'MET_pt < 0' \(read 6000"):
        train(job, cluster=client, out=tmp_path / "b", **quiet)
    assert not (tmp_path / "b").exists()


def test_one_class_left_after_cut(client, tmp_path: Path) -> None:
    job = job_from_text(small_job(tmp_path, extra="  cut: 'event < 20000000'"), base=tmp_path)
    with pytest.raises(DataError, match="Group 'bkg' has no events after the selection cut"):
        train(job, cluster=client, out=tmp_path / "b", **quiet)


def test_existing_output_is_never_overwritten_by_accident(client, tmp_path: Path) -> None:
    job = job_from_text(small_job(tmp_path), base=tmp_path)
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(BundleError, match=r"already exists.*--overwrite"):
        train(job, cluster=client, out=precious, **quiet)
    with pytest.raises(BundleError, match="not an mlaas_dask bundle; it is never overwritten"):
        train(job, cluster=client, out=precious, overwrite=True, **quiet)
    assert (precious / "thesis.txt").read_text() == "years of work"
    first = train(job, cluster=client, out=tmp_path / "b", **quiet)
    again = train(job, cluster=client, out=tmp_path / "b", overwrite=True, **quiet)
    assert again.bundle == first.bundle and ModelBundle.load(again.bundle)


def test_multiclass_with_named_labels(client, tmp_path: Path) -> None:
    small_job(tmp_path)
    rng = np.random.default_rng(11)
    write_events(tmp_path / "third.root", n=3000, seed=3,
                 extra={"MET_pt": rng.exponential(120, 3000).astype(np.float32)})
    text = small_job(tmp_path).replace("label: 1", "label: ttH").replace(
        "label: 0", "label: QCD").replace(
        "    - {name: bkg",
        "    - {name: third, files: [third.root], label: WJets}\n    - {name: bkg")
    job = job_from_text(text, base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    bundle = ModelBundle.load(result.bundle)
    assert bundle.classes == ["ttH", "WJets", "QCD"]
    assert bundle.output_names == ["score_ttH", "score_WJets", "score_QCD"]
    assert result.metrics["auc"] > 0.55 and set(result.metrics["auc_per_class"]) == {
        "ttH", "WJets", "QCD"}
    events = uproot.open(tmp_path / "sig.root")["Events"].arrays(bundle.spec.branches())
    scores = bundle.predict_events(events)
    assert scores.shape == (3000, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)


def test_one_class_per_worker_still_stops_early_on_a_real_metric(client, tmp_path: Path) -> None:
    """One partition per file and one file per class: each worker sees a single class."""
    text = small_job(tmp_path).replace("step_size: 1000", "step_size: 3000").replace(
        "num_boost_round: 30", "num_boost_round: 60")
    result = train(job_from_text(text, base=tmp_path), cluster=client, out=tmp_path / "b",
                   **quiet)
    history = result.metrics["history"]["validation"]
    (metric,) = history
    assert metric == "logloss" and all(np.isfinite(history[metric]))
    assert result.metrics["rounds"] > 5
