"""The evaluation report (issue 13, item 6): its statistics on hand-checked cases, the
report of a real training opened in a headless Chromium, ``mlaas report`` rewriting it
atomically, and the messages for what it cannot rewrite."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_bundle, quiet, small_job
from sklearn.metrics import roc_auc_score

from mlaas_dask.bundle import METADATA_FILE, write_bundle
from mlaas_dask.cli import main
from mlaas_dask.errors import BundleError
from mlaas_dask.job import job_from_text
from mlaas_dask.report import DATA_FILE, REPORT_FILE, ReportData, Split, rewrite, stats
from mlaas_dask.train import train

from conftest import require_programs

# -- statistics ---------------------------------------------------------------------------


def test_ks_pvalue_hand_checked() -> None:
    # all 3 train scores below all 3 test scores: D = 1, and of the C(6, 3) = 20 ways to
    # split 6 ordered values into two groups of 3, exactly 2 (all low / all high) reach it
    assert stats.ks_pvalue(np.array([1.0, 2, 3]), np.array([4.0, 5, 6])) == pytest.approx(
        2 / comb(6, 3))
    # interleaved 1,2 | 3,4 vs 1.5, 2.5, 3.5, 4.5: D = 1/4, the smallest non-zero: p = 1
    assert stats.ks_pvalue(np.array([1.0, 2, 3, 4]), np.array([1.5, 2.5, 3.5, 4.5])) == 1.0
    assert stats.ks_pvalue(np.array([]), np.array([1.0])) is None


def test_overtraining_compares_each_class_with_itself() -> None:
    # class 0 scores the same in both splits, class 1 is separated: only class 1 is flagged
    train = (np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1]))
    test = (np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), np.array([0, 0, 0, 1, 1, 1]))
    pvalues = stats.overtraining(train, test, ["background", "signal"])
    assert pvalues["signal"]["background"] == pytest.approx(1.0)
    assert pvalues["signal"]["signal"] == pytest.approx(0.1)


def test_working_points_on_a_constructed_case() -> None:
    # signal uniform on [0, 1), background u^2: a cut at t keeps 1 - t of the signal and
    # 1 - sqrt(t) of the background
    u = (np.arange(100_000) + 0.5) / 100_000
    points = stats.working_points(u, u ** 2)
    for efficiency, value in points["background_efficiency_at_signal_efficiency"].items():
        assert value == pytest.approx(1 - np.sqrt(1 - float(efficiency)), abs=1e-3)
    for efficiency, value in points["signal_efficiency_at_background_efficiency"].items():
        assert value == pytest.approx(1 - (1 - float(efficiency)) ** 2, abs=1e-3)
    assert set(points["background_efficiency_at_signal_efficiency"]) == {"0.5", "0.7", "0.9"}
    assert set(points["signal_efficiency_at_background_efficiency"]) == {"0.01", "0.1"}


def test_auc_and_its_bootstrap() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(4000) < 0.3).astype(int)
    scores = np.round(rng.normal(y * 0.8, 1.0), 2)  # ties, as scores of trees have
    assert stats.auc(scores, y == 1) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    boot = stats.bootstrap_auc(scores, y, ["b", "s"], samples=100)
    # the spread of an AUC on n events: about sqrt(AUC (1 - AUC) / n_minority) / 2
    assert 0.004 < boot["std"] < 0.03
    assert boot["low"] < roc_auc_score(y, scores) < boot["high"]


def test_confusion_matrix_of_three_classes() -> None:
    scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    result = stats.confusion(scores, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert result["matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert result["accuracy"] == pytest.approx(0.75)


# -- the report of a training -------------------------------------------------------------

_CHECK = """<script>window.addEventListener("load", () => {
  const out = [...document.images].map(
    (i) => i.dataset.file + " " + (i.complete && i.naturalWidth > 0 ? "ok" : "broken"));
  const pre = document.createElement("pre"); pre.id = "checked";
  pre.textContent = out.join("\\n"); document.body.appendChild(pre); });</script>"""


def _images_in_browser(report: Path, tmp_path: Path) -> dict[str, str]:
    """Each <img> of the report, as Chromium loaded it: its data-file and ok/broken."""
    require_programs(("chromium", "chromium"))
    page = tmp_path / "checked.html"
    page.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="checked">(.*?)</pre>', done.stdout, re.S)
    assert found, f"Chromium did not load the report: {done.stderr[-2000:]}"
    return dict(line.split(" ") for line in found.group(1).splitlines())


@pytest.fixture(scope="module")
def trained(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    job = job_from_text(small_job(folder), base=folder)
    return train(job, cluster=client, out=folder / "bundle", **quiet).bundle


@pytest.mark.slow
def test_report_of_a_training_opens_in_chromium(trained: Path, tmp_path: Path) -> None:
    html = (trained / REPORT_FILE).read_text()
    assert 'src="data:image/png;base64,' in html and "<script" not in html
    named = re.findall(r'data-file="([^"]+)"', html)
    assert {"report_overtraining.png", "report_rejection.png", "report_inputs.png",
            "report_importance.png", "report_learning_curve.png",
            "report_auc_bootstrap.png"} <= set(named)
    assert any(n.startswith("report_correlation_") for n in named)
    for name in named:
        assert (trained / name).is_file(), name
    assert _images_in_browser(trained / REPORT_FILE, tmp_path) == dict.fromkeys(named, "ok")
    own = json.loads((trained / METADATA_FILE).read_text())["bundle_files"]
    assert {REPORT_FILE, DATA_FILE, *named} <= set(own)


@pytest.mark.slow
def test_report_figures_are_in_metrics(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    data = ReportData.from_npz((trained / DATA_FILE).read_bytes(), "x")
    score = data.classes[1]
    signal = data.test.scores[data.test.y == 1]
    background = data.test.scores[data.test.y == 0]
    assert metrics["working_points"][score] == stats.working_points(signal, background)
    pvalues = metrics["overtraining"]["ks_pvalue"][score]
    assert set(pvalues) == set(data.classes)
    assert all(0 <= p <= 1 for p in pvalues.values())
    assert metrics["auc_uncertainty"]["std"] > 0
    # the stored test split is the whole test split the AUC was measured on
    assert roc_auc_score(data.test.y, data.test.scores) == pytest.approx(metrics["auc"])
    assert metrics["seconds"]["report"] > 0


@pytest.mark.slow
def test_mlaas_report_rewrites_the_report(trained: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained, bundle)
    (bundle / "notes.txt").write_text("mine")  # not the bundle's: kept where it is
    (bundle / REPORT_FILE).write_text("stale")
    (bundle / "report_rejection.png").unlink()
    assert main(["report", str(bundle)]) == 0
    assert f"Report written to {bundle / REPORT_FILE}" in capsys.readouterr().out
    assert (bundle / REPORT_FILE).read_text() == (trained / REPORT_FILE).read_text()
    assert (bundle / "report_rejection.png").is_file()
    assert (bundle / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_refuses_what_it_cannot_rewrite(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "old")
    assert main(["report", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert f"Model bundle {bundle} has no {DATA_FILE}" in err and "retrain" in err
    assert "Traceback" not in err
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(BundleError, match="is a file: mlaas report rewrites a bundle folder"):
        rewrite(archive)
    (bundle / DATA_FILE).write_bytes(b"not an npz")
    with pytest.raises(BundleError, match=f"{DATA_FILE} is not a readable report data file"):
        rewrite(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        rewrite(tmp_path / "missing")


def test_a_failing_stage_leaves_no_bundle(tmp_path: Path) -> None:
    def stage(folder: Path) -> dict[str, bytes]:
        assert (folder / METADATA_FILE).is_file()  # the bundle is complete when it runs
        raise RuntimeError("drawing failed")

    from helpers import tiny_model

    from mlaas_dask.features import FeatureSpec

    spec = FeatureSpec.from_dict({"flat": ["a", "b", "c", "d"]})
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_bundle(tmp_path / "b", model=tiny_model(), spec=spec, metadata={},
                     metrics={}, stage=stage)
    assert list(tmp_path.iterdir()) == []


def test_report_data_round_trip_without_pickle() -> None:
    rng = np.random.default_rng(0)
    data = ReportData(["b", "s"], ["x", "y"], Split(rng.random(5), np.arange(5) % 2,
                                                    np.ones(5), 9), None,
                      rng.random((3, 2)).astype(np.float32), np.array([0, 1, 0]),
                      {"x": 0.1, "y": 0.2}, ["a note"])
    back = ReportData.from_npz(data.to_npz(), "x")
    assert back.train is None and back.test.total == 9 and back.notes == ["a note"]
    assert np.allclose(back.test.scores, data.test.scores.astype(np.float32))
    assert back.permutation == pytest.approx({"x": 0.1, "y": 0.2})
