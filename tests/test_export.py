"""``mlaas export``: dak_bundles trained by ``train`` exported to ONNX (with the FeatureSpec
beside it) and to a Triton model repository (its config.pbtxt parsed with Triton's
model_config protobuf); exported scores equal the bundle's to 1e-5 with onnxruntime; a
kind a format cannot hold is refused, naming it, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.cli import main
from mlaas_dask.errors import BundleError
from mlaas_dask.export import export_bundle, exported_scores
from mlaas_dask.features import FeatureSpec

pytestmark = pytest.mark.slow
pytest.importorskip("onnxmltools")


def events(dak_sample: Path, spec: FeatureSpec) -> object:
    return uproot.open(dak_sample / "sig.root")["Events"].arrays(spec.branches())


@pytest.mark.parametrize("kind", ["xgboost", "multiclass", "onnx"])
def test_onnx_export_scores_as_the_bundle(dak_bundles: dict[str, Path], dak_sample: Path,
                                          tmp_path: Path, kind: str) -> None:
    out = export_bundle(dak_bundles[kind], "onnx", tmp_path / "exported")
    bundle = ModelBundle.load(dak_bundles[kind])
    names = sorted(p.name for p in out.iterdir())
    expected = ["export.json", "features.json", "model.onnx"]
    assert names == sorted(expected + (["preprocess.json"] if kind == "onnx" else []))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an ONNX Runtime user: the FeatureSpec from features.json, the model from model.onnx
    spec = FeatureSpec.from_json((out / "features.json").read_text())
    matrix = spec.transform(events(dak_sample, spec))
    theirs = exported_scores((out / "model.onnx").read_bytes(), matrix, bundle)
    np.testing.assert_allclose(theirs, bundle.predict_matrix(matrix), rtol=0, atol=1e-5)
    described = json.loads((out / "export.json").read_text())
    assert described["classes"] == bundle.classes
    assert described["input"]["columns"] == bundle.feature_names
    assert described["max_score_difference"] <= 1e-5


def test_triton_repository_for_xgboost_uses_fil(
        dak_bundles: dict[str, Path], dak_sample: Path, tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    code = main(["export", str(dak_bundles["xgboost"]), str(tmp_path / "repo"), "--format",
                 "triton", "--name", "ttbar", "--max-batch-size", "4096"])
    assert code == 0
    model = tmp_path / "repo" / "ttbar"
    config = text_format.Parse((model / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    bundle = ModelBundle.load(dak_bundles["xgboost"])
    assert config.name == "ttbar" and config.backend == "fil"
    assert config.max_batch_size == 4096
    assert list(config.input[0].dims) == [bundle.spec.n_features]
    assert list(config.output[0].dims) == [2]  # predict_proba: one column per class
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.parameters["model_type"].string_value == "xgboost_json"
    # the model file FIL reads is the bundle's booster
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray((model / "1" / "xgboost.json").read_bytes()))
    matrix = bundle.spec.transform(events(dak_sample, bundle.spec))
    np.testing.assert_allclose(booster.inplace_predict(matrix), bundle.predict_matrix(matrix),
                               rtol=0, atol=1e-6)


def test_triton_repository_for_a_network_uses_onnxruntime(dak_bundles: dict[str, Path],
                                                          tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = export_bundle(dak_bundles["onnx"], "triton", tmp_path / "repo", max_batch_size=256)
    (model,) = out.iterdir()
    config = text_format.Parse((model / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 256 and list(config.output[0].dims) == [1]
    assert (model / "1" / "model.onnx").is_file() and (model / "preprocess.json").is_file()


def test_a_kind_the_format_cannot_hold_is_refused(dak_bundles: dict[str, Path],
                                                  tmp_path: Path, capsys) -> None:
    with pytest.raises(BundleError, match=r"holds a sklearn model, which the onnx export "
                                          r"cannot hold \(it takes xgboost and onnx"):
        export_bundle(dak_bundles["sklearn"], "onnx", tmp_path / "x")
    code = main(["export", str(dak_bundles["sklearn"]), str(tmp_path / "y"), "--format", "triton"])
    err = capsys.readouterr().err
    assert code == 2 and "which the triton export cannot hold" in err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written, no partial folder


def test_overwrite_replaces_only_an_earlier_export(dak_bundles: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = export_bundle(dak_bundles["xgboost"], "onnx", tmp_path / "e")
    with pytest.raises(BundleError, match="exists and is not empty"):
        export_bundle(dak_bundles["xgboost"], "onnx", out)
    export_bundle(dak_bundles["xgboost"], "onnx", out, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BundleError, match="is not an earlier export"):
        export_bundle(dak_bundles["xgboost"], "onnx", mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
