"""Generated sample data: schema, determinism, physics, compression, safe writing, CLI."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas_dask.cli import main
from mlaas_dask.cli.sample import parse_event_count
from mlaas_dask.data import sample
from mlaas_dask.data.sample import event_counts, generate_sample, parse_compression
from mlaas_dask.errors import MlaasError

EXPECTED_TYPES = {
    "run": "uint32_t",
    "luminosityBlock": "uint32_t",
    "event": "uint64_t",
    "nJet": "int32_t",
    "Jet_pt": "float[]",
    "Jet_eta": "float[]",
    "Jet_phi": "float[]",
    "Jet_mass": "float[]",
    "Jet_btagDeepB": "float[]",
    "nMuon": "int32_t",
    "Muon_pt": "float[]",
    "Muon_eta": "float[]",
    "Muon_phi": "float[]",
    "Muon_charge": "int32_t[]",
    "nElectron": "int32_t",
    "Electron_pt": "float[]",
    "Electron_eta": "float[]",
    "Electron_phi": "float[]",
    "Electron_charge": "int32_t[]",
    "MET_pt": "float",
    "MET_phi": "float",
    "PV_npvs": "int32_t",
    "genWeight": "float",
}


def read(path: Path) -> ak.Array:
    with uproot.open(path) as file:
        return file["Events"].arrays()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return generate_sample(tmp_path_factory.mktemp("sample"), 20_000, seed=3)


@pytest.fixture(scope="module")
def events(small: dict[str, list[Path]]) -> dict[str, ak.Array]:
    return {name: read(paths[0]) for name, paths in small.items()}


def test_writes_one_file_per_class_with_nanoaod_branches(small: dict[str, list[Path]]) -> None:
    assert {name: [p.name for p in paths] for name, paths in small.items()} == {
        "signal": ["signal.root"], "background": ["background.root"],
    }
    for paths in small.values():
        with uproot.open(paths[0]) as file:
            assert file.keys(cycle=False) == ["Events"]
            tree = file["Events"]
            assert tree.num_entries == 10_000
            assert {k: b.typename for k, b in tree.items()} == EXPECTED_TYPES
    assert sorted(p.name for p in small["signal"][0].parent.iterdir()) == [
        "background.root", "signal.root"]


def test_same_seed_same_events_other_seed_other_events(tmp_path: Path,
                                                       small: dict[str, list[Path]]) -> None:
    again = generate_sample(tmp_path / "again", 20_000, seed=3)
    other = generate_sample(tmp_path / "other", 20_000, seed=4)
    for name in ("signal", "background"):
        reference = read(small[name][0])
        assert ak.array_equal(read(again[name][0]), reference)
        assert not ak.array_equal(read(other[name][0]).Jet_pt, reference.Jet_pt)


def test_event_ids_are_unique_and_carry_no_class(events: dict[str, ak.Array]) -> None:
    ids = np.concatenate([ak.to_numpy(a.event) for a in events.values()])
    assert len(np.unique(ids)) == len(ids) == 20_000
    signal, background = (ak.to_numpy(events[n].event) for n in ("signal", "background"))
    assert abs(int(signal.max()) - int(background.max())) <= 2
    for array in events.values():
        assert np.all(ak.to_numpy(array.run) == 1)
        lumi = ak.to_numpy(array.luminosityBlock)
        assert lumi.min() >= 1 and np.all(np.diff(lumi.astype(np.int64)) >= 0)


def test_objects_are_sorted_and_physical(events: dict[str, ak.Array]) -> None:
    for array in events.values():
        assert ak.all(ak.num(array.Jet_pt) == array.nJet)
        for collection in ("Jet", "Muon", "Electron"):
            pt = array[f"{collection}_pt"]
            assert ak.all(pt[:, :-1] >= pt[:, 1:]), f"{collection} not sorted by falling pt"
            phi = ak.flatten(array[f"{collection}_phi"])
            assert ak.all(abs(phi) <= np.float32(np.pi))
        assert ak.min(array.Jet_pt) >= 20 and ak.all(abs(array.Jet_eta) < 4.7)
        assert ak.all(abs(array.Muon_eta) < 2.4) and ak.all(abs(array.Electron_eta) < 2.5)
        btag = ak.flatten(array.Jet_btagDeepB)
        assert ak.all((btag >= 0) & (btag <= 1))
        assert ak.all(ak.flatten(array.Jet_mass) > 0)
        assert set(np.unique(ak.to_numpy(ak.flatten(array.Muon_charge)))) == {-1, 1}
        assert ak.all(array.MET_pt >= 0) and ak.all(array.genWeight > 0)
        assert ak.all(array.PV_npvs >= 1)


def test_signal_has_more_jets_btags_and_harder_met_with_overlap(
        events: dict[str, ak.Array]) -> None:
    def summary(a: ak.Array) -> dict[str, float]:
        return {
            "jets": float(ak.mean(a.nJet)),
            "btags": float(ak.mean(ak.sum(a.Jet_btagDeepB > 0.5, axis=1))),
            "met": float(ak.mean(a.MET_pt)),
            "leading_jet": float(ak.mean(ak.firsts(a.Jet_pt))),
            "ht": float(ak.mean(ak.sum(a.Jet_pt, axis=1))),
        }

    signal, background = summary(events["signal"]), summary(events["background"])
    assert signal["jets"] > background["jets"] + 1
    assert signal["btags"] > 2.5 * background["btags"]
    assert signal["met"] > 1.2 * background["met"]
    assert signal["leading_jet"] > 1.2 * background["leading_jet"]
    assert signal["ht"] > 1.4 * background["ht"]
    # real overlap: busy background events and quiet signal events both exist
    assert float(ak.mean(events["background"].nJet >= 5)) > 0.1
    assert float(ak.mean(events["signal"].nJet <= 3)) > 0.1
    # pileup does not depend on the process
    assert float(ak.mean(events["background"].PV_npvs)) == pytest.approx(
        float(ak.mean(events["signal"].PV_npvs)), rel=0.05)


def padded(array: ak.Array, n: int) -> np.ndarray:
    return ak.to_numpy(ak.fill_none(ak.pad_none(array, n, clip=True), np.nan)).astype(np.float32)


def test_a_bdt_separates_well_but_not_perfectly(events: dict[str, ak.Array]) -> None:
    import xgboost
    from sklearn.metrics import roc_auc_score

    def matrix(a: ak.Array) -> np.ndarray:
        columns = [ak.to_numpy(a[b]).astype(np.float32)[:, None]
                   for b in ("nJet", "nMuon", "nElectron", "MET_pt", "PV_npvs")]
        columns += [padded(a[f"Jet_{f}"], 6) for f in ("pt", "eta", "mass", "btagDeepB")]
        columns += [padded(a[f"{c}_pt"], 1) for c in ("Muon", "Electron")]
        return np.hstack(columns)

    x = np.vstack([matrix(events["signal"]), matrix(events["background"])])
    y = np.r_[np.ones(10_000), np.zeros(10_000)]
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    model = xgboost.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1,
                                  n_jobs=1, tree_method="hist")
    model.fit(x[:12_000], y[:12_000])
    auc = roc_auc_score(y[12_000:], model.predict_proba(x[12_000:])[:, 1])
    assert 0.84 < auc < 0.94


def test_files_per_class_and_signal_fraction(tmp_path: Path) -> None:
    paths = generate_sample(tmp_path, 1001, files_per_class=3, signal_fraction=0.25, seed=1)
    assert [p.name for p in paths["signal"]] == [f"signal_{i:03d}.root" for i in range(3)]
    assert [p.name for p in paths["background"]] == [
        f"background_{i:03d}.root" for i in range(3)]
    entries = {name: [len(read(p)) for p in group] for name, group in paths.items()}
    assert entries == event_counts(1001, 0.25, 3) == {"signal": [84, 83, 83],
                                                      "background": [251, 250, 250]}
    ids = np.concatenate([ak.to_numpy(read(p).event) for g in paths.values() for p in g])
    assert len(np.unique(ids)) == 1001


def test_an_empty_class_still_gives_a_readable_tree(tmp_path: Path) -> None:
    paths = generate_sample(tmp_path, 10, signal_fraction=0.0)
    assert len(read(paths["signal"][0])) == 0
    assert len(read(paths["background"][0])) == 10


@pytest.mark.parametrize("text, code", [
    ("none", 100), ("zlib:4", 104), ("zlib", 101), ("lzma:2", 202), ("lz4:1", 401),
    ("ZSTD:3", 503),
])
def test_compression_choices(tmp_path: Path, text: str, code: int) -> None:
    paths = generate_sample(tmp_path, 400, compression=text)
    with uproot.open(paths["signal"][0]) as file:
        assert file.file.fCompress == code
        assert file["Events"].num_entries == 200
    assert ak.array_equal(read(paths["signal"][0]),
                          read(generate_sample(tmp_path / "ref", 400, compression="none")
                               ["signal"][0]))


@pytest.mark.parametrize("text, expected", [
    ("lzo:3", "Unknown compression 'lzo:3'. Did you mean 'lz4'"),
    ("zlib:11", "the zlib level must be between 1 and 9"),
    ("zstd:fast", "level that is not a whole number"),
    ("lz4:0", "lz4 level must be between 1 and 12, or use 'none'"),
])
def test_bad_compression_is_explained(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(MlaasError) as info:
        generate_sample(tmp_path, 10, compression=text)
    assert expected in str(info.value)
    assert not any(tmp_path.iterdir())


def test_parse_compression_returns_uproot_codecs() -> None:
    assert parse_compression("none") is None
    codec = parse_compression("lzma")
    assert isinstance(codec, uproot.LZMA) and codec.level == 7


@pytest.mark.parametrize("kwargs, expected", [
    ({"events": 0}, "number of events must be a positive whole number"),
    ({"events": 10, "files_per_class": 0}, "files_per_class must be a positive"),
    ({"events": 10, "signal_fraction": 1.5}, "signal_fraction must be between 0 and 1"),
    ({"events": 10, "seed": -1}, "seed must be a non-negative"),
])
def test_bad_arguments_are_explained(tmp_path: Path, kwargs: dict, expected: str) -> None:
    with pytest.raises(MlaasError, match=expected):
        generate_sample(tmp_path, **kwargs)


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    paths = generate_sample(tmp_path, 100, seed=1)
    before = paths["background"][0].read_bytes()
    with pytest.raises(MlaasError) as info:
        generate_sample(tmp_path, 100, seed=2)
    message = str(info.value)
    assert str(paths["signal"][0]) in message and "--overwrite" in message
    assert paths["background"][0].read_bytes() == before
    generate_sample(tmp_path, 100, seed=2, overwrite=True)
    assert paths["background"][0].read_bytes() != before


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_run_leaves_no_complete_looking_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      error: BaseException) -> None:
    monkeypatch.setattr(sample, "CHUNK_EVENTS", 50)
    real = sample._generate_events
    calls = []

    def failing(rng: np.random.Generator, name: str, n: int) -> dict:
        calls.append(name)
        if name == "signal" and calls.count("signal") == 3:
            raise error
        return real(rng, name, n)

    monkeypatch.setattr(sample, "_generate_events", failing)
    with pytest.raises(type(error)):
        generate_sample(tmp_path, 1000)
    assert list(tmp_path.iterdir()) == []


def test_parse_event_count() -> None:
    assert [parse_event_count(t) for t in ("200000", "200k", "2M", "1e6", "2_000_000",
                                           "1.5k")] == [200_000, 200_000, 2_000_000,
                                                        1_000_000, 2_000_000, 1500]
    for bad in ("2x", "-5", "0", "0.5"):
        with pytest.raises(MlaasError):
            parse_event_count(bad)


def test_cli_writes_and_reports(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "data"
    code = main(["sample", "--out", str(out), "--events", "2k", "--seed", "5",
                 "--compression", "lz4:1", "--files-per-class", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Wrote 2,000 events in" in captured.out and "events/s" in captured.out
    for name in ("signal_000.root", "signal_001.root", "background_000.root",
                 "background_001.root"):
        assert str(out / name) in captured.out
        assert (out / name).is_file()
    assert "500 events" in captured.out


@pytest.mark.parametrize("args, expected", [
    (["--events", "lots"], "--events 'lots' is not a number of events"),
    (["--events", "10", "--compression", "gzip:4"], "Unknown compression 'gzip:4'"),
    (["--events", "10", "--files-per-class", "0"], "files_per_class must be a positive"),
])
def test_cli_bad_input_exits_2_with_a_message(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, args: list[str],
                                              expected: str) -> None:
    code = main(["sample", "--out", str(tmp_path / "x"), *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("mlaas sample: error: ") and expected in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_existing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sample", "--out", str(tmp_path), "--events", "100"]) == 0
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path), "--events", "100"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "signal.root") in err and "--overwrite" in err
    assert main(["sample", "--out", str(tmp_path), "--events", "100", "--overwrite"]) == 0


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--compression" in out and "Jet_pt" in out
