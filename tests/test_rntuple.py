"""RNTuples (the HL-LHC format) read as TTrees do: the same events written both ways give
the same arrays, the same feature matrices and the same trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.data.rootio import branch_names, branch_types, read_entries
from mlaas_dask.data.sample import generate_sample
from mlaas_dask.errors import DataError, MlaasError

BRANCHES = ["nJet", "Jet_pt", "Jet_btagDeepB", "MET_pt", "PV_npvs", "event", "nMuon",
            "Muon_charge", "genWeight"]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ttree, rntuple = tmp_path_factory.mktemp("ttree"), tmp_path_factory.mktemp("rntuple")
    # more than one writing chunk (100k events), so RNTuple pages are extended too
    generate_sample(ttree, 240_000, seed=5)
    generate_sample(rntuple, 240_000, seed=5, format="rntuple")
    return ttree, rntuple


def test_the_same_events_read_from_both(both: tuple[Path, Path]) -> None:
    ttree, rntuple = both
    with uproot.open(ttree / "signal.root") as t, uproot.open(rntuple / "signal.root") as r:
        tree, ntuple = t["Events"], r["Events"]
        assert type(ntuple).__name__.endswith("RNTuple")
        assert set(branch_names(tree)) == set(branch_names(ntuple))
        assert branch_types(tree, BRANCHES)[1] == branch_types(ntuple, BRANCHES)[1]
        for start, stop in ((0, 120_000), (99_990, 100_010), (119_000, 120_000)):
            a = read_entries(tree, BRANCHES, start, stop)
            b = read_entries(ntuple, BRANCHES, start, stop)
            assert a.fields == b.fields == BRANCHES
            for name in BRANCHES:
                assert ak.all(a[name] == b[name]), name
                assert str(ak.type(a[name]).content) == str(ak.type(b[name]).content), name


def test_an_unknown_field_is_named(both: tuple[Path, Path]) -> None:
    with uproot.open(both[1] / "signal.root") as file, pytest.raises(KeyError, match="Jet_ptt"):
        read_entries(file["Events"], ["Jet_ptt"], 0, 10)


def test_a_job_names_the_closest_branches_of_an_rntuple(both: tuple[Path, Path]) -> None:
    from mlaas_dask.data.dataset import Dataset, Group

    group = Group("signal", (str(both[1] / "signal.root"),), label=1)
    with pytest.raises(DataError) as info:
        Dataset([group], "Events", ["Jet_ptt", "MET_pt"])
    assert "'Jet_ptt'" in str(info.value) and "Jet_pt" in str(info.value)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MlaasError, match=r"Unknown sample format 'rntupel'.*rntuple"):
        generate_sample(tmp_path, 100, format="rntupel")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_training_on_rntuples_equals_training_on_ttrees(client: Any, both: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    import yaml

    from mlaas_dask.job import load_job
    from mlaas_dask.train import train

    def job(folder: Path) -> Any:
        path = folder.parent / f"{folder.name}.yaml"
        path.write_text(yaml.safe_dump({
            "dataset": {"tree": "Events", "step_size": 60_000, "groups": [
                {"name": "signal", "files": [str(folder / "signal*.root")], "label": 1},
                {"name": "background", "files": [str(folder / "background*.root")],
                 "label": 0}]},
            "features": {"flat": ["MET_pt", "PV_npvs"],
                         "collections": {"Jet": {"fields": ["pt", "btagDeepB"], "n": 3}}},
            "model": {"params": {"max_depth": 3}, "num_boost_round": 10},
        }))
        return load_job(path)

    from mlaas_dask.bundle import ModelBundle

    a = train(job(both[0]), cluster=client, out=tmp_path / "ttree", progress=False)
    b = train(job(both[1]), cluster=client, out=tmp_path / "rntuple", progress=False)
    assert a.metrics["auc"] == b.metrics["auc"] > 0.7
    assert np.array_equal(ModelBundle.load(a.bundle).predict_events(_events(both[0])),
                          ModelBundle.load(b.bundle).predict_events(_events(both[1])))


def _events(folder: Path) -> ak.Array:
    with uproot.open(folder / "background.root") as file:
        return read_entries(file["Events"], BRANCHES, 0, 5000)
