"""Errors carry what they name as attributes (as uproot's KeyInFileError does), the
message stays what the user reads, and the attributes survive the trip from a worker."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import uproot

from mlaas_dask.bundle import (
    FEATURES_FILE,
    METADATA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ModelBundle,
)
from mlaas_dask.data.dataset import Dataset, Group
from mlaas_dask.data.inspect import inspect_file
from mlaas_dask.errors import (
    BundleError,
    ConfigError,
    DataError,
    FeatureError,
    MissingExtra,
    MlaasError,
)
from mlaas_dask.extras import available, require
from mlaas_dask.features import FeatureSpec
from mlaas_dask.job import job_from_text, load_job

from conftest import write_events

JOB = """\
dataset:
  tree: Events
  groups:
    - {{name: sig, files: [{file}], label: 1}}
    - {{name: bkg, files: [{file}], label: 0}}
{extra}features:
  flat: [MET_pt]
"""


def dataset(path: Path, branches: list[str], tree: str = "Events") -> Dataset:
    return Dataset([Group("g", (str(path),))], tree, branches)


def raised(kind: type[MlaasError], action: Callable[[], object]) -> MlaasError:
    with pytest.raises(kind) as info:
        action()
    return info.value


# -- data ---------------------------------------------------------------------------------


def test_missing_branch_names_file_tree_branch_and_what_is_there(tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.root")
    err = raised(DataError, lambda: dataset(path, ["MET_ptt"]))
    assert str(err).startswith(f"Branch 'MET_ptt' is not in tree 'Events' of {path}.")
    assert (err.key, err.branch, err.tree, err.file) == ("MET_ptt", "MET_ptt", "Events",
                                                          str(path))
    assert "MET_pt" in err.available and "Jet_pt" in err.available
    assert list(err.available) == sorted(err.available)


def test_wrong_tree_name_is_the_same_error_for_datasets_and_inspect(tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.root", tree="Events")
    with uproot.update(path) as handle:
        handle.mktree("Runs", {"run": np.uint32}).extend({"run": np.array([1], np.uint32)})
    from_dataset = raised(DataError, lambda: dataset(path, ["MET_pt"], tree="Event"))
    from_inspect = raised(DataError, lambda: inspect_file(path, tree="Event"))
    for err in (from_dataset, from_inspect):
        assert (err.key, err.tree, err.file, err.available) == ("Event", "Event", str(path),
                                                                ("Events", "Runs"))
    assert str(from_dataset) == str(from_inspect)
    assert str(from_dataset) == (
        f"Tree 'Event' is not in {path}. Did you mean 'Events'? Available trees: Events, "
        "Runs. Give one of them as the tree (dataset.tree in a job file, --tree for mlaas "
        "inspect).")


def test_a_tree_in_a_folder_is_found_by_inspect_and_suggested_by_datasets(
        tmp_path: Path) -> None:
    """inspect accepts the base name of the only tree that has it; a Dataset reads the
    path it is given and suggests the full one."""
    path = write_events(tmp_path / "events.root", tree="dir/Events")
    assert [t["name"] for t in inspect_file(path, tree="Events")["trees"]] == ["dir/Events"]
    err = raised(DataError, lambda: dataset(path, ["MET_pt"], tree="Events"))
    assert "Did you mean 'dir/Events'?" in str(err) and err.available == ("dir/Events",)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.root"
    from_dataset = raised(DataError, lambda: dataset(missing, ["MET_pt"]))
    assert "does not exist" in str(from_dataset)
    assert (from_dataset.file, from_dataset.group) == (str(missing), "g")
    from_inspect = raised(DataError, lambda: inspect_file(missing))
    assert "does not exist" in str(from_inspect) and from_inspect.file == str(missing)


def test_empty_glob_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.root")
    err = raised(DataError, lambda: dataset(Path(pattern), ["MET_pt"]))
    assert err.file == pattern and err.key is None


# -- job files ----------------------------------------------------------------------------


def test_unknown_job_key_names_the_file_the_key_and_its_line(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.root")
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(file=events, extra="").replace("  tree: Events", "  tre: Events"))
    err = raised(ConfigError, lambda: load_job(job))
    assert str(err).startswith(f"{job}, line 2: unknown key 'tre' in 'dataset'.")
    assert (err.file, err.key, err.line) == (str(job), "dataset.tre", 2)


def test_job_errors_in_lists_have_dotted_keys(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.root")
    text = JOB.format(file=events, extra="split: {train: 0.9, validation: 0.1, test: 0.1}\n")
    err = raised(ConfigError, lambda: job_from_text(text.replace("name: bkg", "name: sig")))
    assert (err.key, err.line, err.file) == ("dataset.groups[1].name", 5, None)
    err = raised(ConfigError, lambda: job_from_text(text))
    assert (err.key, err.line) == ("split", 6) and "must add up to 1" in str(err)


def test_invalid_yaml_has_a_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("dataset:\n  tree: [Events\n")
    err = raised(ConfigError, lambda: load_job(job))
    assert "invalid YAML" in str(err) and err.file == str(job) and err.line == 3


# -- features and bundles -----------------------------------------------------------------


def test_feature_errors_name_the_branch_and_the_key() -> None:
    spec = FeatureSpec.from_dict({"flat": ["MET_pt"], "collections": {
        "Jet": {"fields": ["pt"], "n": 2}}})
    err = raised(FeatureError, lambda: spec.transform({"MET_ptt": np.zeros(2)}))
    assert err.branch == "MET_pt" and "is missing from the events" in str(err)
    err = raised(FeatureError, lambda: FeatureSpec.from_dict(
        {"collections": {"Jet": {"fields": ["pt"], "n": 0}}}))
    assert (err.feature, err.key) == ("Jet", "collections.Jet.n")


def test_bundle_errors_name_the_bundle_and_the_file(tmp_path: Path) -> None:
    err = raised(BundleError, lambda: ModelBundle.load(tmp_path / "none"))
    assert err.bundle == str(tmp_path / "none") and err.file is None
    (tmp_path / "b").mkdir()
    err = raised(BundleError, lambda: ModelBundle.load(tmp_path / "b"))
    assert "is not a complete model bundle" in str(err) and err.file is None  # no model
    (tmp_path / "b" / MODEL_FILE).write_bytes(b"")
    err = raised(BundleError, lambda: ModelBundle.load(tmp_path / "b"))
    assert f"{FEATURES_FILE}, {METADATA_FILE}, {METRICS_FILE} missing" in str(err)
    assert (err.bundle, err.file) == (str(tmp_path / "b"), FEATURES_FILE)


# -- attributes everywhere ----------------------------------------------------------------


def test_attributes_survive_pickling_and_details_lists_the_set_ones() -> None:
    err = DataError("Branch 'x' is missing.", file="a.root", branch="x", key="x",
                    available=["z", "y"])
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DataError and str(again) == "Branch 'x' is missing."
    assert again.details() == {"file": "a.root", "branch": "x", "key": "x",
                               "available": ("y", "z")}
    assert ConfigError("bad", key="model.kind").details() == {"key": "model.kind"}
    assert MlaasError("plain").details() == {}


def test_a_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if absent
    err = raised(MissingExtra, lambda: require("dask_jobqueue", "slurm clusters"))
    assert str(err) == ("The optional package 'dask_jobqueue' is needed for slurm clusters "
                        "but is not installed.\nInstall it with:  pip install "
                        "'mlaas_dask[jobqueue]'")
    assert (err.module, err.extra) == ("dask_jobqueue", "jobqueue")
    with pytest.raises(ImportError):
        require("mlaas_no_such_module")
    assert available("numpy") and not available("mlaas_no_such_module.sub")
