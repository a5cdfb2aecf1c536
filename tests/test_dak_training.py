"""Training from the user's dask-awkward collections: ``train(job, events={group:
collection})`` on a LocalCluster with worker processes -- the same FeatureSpec, cut,
weights, split by event ids (the same events in each split as the job path), report and
bundle; only the needed branches are read; bad input named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from helpers import DAK_FEATURES as FEATURES
from helpers import nano_file

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import ConfigError, FeatureError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import prepare_events, train

dak = pytest.importorskip("dask_awkward")

CUT = "count(Jet_pt) >= 1"
IDS = {"run", "luminosityBlock", "event"}


def job(folder: Path, files: bool, features: str = FEATURES, cut: str = CUT) -> Any:
    def group(name: str, label: int) -> str:
        listed = f"files: [{name}.root], " if files else ""
        return f"    - {{name: {name}, {listed}label: {label}}}"

    text = f"""
dataset:
  step_size: 1000
  cut: '{cut}'
  weight_branch: genWeight
  groups:
{group("sig", 1)}
{group("bkg", 0)}
features: {features}
model: {{num_boost_round: 20, params: {{max_depth: 3}}}}
"""
    return job_from_text(text, base=folder, events=not files)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dak-train")
    nano_file(folder / "sig.root", 1, 70)
    nano_file(folder / "bkg.root", 2, 30)
    return folder


def collections(folder: Path) -> dict[str, Any]:
    """The user's own events: a selection, and a corrected column."""
    out = {}
    for name in ("sig", "bkg"):
        events = uproot.dask({str(folder / f"{name}.root"): "Events"}, steps_per_file=3)
        events = events[events.MET_pt > 10]
        events["MET_pt"] = events.MET_pt * 1.05
        out[name] = events
    return out


def readers(partition: Any) -> list[Any]:
    """uproot's readers in a partition's optimised graph (their keys are what is read)."""
    found = []
    for task in dict(partition.dask).values():
        for inner in task.args[0].values():
            if type(inner.func).__name__ == "_UprootRead":
                found.append(inner.func)
    return found


def test_only_the_needed_branches_are_read(sample: Path) -> None:
    prepared = prepare_events(job(sample, files=False), collections(sample))
    parts = prepared.dataset.delayed_partitions()
    assert len(parts) == len(prepared.dataset.partitions) == 6
    keys = {frozenset(r.common_keys) for p in parts for r in readers(p)}
    # features + cut + weight + ids; not Jet_phi, Jet_mass, MET_phi, nJet
    assert keys == {frozenset({"MET_pt", "Jet_pt", "Jet_eta", "genWeight", *IDS})}


@pytest.mark.slow
def test_training_from_collections_splits_as_the_job_path_and_writes_a_bundle(
        client: Any, sample: Path, tmp_path: Path) -> None:
    events = collections(sample)
    result = train(job(sample, files=False), events=events, cluster=client,
                   out=tmp_path / "dak", progress=False)
    assert result.metrics["auc"] > 0.6
    metadata = json.loads((result.bundle / "metadata.json").read_text())
    assert metadata["dataset"]["source"] == "dask-awkward collections"
    assert metadata["split"]["by"] == ["run", "luminosityBlock", "event"]
    summary = metadata["data_summary"]
    selected = 0
    for name in ("sig", "bkg"):
        eager = uproot.open(sample / f"{name}.root")["Events"].arrays(["MET_pt", "Jet_pt"])
        eager = eager[eager.MET_pt > 10]
        selected += int(np.sum(ak.num(eager.Jet_pt) >= 1))
    assert summary["events_read"] < 6000 and summary["events_selected"] == selected
    # the same events in every split as the job path with the same selection as its cut
    # (split by event ids; the cut's MET_pt is the stored one, as the selection's was)
    files = train(job(sample, files=True, cut=f"MET_pt > 10 and {CUT}"), cluster=client,
                  out=tmp_path / "files", progress=False)
    by_files = json.loads((files.bundle / "metadata.json").read_text())["data_summary"]
    assert summary["events_per_class"] == by_files["events_per_class"]
    # the bundle scores the collections as it scores the events in memory
    bundle = ModelBundle.load(result.bundle)
    lazy = ak.to_numpy(bundle.predict_dask(events["sig"]).compute())
    eager = uproot.open(sample / "sig.root")["Events"].arrays(bundle.spec.branches())
    eager = eager[eager.MET_pt > 10]
    eager["MET_pt"] = eager.MET_pt * 1.05
    np.testing.assert_allclose(lazy, bundle.predict_events(eager), rtol=0, atol=1e-6)


def test_n_auto_is_estimated_from_a_sample_of_the_collections(sample: Path) -> None:
    features = "{flat: [MET_pt], collections: {Jet: {fields: [pt], n: auto}}}"
    prepared = prepare_events(job(sample, files=False, features=features),
                              collections(sample))
    assert 2 <= prepared.spec.collections["Jet"].n <= 10


def test_bad_collections_are_named(sample: Path) -> None:
    events = collections(sample)
    with pytest.raises(ConfigError, match=r"one collection per group of the job, by name: "
                                          r"the groups are 'sig', 'bkg'; group 'bkg' has no"):
        prepare_events(job(sample, files=False), {"sig": events["sig"]})
    with pytest.raises(ConfigError, match="no group is named 'signal'"):
        prepare_events(job(sample, files=False), {"signal": events["sig"], "bkg": events["bkg"]})
    with pytest.raises(ConfigError, match=r"Group 'sig' lists files, and train\(job, "
                                          r"events=\.\.\.\) gives its events too"):
        prepare_events(job(sample, files=True), events)
    with pytest.raises(ConfigError, match=r"group 'sig' lists files, but its events come "
                                          r"from train\(job, events=\.\.\.\)"):
        job_from_text("dataset: {groups: [{name: sig, files: [a.root], label: 1}]}\n"
                      "features: {flat: [MET_pt]}\n", events=True)
    no_weight = dict(events, bkg=events["bkg"][["MET_pt", "Jet_pt", "Jet_eta", "event"]])
    with pytest.raises(FeatureError, match=r"Branch 'genWeight' needed by the job \(group "
                                           r"'bkg'\) is missing from the events"):
        prepare_events(job(sample, files=False), no_weight)
