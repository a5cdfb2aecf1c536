"""Model bundles: atomic writes, safe archives, refusal of anything incomplete or unsafe."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xgboost

from mlaas_dask.bundle import ModelBundle, export_archive, extract_archive, write_bundle
from mlaas_dask.errors import BundleError
from mlaas_dask.features import Collection, FeatureSpec

SPEC = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=2)})


def tiny_model(n_features: int = 4) -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, n_features)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2},
                            xgboost.DMatrix(X, y), 5)
    return bytes(booster.save_raw("ubj"))


def make_bundle(path: Path, **kwargs) -> Path:
    return write_bundle(path, model=tiny_model(), spec=SPEC,
                        metadata={"classes": ["background", "signal"]},
                        metrics={"auc": 0.9}, **kwargs)


def test_round_trip_and_archive(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    loaded = ModelBundle.load(bundle)
    events = {"MET_pt": np.array([10.0, 80.0]),
              "Jet_pt": __import__("awkward").Array([[50.0, 20.0], []])}
    scores = loaded.predict_events(events)
    assert scores.shape == (2,) and loaded.output_names == ["score"]
    archive = export_archive(bundle, tmp_path / "b.tar.gz")
    again = ModelBundle.load(archive)
    np.testing.assert_array_equal(again.predict_events(events), scores)
    assert again.feature_names == ["MET_pt", "nJet", "Jet_pt_0", "Jet_pt_1"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        make_bundle(tmp_path / "b", extra_files={"roc.png": "not bytes"})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_bundles(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists. Choose another --out"):
        make_bundle(tmp_path / "b")
    make_bundle(tmp_path / "b", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep")
    with pytest.raises(BundleError, match="is not an mlaas_dask bundle; it is never overwritten"):
        make_bundle(other, overwrite=True)
    assert (other / "a.txt").read_text() == "keep"


def test_incomplete_and_inconsistent_bundles_are_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.ubj").rename(tmp_path / "model.ubj")
    with pytest.raises(BundleError, match=r"not a complete model bundle: model.ubj or model.skops or model.pkl missing"):
        ModelBundle.load(bundle)
    (tmp_path / "model.ubj").rename(bundle / "model.ubj")
    spec = FeatureSpec(flat=["a", "b"])
    (bundle / "features.json").write_text(spec.to_json())
    with pytest.raises(BundleError, match="expects 4 features but features.json describes 2"):
        ModelBundle.load(bundle)
    metadata = json.loads((bundle / "metadata.json").read_text())
    (bundle / "metadata.json").write_text(json.dumps({**metadata, "format": "pickle"}))
    with pytest.raises(BundleError, match="does not mark an mlaas_dask bundle"):
        ModelBundle.load(bundle)


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.ubj").write_bytes(b"\x80\x04\x95pickle-bytes")
    with pytest.raises(BundleError, match="model.ubj is not a readable XGBoost model"):
        ModelBundle.load(bundle)


def archive_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


@pytest.mark.parametrize("members, message", [
    ([member("/etc/passwd")], "absolute or parent path"),
    ([member("b/../../evil")], "absolute or parent path"),
    ([member("b/model.ubj", tarfile.SYMTYPE, link="/etc/shadow")], "not a regular file"),
    ([member("b/model.ubj", tarfile.LNKTYPE, link="b/x")], "not a regular file"),
    ([member("b/dev", tarfile.CHRTYPE)], "not a regular file"),
    ([member("b/c/d/model.ubj")], "nested too deep"),
    ([member(f"b/f{i}") for i in range(65)], "at most 64 allowed"),
])
def test_unsafe_archives_are_refused(tmp_path: Path, members, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        extract_archive(archive_with(members), tmp_path / "x", name="upload.tar.gz")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_garbage_archive(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="upload.tar.gz is not a readable .tar.gz archive"):
        extract_archive(b"definitely not gzip", tmp_path / "x", name="upload.tar.gz")
