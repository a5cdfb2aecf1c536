"""Model bundles: atomic writes, safe archives, refusal of anything incomplete or unsafe."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SPEC, make_bundle, tiny_model

from mlaas_dask.bundle import ModelBundle, export_archive, extract_archive, write_bundle
from mlaas_dask.errors import BundleError
from mlaas_dask.features import FeatureSpec
from mlaas_dask.outputs import DiskSpaceError

from disks import entries, fill, small_filesystem


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
    with pytest.raises(BundleError, match=r"already exists. Choose another --out"):
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
    with pytest.raises(BundleError, match=r"not a complete model bundle: model.ubj or "
                                          r"model.skops or model.onnx or model.pkl missing"):
        ModelBundle.load(bundle)
    (tmp_path / "model.ubj").rename(bundle / "model.ubj")
    spec = FeatureSpec(flat=["a", "b"])
    (bundle / "features.json").write_text(spec.to_json())
    with pytest.raises(BundleError, match=r"expects 4 features but features.json describes 2"):
        ModelBundle.load(bundle)
    metadata = json.loads((bundle / "metadata.json").read_text())
    (bundle / "metadata.json").write_text(json.dumps({**metadata, "format": "pickle"}))
    with pytest.raises(BundleError, match="does not mark an mlaas_dask bundle"):
        ModelBundle.load(bundle)


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.ubj").write_bytes(b"\x80\x04\x95pickle-bytes")
    with pytest.raises(BundleError, match=r"model.ubj is not a readable XGBoost model"):
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
    with pytest.raises(BundleError, match=r"upload.tar.gz is not a readable .tar.gz archive"):
        extract_archive(b"definitely not gzip", tmp_path / "x", name="upload.tar.gz")


# -- --overwrite never deletes what the bundle did not write -----------------------------

def test_overwrite_refuses_a_folder_with_user_files_and_names_them(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    written = json.loads((bundle / "metadata.json").read_text())["bundle_files"]
    assert written == sorted(p.name for p in bundle.iterdir())
    (bundle / "NOTES.txt").write_text("my notes")
    (bundle / "plots").mkdir()
    (bundle / "plots" / "extra.png").write_bytes(b"\x89PNG mine")
    before = (bundle / "model.ubj").read_bytes()
    with pytest.raises(BundleError) as err:
        write_bundle(bundle, model=tiny_model(), spec=SPEC, metadata={}, metrics={"auc": 0.5},
                     overwrite=True)
    message = str(err.value)
    assert "holds files the bundle did not write: NOTES.txt, plots/extra.png" in message
    assert "never deletes" in message and "move these files" in message
    assert "choose another --out" in message
    assert (bundle / "NOTES.txt").read_text() == "my notes"
    assert (bundle / "plots" / "extra.png").read_bytes() == b"\x89PNG mine"
    assert (bundle / "model.ubj").read_bytes() == before  # the old bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial or old folder
    # moved away, the bundle is replaced, and only what it writes is in the folder
    (bundle / "NOTES.txt").rename(tmp_path / "NOTES.txt")
    shutil.rmtree(bundle / "plots")
    write_bundle(bundle, model=tiny_model(), spec=SPEC, metadata={}, metrics={"auc": 0.5},
                 overwrite=True)
    assert json.loads((bundle / "metrics.json").read_text()) == {"auc": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NOTES.txt", "b"]


def test_overwrite_of_a_bundle_without_a_file_list(tmp_path: Path) -> None:
    """Bundles written before metadata.json listed their files: the bundle file names
    are the bundle's; anything else is the user's."""
    bundle = make_bundle(tmp_path / "b", extra_files={"roc.png": b"png"})
    metadata = json.loads((bundle / "metadata.json").read_text())
    del metadata["bundle_files"]
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    (bundle / "NOTES.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"did not write: NOTES.txt\."):
        make_bundle(bundle, overwrite=True)
    (bundle / "NOTES.txt").unlink()
    make_bundle(bundle, overwrite=True)
    assert sorted(p.name for p in bundle.iterdir()) == [
        "features.json", "metadata.json", "metrics.json", "model.ubj"]


def test_a_crafted_file_list_cannot_reach_outside(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    bundle = make_bundle(tmp_path / "b")
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata["bundle_files"] = ["../victim.txt", "/etc/hostname", *metadata["bundle_files"]]
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    make_bundle(bundle, overwrite=True)
    assert victim.read_text() == "keep"
    assert json.loads((bundle / "metadata.json").read_text())["bundle_files"] == [
        "features.json", "metadata.json", "metrics.json", "model.ubj"]


def test_overwrite_through_a_symlink_replaces_the_target(tmp_path: Path) -> None:
    real = make_bundle(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    write_bundle(link, model=tiny_model(), spec=SPEC, metadata={}, metrics={"auc": 0.7},
                 overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "metrics.json").read_text()) == {"auc": 0.7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .old, .partial
    # a link to a folder that does not exist yet: the bundle is made there
    dangling = tmp_path / "later"
    dangling.symlink_to(tmp_path / "made", target_is_directory=True)
    make_bundle(dangling)
    assert dangling.is_symlink() and ModelBundle.load(dangling).metrics == {"auc": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["later", "link", "made", "real"]


# -- archives: no temporary folders or partial files left ------------------------------

@pytest.fixture
def own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder (tempfile's) of this test alone, to see what is left in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_loading_an_archive_leaves_no_folder(tmp_path: Path, own_tmpdir: Path) -> None:
    archive = export_archive(make_bundle(tmp_path / "b"), tmp_path / "b.tar.gz")
    bundle = ModelBundle.load(archive)
    assert list(own_tmpdir.iterdir()) == []
    assert bundle.path == archive and bundle.metrics == {"auc": 0.9}
    assert bundle.predict_matrix(np.zeros((3, 4), np.float32)).shape == (3,)
    # a bad archive: the message names the archive, not a folder that is gone
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(archive_with([member("b/model.ubj", data=tiny_model()),
                                  member("b/metadata.json", data=b"{}"),
                                  member("b/metrics.json", data=b"{}")]))
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bad)
    assert str(bad) in str(err.value) and "features.json" in str(err.value)
    assert "mlaas-bundle-" not in str(err.value)
    assert list(own_tmpdir.iterdir()) == []


def test_user_code_of_an_archive_reaches_the_workers(client, tmp_path: Path,
                                                     own_tmpdir: Path) -> None:
    """share_code needs the bundle's user_model.py after the archive's folder is gone."""
    import skops.io
    from sklearn.linear_model import LogisticRegression

    from mlaas_dask.usercode import module_name

    source = b"MARK = 'from the bundle'\ndef model():\n    return None\n"
    rng = np.random.default_rng(1)
    estimator = LogisticRegression().fit(rng.normal(size=(50, 4)), rng.integers(0, 2, 50))
    bundle = write_bundle(tmp_path / "b", model=skops.io.dumps(estimator), spec=SPEC,
                          model_file="model.skops", metadata={}, metrics={},
                          extra_files={"user_model.py": source})
    name = module_name(source)
    # the user's code is kept (and shared) only for a bundle whose code the caller trusts
    loaded = ModelBundle.load(export_archive(bundle, tmp_path / "b.tar.gz"),
                              trusted_types=[f"{name}.Model"])
    assert list(own_tmpdir.iterdir()) == [] and loaded.user_code == source
    loaded.share_code(client)
    marks = client.run(lambda: __import__(name).MARK)
    assert set(marks.values()) == {"from the bundle"}


def test_a_failed_archive_leaves_no_partial_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "NOTES.txt").write_text("not part of the bundle")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)  # fails after the archive was written
    with pytest.raises(OSError, match="Input/output error"):
        export_archive(bundle, tmp_path / "b.tar.gz")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    archive = export_archive(bundle, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:  # only the bundle's own files are packed
        assert sorted(tar.getnames()) == [f"b/{n}" for n in (
            "features.json", "metadata.json", "metrics.json", "model.ubj")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.tar.gz"]


# -- a full disk: checked up front, and one clear message if it fills up meanwhile -------

@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "disk", "512k") as mounted:
        yield mounted


def plenty_of_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """shutil.disk_usage claims 100 GB free: only the number the up-front check reads,
    so that the write itself meets the real full disk."""
    real = shutil.disk_usage

    def claims(path):
        usage = real(path)
        return usage._replace(free=100 * 10**9)

    monkeypatch.setattr(shutil, "disk_usage", claims)


def test_bundle_on_a_full_disk_is_refused_before_writing(disk: Path) -> None:
    fill(disk, leave=8 * 1024)
    with pytest.raises(DiskSpaceError) as err:
        make_bundle(disk / "b", extra_files={"roc.png": os.urandom(64 * 1024)})
    message = str(err.value)
    assert message.startswith(f"Not enough disk space for the model bundle at {disk}")
    assert re.search(r"needs about [\d.]+ kB \([\d,]+ bytes\) and [\d,.]+ (kB|bytes)", message)
    assert "Nothing was written" in message and "--out" in message
    assert entries(disk) == []


def test_bundle_disk_filling_up_while_writing(disk: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fill(disk, leave=32 * 1024)
    plenty_of_space(monkeypatch)
    with pytest.raises(DiskSpaceError) as err:
        make_bundle(disk / "b", extra_files={"roc.png": os.urandom(256 * 1024)})
    message = str(err.value)
    assert message.startswith(f"The disk filled up while writing the model bundle at "
                              f"{disk / 'b'} (No space left on device)")
    assert "Nothing was left half-written" in message
    assert entries(disk) == []  # no hidden partial folder


def test_archive_on_a_full_disk(tmp_path: Path, disk: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "b", extra_files={"roc.png": os.urandom(128 * 1024)})
    fill(disk, leave=16 * 1024)
    with pytest.raises(DiskSpaceError, match="Not enough disk space for the bundle archive"):
        export_archive(bundle, disk / "b.tar.gz")
    assert entries(disk) == []
    plenty_of_space(monkeypatch)
    with pytest.raises(DiskSpaceError, match=r"The disk filled up while writing the bundle "
                                             r"archive at .*b.tar.gz \(No space left on device\)"):
        export_archive(bundle, disk / "b.tar.gz")
    assert entries(disk) == []  # no .b.tar.gz.*.partial


def test_free_space_check_reads_disk_usage(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The up-front check on any disk: shutil.disk_usage says 10 kB are free."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    with pytest.raises(DiskSpaceError) as err:
        make_bundle(tmp_path / "deep" / "b")
    assert "and 10.0 kB (10,000 bytes) are free there" in str(err.value)
    assert not (tmp_path / "deep" / "b").exists()
    assert not list((tmp_path / "deep").iterdir())
