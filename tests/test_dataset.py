"""Datasets: lazy partitions, column projection and bad-input messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask_awkward as dak
import pytest
import uproot

from mlaas_dask.data.dataset import Dataset, Group
from mlaas_dask.errors import DataError

from conftest import write_events


def dataset(files: list[str | Path], branches: list[str], tree: str = "Events",
            **kwargs) -> Dataset:
    return Dataset([Group("g", tuple(str(f) for f in files))], tree, branches, **kwargs)


def test_partitions_are_known_without_reading(tmp_path: Path) -> None:
    a = write_events(tmp_path / "a.root", n=1000)
    b = write_events(tmp_path / "b.root", n=250, seed=1)
    ds = dataset([tmp_path / "*.root"], ["MET_pt", "Jet_pt"], step_size=400)
    assert [(p.path, p.start, p.stop) for p in ds.partitions] == [
        (str(a), 0, 400), (str(a), 400, 800), (str(a), 800, 1000), (str(b), 0, 250)]
    array = ds.to_dask_awkward()
    assert array.npartitions == 4 and array.divisions == (0, 400, 800, 1000, 1250)
    assert ds.jagged == {"MET_pt": False, "Jet_pt": True}


def test_only_the_needed_branches_are_read(nanoaod: Path) -> None:
    """Column projection on the real NanoAOD file (947 branches)."""
    with uproot.open(nanoaod) as f:
        assert len(f["Events"].keys()) > 900
    ds = dataset([nanoaod], ["MET_pt", "Jet_pt", "Jet_eta"],
                 optional_branches=["run", "luminosityBlock", "event", "no_such_id"])
    assert ds.optional_present == ["run", "luminosityBlock", "event"]
    array = ds.to_dask_awkward()
    assert sorted(array.fields) == sorted(ds.branches)
    (columns,) = dak.report_necessary_columns(array).values()
    assert set(columns) == set(ds.branches)
    partition = array.partitions[0].compute()
    assert sorted(partition.fields) == sorted(ds.branches) and len(partition) == 200


def test_missing_path_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"File '.*nope.root' \(group 'g'\) does not exist"):
        dataset([tmp_path / "nope.root"], ["MET_pt"])
    with pytest.raises(DataError, match=r"No file matches '.*\*.root' \(group 'g'\).*mlaas sample"):
        dataset([tmp_path / "*.root"], ["MET_pt"])


def test_wrong_tree_lists_trees_closest_first(zz: Path) -> None:
    with pytest.raises(DataError) as err:
        dataset([zz], ["MET_px"], tree="event")
    message = str(err.value)
    assert "Tree 'event' is not in" in message and "zz.root" in message
    assert "Did you mean 'events'?" in message and "dataset.tree" in message


def test_missing_branch_lists_closest_names(zz: Path) -> None:
    with pytest.raises(DataError) as err:
        dataset([zz], ["MET_pt"], tree="events")
    message = str(err.value)
    assert message.startswith("Branch 'MET_pt' is not in tree 'events' of")
    assert "Did you mean 'MET_p" in message and "'MET_px'" in message


def test_different_schemas_are_refused(tmp_path: Path) -> None:
    import numpy as np

    write_events(tmp_path / "a.root")
    write_events(tmp_path / "b.root", extra={"MET_pt": np.zeros(1000, np.int32)})
    with pytest.raises(DataError) as err:
        dataset([tmp_path / "a.root", tmp_path / "b.root"], ["MET_pt"])
    assert "different schemas: branch 'MET_pt' is float in" in str(err.value)
    assert "a.root" in str(err.value) and "int32_t in" in str(err.value)


def test_empty_file_is_named(tmp_path: Path) -> None:
    write_events(tmp_path / "empty.root", n=0)
    with pytest.raises(DataError, match=r"Tree 'Events' of .*empty.root has no events"):
        dataset([tmp_path / "empty.root"], ["MET_pt"])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_files_are_named_without_hanging(tmp_path: Path, hep_tutorial: Path,
                                                  damage: str) -> None:
    path = tmp_path / f"{damage}.root"
    if damage == "truncated":
        shutil.copy(hep_tutorial / "ww.root", path)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.write_bytes(b"this is not a ROOT file\n" * 100)
    with pytest.raises(DataError) as err:
        dataset([path], ["MET_px"], tree="events")
    message = str(err.value)
    assert f"{damage}.root" in message and "truncated, corrupt" in message
