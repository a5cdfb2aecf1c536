"""MLaaS4HEP model files (issue 12, item 1): a Keras 3 file in MLaaS4HEP's style
(``def model(idim): ... model.compile(...); return model``) run through ``mlaas train
--from-mlaas4hep ... --model file.py``, with MLaaS4HEP's ``epochs`` and ``batch_size``
mapped onto the job's model keys instead of reported as unmapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import write_mlaas4hep

from mlaas_dask.cli import main
from mlaas_dask.nn.keras import prefer_torch

from conftest import REPO

prefer_torch()
pytest.importorskip("torch")
pytest.importorskip("keras")

EXAMPLE = REPO / "examples" / "mlaas4hep_keras_model.py"


def mlaas4hep_args(paths: dict[str, Path], model: Path, *more: str) -> list[str]:
    return ["train", "--from-mlaas4hep", str(paths["params"]), "--files",
            str(paths["files"]), "--labels", str(paths["labels"]), "--preproc",
            str(paths["preproc"]), "--model", str(model), *more]


def set_params(paths: dict[str, Path], **values: object) -> None:
    params = json.loads(paths["params"].read_text())
    params.update(values)
    paths["params"].write_text(json.dumps(params))


def printed_job(out: str) -> dict:
    return yaml.safe_load(out[out.index("dataset:"):])


def test_epochs_and_batch_size_map_onto_a_keras_job(capsys, tmp_path: Path,
                                                     hep_tutorial: Path) -> None:
    paths = write_mlaas4hep(tmp_path, hep_tutorial)  # epochs 5, batch_size 100
    assert main(mlaas4hep_args(paths, EXAMPLE, "--print-job")) == 0
    out = capsys.readouterr().out
    model = printed_job(out)["model"]
    assert model == {"kind": "keras", "file": str(EXAMPLE), "epochs": 5, "batch_size": 100}
    assert "MLaaS4HEP epochs: no equivalent" not in out
    assert "MLaaS4HEP batch_size: no equivalent" not in out
    assert "MLaaS4HEP nevts: no equivalent" in out  # still reported


def test_a_scikit_learn_file_keeps_epochs_and_reports_batch_size(
        capsys, tmp_path: Path, hep_tutorial: Path) -> None:
    paths = write_mlaas4hep(tmp_path, hep_tutorial)
    assert main(mlaas4hep_args(paths, REPO / "examples" / "my_model.py", "--print-job")) == 0
    out = capsys.readouterr().out
    assert printed_job(out)["model"]["kind"] == "sklearn"
    assert printed_job(out)["model"]["epochs"] == 5
    assert "MLaaS4HEP batch_size: no equivalent (scikit-learn partial_fit gets one" in out
    assert "MLaaS4HEP epochs: no equivalent" not in out


def test_a_tf_keras_file_is_refused_with_the_keras_3_import(capsys, tmp_path: Path,
                                                            hep_tutorial: Path) -> None:
    old = tmp_path / "old_model.py"
    old.write_text(EXAMPLE.read_text().replace("import keras\nfrom keras import layers",
                                               "from tensorflow import keras\n"
                                               "from tensorflow.keras import layers"))
    paths = write_mlaas4hep(tmp_path, hep_tutorial)
    assert main(mlaas4hep_args(paths, old, "--print-job")) == 2
    err = capsys.readouterr().err
    assert f"The MLaaS4HEP model file {old} imports TensorFlow" in err
    assert "Write 'import keras'" in err and "Traceback" not in err


@pytest.mark.slow
def test_an_mlaas4hep_keras_job_trains_through_the_cli(capsys, client, tmp_path: Path,
                                                        hep_tutorial: Path) -> None:
    paths = write_mlaas4hep(tmp_path, hep_tutorial)
    set_params(paths, epochs=2, batch_size=256)
    out = tmp_path / "bundle"
    code = main(mlaas4hep_args(paths, EXAMPLE, "--out", str(out), "--cluster",
                               client.scheduler.address))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Test AUC" in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    metadata = json.loads((out / "metadata.json").read_text())["model"]
    assert metrics["epochs"] == 2 and len(metrics["history"]["train_loss"]) == 2
    assert metadata["kind"] == "keras" and metadata["params"]["batch_size"] == 256
    assert metadata["keras"]["compiled"]["loss"]["name"] == "BinaryCrossentropy"
    assert metrics["auc"] > 0.6  # single top vs WW on the tutorial's features
