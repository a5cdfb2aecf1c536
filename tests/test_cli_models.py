"""The CLI with scikit-learn jobs: ``mlaas train`` and ``mlaas bench`` report a model
without boosting rounds (they used to crash after writing the bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SGD, sample_job

from mlaas_dask.cli import main

pytestmark = pytest.mark.slow


def test_train_cli_with_incremental_sklearn_job(capsys, client, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(sample_job(tmp_path, SGD))
    code = main(["train", str(tmp_path / "job.yaml"), "--cluster", client.scheduler.address,
                 "--out", str(tmp_path / "bundle"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "3 epochs of partial_fit over 8 blocks" in out
    assert f"Model bundle written to {tmp_path / 'bundle'}" in out
    assert (tmp_path / "bundle" / "model.skops").is_file()


def test_bench_cli_with_sample_fitted_sklearn_job(capsys, client, tmp_path: Path) -> None:
    model = ("{class: sklearn.ensemble.HistGradientBoostingClassifier, "
             "params: {max_iter: 10}, sample_size: 2000}")
    (tmp_path / "job.yaml").write_text(sample_job(tmp_path, model))
    code = main(["bench", str(tmp_path / "job.yaml"), "--clusters", client.scheduler.address,
                 "--out", str(tmp_path / "bench"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"][0]
    assert "error" not in row and row["auc"] > 0.7
    assert client.scheduler.address in out  # the table
