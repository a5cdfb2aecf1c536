"""``mlaas inspect``: the report on real CMS files and generated ones, the suggested
features, and the messages for bad input."""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from mlaas_dask.cli import main
from mlaas_dask.data.inspect import (
    format_report,
    inspect_file,
    inspect_files,
    multiplicity_stats,
    pick_tree,
    suggest,
    suggest_features,
)
from mlaas_dask.data.sample import generate_sample
from mlaas_dask.errors import DataError
from mlaas_dask.features.spec import FeatureSpec


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, 6000, seed=11, compression="lz4:3")
    return out


def branch(report: dict[str, Any], name: str, tree: str | None = None) -> dict[str, Any]:
    return next(b for b in pick_tree(report, tree)["branches"] if b["name"] == name)


def by_hand(path: Path, tree: str, jagged_branch: str, stop: int | None = None) -> dict:
    """Multiplicity statistics from the jagged branch itself, not from its counter."""
    with uproot.open(path) as file:
        counts = ak.to_numpy(ak.num(file[tree][jagged_branch].array(entry_stop=stop), axis=1))
    return {
        "mean": counts.mean(),
        "p95": np.percentile(counts, 95),
        "p99": np.percentile(counts, 99),
        "max": counts.max(),
    }


def write_tree(file: Any, name: str, branches: dict[str, np.ndarray]) -> None:
    """A TTree (assigning a dict to a file would write an RNTuple)."""
    file.mktree(name, {k: v.dtype for k, v in branches.items()}).extend(branches)


def finishes(call: Callable[[], Any], seconds: float = 60) -> BaseException | None:
    """Run ``call`` in a thread; fail the test if it hangs; return what it raised."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"inspect did not finish within {seconds} s"
    return outcome[0]


# -- the report ---------------------------------------------------------------------------


def test_hep_tutorial_file(zz: Path) -> None:
    report = inspect_file(zz)
    assert report["path"] == str(zz) and report["size_bytes"] == zz.stat().st_size
    [tree] = report["trees"]
    assert tree["name"] == "events" and tree["entries"] == 2421
    assert tree["compression"] == {"algorithm": "zlib", "level": 1}
    assert len(tree["branches"]) == 51 and tree["sampled_events"] == 2421
    njet = branch(report, "NJet")
    assert (njet["type"], njet["jagged"], njet["is_counter"]) == ("int32_t", False, True)
    px = branch(report, "Jet_Px")
    assert (px["type"], px["jagged"], px["counter"]) == ("float[]", True, "NJet")
    assert branch(report, "Jet_ID")["type"] == "bool[]"
    assert branch(report, "MET_px")["multiplicity"] is None
    for name, counter in (("Jet_Px", "NJet"), ("Muon_Iso", "NMuon"), ("Photon_E", "NPhoton")):
        expected = by_hand(zz, "events", name)
        got = branch(report, name)["multiplicity"]
        assert got == pytest.approx(expected), name
        assert branch(report, name)["counter"] == counter


def test_real_nanoaod_file(nanoaod: Path) -> None:
    report = inspect_file(nanoaod)
    [tree] = report["trees"]
    assert (tree["name"], tree["entries"], len(tree["branches"])) == ("Events", 200, 947)
    assert tree["compression"]["algorithm"] == "zlib"
    jet_pt = branch(report, "Jet_pt")
    assert (jet_pt["jagged"], jet_pt["counter"], jet_pt["type"]) == (True, "nJet", "float[]")
    assert jet_pt["multiplicity"] == pytest.approx(by_hand(nanoaod, "Events", "Jet_pt"))
    assert branch(report, "nJet")["is_counter"]
    assert branch(report, "event")["type"] == "uint64_t"
    assert sum(b["jagged"] for b in tree["branches"]) == 344


def test_multiplicity_comes_from_the_first_sample_events(sample_dir: Path) -> None:
    path = sample_dir / "signal.root"
    report = inspect_file(path, sample_events=1000)
    tree = pick_tree(report)
    assert tree["entries"] == 3000 and tree["sampled_events"] == 1000
    assert branch(report, "Jet_pt")["multiplicity"] == pytest.approx(
        by_hand(path, "Events", "Jet_pt", stop=1000))
    assert branch(report, "Muon_charge")["multiplicity"] == pytest.approx(
        by_hand(path, "Events", "Muon_pt", stop=1000))
    assert branch(report, "Jet_pt")["multiplicity"] != pytest.approx(
        by_hand(path, "Events", "Jet_pt"))


def test_multiplicity_stats_by_hand() -> None:
    counts = np.array([0, 1, 1, 2, 2, 2, 3, 9] * 5)
    assert multiplicity_stats(counts) == {
        "mean": pytest.approx(2.5), "p95": pytest.approx(np.percentile(counts, 95)),
        "p99": pytest.approx(np.percentile(counts, 99)), "max": 9,
    }
    assert multiplicity_stats(np.array([], dtype=int)) is None


@pytest.mark.parametrize("compression, expected", [
    ("none", {"algorithm": "none", "level": 0}),
    ("zlib:6", {"algorithm": "zlib", "level": 6}),
    ("lzma:2", {"algorithm": "lzma", "level": 2}),
    ("lz4:1", {"algorithm": "lz4", "level": 1}),
    ("zstd:4", {"algorithm": "zstd", "level": 4}),
])
def test_compression_is_reported(tmp_path: Path, compression: str, expected: dict) -> None:
    generate_sample(tmp_path, 2000, compression=compression)
    assert pick_tree(inspect_file(tmp_path / "signal.root"))["compression"] == expected


def test_trees_in_subdirectories_and_other_objects(tmp_path: Path) -> None:
    path = tmp_path / "nested.root"
    with uproot.recreate(path) as file:
        write_tree(file, "top", {"x": np.arange(5, dtype=np.float64)})
        write_tree(file, "dir/sub/Events", {"y": np.arange(7, dtype=np.int32)})
        file["hist"] = np.histogram(np.arange(10), bins=5)
        file["ntuple"] = {"z": np.arange(3)}
    report = inspect_file(path)
    assert sorted(t["name"] for t in report["trees"]) == ["dir/sub/Events", "ntuple", "top"]
    assert report["other_objects"] == {"hist": "TH1D"}
    only = inspect_file(path, tree="Events")
    assert [t["name"] for t in only["trees"]] == ["dir/sub/Events"]
    assert pick_tree(only)["entries"] == 7
    assert pick_tree(report)["name"] == "dir/sub/Events"


# -- suggested features -------------------------------------------------------------------


def test_suggestion_for_the_generated_sample(sample_dir: Path) -> None:
    path = sample_dir / "background.root"
    report = inspect_file(path)
    block = suggest_features(report)
    with uproot.open(path) as file:
        njet = file["Events"]["nJet"].array(library="np")
    assert block == {
        "flat": ["MET_pt", "MET_phi", "PV_npvs"],
        "collections": {
            "Jet": {"fields": ["pt", "eta", "phi", "mass", "btagDeepB"],
                    "n": math.ceil(np.percentile(njet, 95)), "sort_by": "pt",
                    "multiplicity": True},
            "Muon": {"fields": ["pt", "eta", "phi", "charge"], "n": 1, "sort_by": "pt",
                     "multiplicity": True},
            "Electron": {"fields": ["pt", "eta", "phi", "charge"], "n": 1, "sort_by": "pt",
                         "multiplicity": True},
        },
    }
    spec = FeatureSpec.from_dict(block)
    with uproot.open(path) as file:
        matrix = spec.transform(file["Events"].arrays(spec.branches(), entry_stop=500))
    assert matrix.shape == (500, spec.n_features)


def test_suggestion_for_the_hep_tutorial_sorts_by_computed_pt(zz: Path) -> None:
    block = suggest_features(inspect_file(zz))
    flat = block["flat"]
    assert flat == ["MET_px", "MET_py", "NPrimaryVertices"]
    jet = block["collections"]["Jet"]
    assert jet["derived"] == {"pt": "hypot(Px, Py)"} and jet["sort_by"] == "pt"
    assert jet["fields"] == ["pt", "Px", "Py", "Pz", "E", "btag"]
    assert jet["n"] == math.ceil(by_hand(zz, "events", "Jet_Px")["p95"])
    assert set(block["collections"]) == {"Jet", "Muon", "Electron", "Photon"}
    spec = FeatureSpec.from_dict(block)
    with uproot.open(zz) as file:
        events = file["events"].arrays(spec.branches(), entry_stop=300)
    matrix = spec.transform(events)
    hardest = ak.max(np.hypot(events.Jet_Px, events.Jet_Py), axis=1)
    np.testing.assert_allclose(matrix[:, spec.feature_names.index("Jet_pt_0")],
                               ak.to_numpy(ak.fill_none(hardest, np.nan)), rtol=1e-6)


def test_suggestion_for_nanoaod_leaves_out_ids_weights_truth_and_triggers(
        nanoaod: Path) -> None:
    report = inspect_file(nanoaod)
    block = suggest_features(report)
    flat = set(block["flat"])
    assert {"MET_pt", "PV_npvs", "fixedGridRhoFastjetAll"} <= flat
    assert not flat & {"run", "event", "luminosityBlock", "genWeight", "nJet", "HTXS_Higgs_pt"}
    assert not any(name.startswith(("HLT_", "Flag_", "L1_")) for name in flat)
    collections = block["collections"]
    assert not any(name.startswith(("Gen", "LHE")) for name in collections)
    jet = collections["Jet"]
    assert {"pt", "eta", "phi", "mass", "btagDeepB"} <= set(jet["fields"])
    assert not {"genJetIdx", "hadronFlavour", "partonFlavour", "jetIdx"} & set(jet["fields"])
    assert jet["sort_by"] == "pt"
    assert jet["n"] == math.ceil(by_hand(nanoaod, "Events", "Jet_pt")["p95"])
    spec = FeatureSpec.from_dict(block)
    with uproot.open(nanoaod) as file:
        matrix = spec.transform(file["Events"].arrays(spec.branches()))
    assert matrix.shape == (200, spec.n_features)


def test_flat_file_gets_no_collections(dimuon: Path) -> None:
    block = suggest_features(inspect_file(dimuon))
    assert "collections" not in block
    assert "M" in block["flat"] and "Run" not in block["flat"] and "Type" not in block["flat"]


def test_text_report_ends_with_pasteable_yaml(sample_dir: Path) -> None:
    report = inspect_file(sample_dir / "signal.root")
    text = format_report(report)
    assert "TTree 'Events': 3,000 entries, 23 branches (13 jagged), compression lz4:3" in text
    jet_line = next(line for line in text.splitlines() if line.strip().startswith("Jet_pt"))
    stats = branch(report, "Jet_pt")["multiplicity"]
    assert "[nJet]" in jet_line and f"{stats['mean']:.2f}" in jet_line
    assert jet_line.split()[-1] == str(stats["max"])
    tail = text[text.rindex("\nfeatures:\n") + 1:]
    assert yaml.safe_load(tail) == {"features": suggest_features(report)}
    assert "left out, event ids: run, luminosityBlock, event" in text


# -- bad input ----------------------------------------------------------------------------


def test_missing_file_names_it_and_suggests_neighbours(tmp_path: Path, zz: Path) -> None:
    shutil.copy(zz, tmp_path / "zz.root")
    with pytest.raises(DataError) as info:
        inspect_file(tmp_path / "zzz.root")
    message = str(info.value)
    assert str(tmp_path / "zzz.root") in message and "does not exist" in message
    assert "Did you mean 'zz.root'?" in message


def test_directory_is_refused_with_its_root_files(tmp_path: Path, zz: Path) -> None:
    shutil.copy(zz, tmp_path / "zz.root")
    with pytest.raises(DataError, match=r"is a directory; give one ROOT file inside it. "
                                        r"ROOT files in it: zz.root"):
        inspect_file(tmp_path)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty (0 bytes)"),
    (b"hello, this is text\n" * 50, "is not a ROOT file"),
    (b"root\x00\x00", "is truncated: it has only 6 bytes"),
])
def test_not_a_root_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.root"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        inspect_file(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_truncated_file_is_named_and_does_not_hang(tmp_path: Path, nanoaod: Path) -> None:
    path = tmp_path / "cut.root"
    data = nanoaod.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = finishes(lambda: inspect_file(path))
    assert isinstance(err, DataError)
    assert str(path) in str(err) and "truncated" in str(err)
    assert f"{len(data) // 2:,} bytes but its header says {len(data):,}" in str(err)


@pytest.mark.parametrize("source, tree", [("nanoaod", "Events"), ("zz", "events")])
def test_corrupt_file_is_named_and_does_not_hang(request: pytest.FixtureRequest,
                                                 tmp_path: Path, source: str,
                                                 tree: str) -> None:
    data = bytearray(request.getfixturevalue(source).read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, len(data) // 2, dtype=np.uint8)
    start = len(data) // 4
    data[start:start + len(noise)] = noise.tobytes()
    path = tmp_path / "corrupt.root"
    path.write_bytes(bytes(data))
    err = finishes(lambda: inspect_file(path, tree=tree))
    assert isinstance(err, DataError), err
    assert str(path) in str(err) and "corrupt" in str(err)


def test_unknown_tree_lists_the_closest_first(nanoaod: Path) -> None:
    with pytest.raises(DataError) as info:
        inspect_file(nanoaod, tree="events")
    message = str(info.value)
    assert f"Tree 'events' is not in {nanoaod}. Did you mean 'Events'?" in message
    assert "--tree" in message


def test_unknown_tree_among_several(tmp_path: Path) -> None:
    path = tmp_path / "many.root"
    with uproot.recreate(path) as file:
        for name in ("Runs", "Events", "LuminosityBlocks", "MetaData"):
            write_tree(file, name, {"x": np.arange(3)})
    with pytest.raises(DataError) as info:
        inspect_file(path, tree="Event")
    message = str(info.value)
    assert message.index("Did you mean 'Events'") < message.index("Available trees:")
    assert "Available trees: Events, LuminosityBlocks, MetaData, Runs." in message


def test_file_without_trees(tmp_path: Path) -> None:
    path = tmp_path / "hist.root"
    with uproot.recreate(path) as file:
        file["h"] = np.histogram(np.arange(4), bins=2)
    assert inspect_file(path)["trees"] == []
    assert "no TTree or RNTuple in this file" in format_report(inspect_file(path))
    with pytest.raises(DataError, match=r"has no TTree or RNTuple \(it holds: h \(TH1D\)\)"):
        inspect_file(path, tree="Events")


def test_rntuple_is_inspected_under_nanoaod_names(tmp_path: Path) -> None:
    """An RNTuple's collection fields show as NanoAOD branches (nJet, Jet_pt) with their
    multiplicities, as datasets read them."""
    generate_sample(tmp_path, 2000, format="rntuple")
    info = pick_tree(inspect_file(tmp_path / "signal.root"))
    assert info["kind"] == "RNTuple" and info["entries"] == 1000
    branches = {b["name"]: b for b in info["branches"]}
    assert branches["Jet_pt"]["jagged"] and branches["Jet_pt"]["counter"] == "nJet"
    assert branches["nJet"]["is_counter"] and not branches["MET_pt"]["jagged"]
    assert branches["Jet_pt"]["multiplicity"]["max"] >= 1
    shown = format_report(inspect_file(tmp_path / "signal.root"))
    assert "RNTuple 'Events': 1,000 entries" in shown


@pytest.mark.xrootd
def test_remote_files_are_opened_as_datasets_open_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect reads root:// and https:// URLs through the datasets' opener (the bearer
    token and the grid CA folder reach the server), and a wrong tree name is the same
    error as for a local file."""
    from conftest import require_programs, write_events
    from servers import NginxServer, XRootDServer, served_dir

    require_programs(("xrootd", "xrootd-server"), ("nginx", "nginx-light", "openssl"))
    token = "tok-" + "5c1e9a7b3d2f4e6a8b0c1d3e5f7a9b2c"
    root = served_dir()
    servers: list[Any] = []
    try:
        (root / "store").mkdir(mode=0o755)
        (root / "secure" / "store").mkdir(mode=0o755, parents=True)
        for folder in (root / "store", root / "secure" / "store"):
            write_events(folder / "ev.root", n=500).chmod(0o644)
        (root / "secure").chmod(0o755)
        xrootd = XRootDServer(["/store"], localroot=root).start()
        servers.append(xrootd)
        nginx = NginxServer(root, token=token).start()
        servers.append(nginx)
        monkeypatch.setenv("X509_CERT_DIR", str(nginx.ca_dir))
        monkeypatch.setenv("BEARER_TOKEN", token)
        for url in (f"{xrootd.url}//store/ev.root", f"{nginx.url}/secure/store/ev.root"):
            report = inspect_file(url)
            assert [(t["name"], t["entries"]) for t in report["trees"]] == [("Events", 500)]
            with pytest.raises(DataError) as info:
                inspect_file(url, tree="Event")
            assert str(info.value) == (
                f"Tree 'Event' is not in {url}. Did you mean 'Events'? Available trees: "
                "Events. Give one of them as the tree (dataset.tree in a job file, --tree "
                "for mlaas inspect).")
            assert info.value.file == url and info.value.key == "Event"
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


# -- command line -------------------------------------------------------------------------


def test_cli_prints_the_report(capsys: pytest.CaptureFixture[str], zz: Path) -> None:
    assert main(["inspect", str(zz)]) == 0
    out = capsys.readouterr().out
    assert "TTree 'events': 2,421 entries" in out and "Jet_Px" in out
    assert out.rstrip().splitlines()[-1].strip() == "multiplicity: true"
    assert "features:" in out


def test_cli_json(capsys: pytest.CaptureFixture[str], sample_dir: Path) -> None:
    assert main(["inspect", str(sample_dir / "signal.root"), "--json",
                 "--sample-events", "500"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trees"][0]["sampled_events"] == 500
    assert data["suggested_features"]["tree"] == "Events"
    assert data["suggested_features"]["features"]["flat"] == ["MET_pt", "MET_phi", "PV_npvs"]


@pytest.mark.parametrize("args, expected", [
    (["--tree", "Event"], "Tree 'Event' is not in {nanoaod}. Did you mean 'Events'?"),
    (["--sample-events", "0"], "sample_events must be at least 1"),
], ids=["unknown-tree", "no-sample-events"])
def test_cli_bad_tree_exits_2(capsys: pytest.CaptureFixture[str], nanoaod: Path,
                              args: list[str], expected: str) -> None:
    assert main(["inspect", str(nanoaod), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlaas inspect: error: ")
    assert expected.format(nanoaod=nanoaod) in err
    assert "Traceback" not in err


def test_cli_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.root"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--tree" in out and "--json" in out


# -- several files --------------------------------------------------------------------------


def test_several_files_merge_multiplicities_and_list_each_file(tmp_path: Path) -> None:
    generate_sample(tmp_path, 8000, files_per_class=2)
    paths = sorted(tmp_path.glob("*.root"))
    single = {p.name: branch(inspect_file(p, sample_events=1500), "Jet_pt")["multiplicity"]
              for p in paths}
    report = inspect_files([str(tmp_path / "*.root")], sample_events=1500)
    assert report["files"] == [str(p) for p in paths]
    merged = branch(report, "Jet_pt")["multiplicity"]
    assert merged["p95"] == max(m["p95"] for m in single.values())
    assert merged["max"] == max(m["max"] for m in single.values())
    assert pick_tree(report)["entries"] == 8000
    rows = {Path(r["path"]).name: r for r in report["per_file"]}
    assert set(rows) == {p.name for p in paths}
    assert rows["signal_000.root"]["multiplicity"]["nJet"] == single["signal_000.root"]
    text = format_report(report)
    assert "Per file (4 files):" in text and "nJet mean/p95/max" in text
    assert "multiplicities from 6,000 entries of 4 files" in text
    assert suggest_features(report)["collections"]["Jet"]["n"] == math.ceil(merged["p95"])


def test_several_files_from_the_command_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    generate_sample(tmp_path, 2000)
    assert main(["inspect", str(tmp_path / "signal.root"), str(tmp_path / "background.root"),
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in shown["per_file"]] == ["signal.root",
                                                                 "background.root"]
    assert main(["inspect", str(tmp_path / "nothing*.root")]) == 2
    assert "No file matches" in capsys.readouterr().err


def test_a_file_without_the_first_files_tree_is_named(tmp_path: Path) -> None:
    generate_sample(tmp_path, 1000)
    other = tmp_path / "other.root"
    with uproot.recreate(other) as file:
        write_tree(file, "Tree", {"x": np.arange(5, dtype=np.float64)})
    with pytest.raises(DataError, match=r"other.root has no tree 'Events'"):
        inspect_files([tmp_path / "signal.root", other])


def test_event_weight_hint_names_weight_branch(hep_tutorial: Path) -> None:
    _, skipped = suggest(inspect_file(hep_tutorial / "zz.root"))
    assert any("dataset.weight_branch" in reason and "EventWeight" in names
               for reason, names in skipped.items())


def test_a_missing_file_among_several_names_its_neighbours(tmp_path: Path) -> None:
    generate_sample(tmp_path, 1000)
    with pytest.raises(DataError, match=r"signl\.root does not exist\. Check the path\. Did "
                                        r"you mean 'signal\.root'"):
        inspect_files([tmp_path / "background.root", tmp_path / "signl.root"])
