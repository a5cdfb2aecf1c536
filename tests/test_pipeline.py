"""The one training pipeline: its fitter seam, the one way test scores are made, tune
trials that train the model that training trains, and the cluster session."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import ConfigError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train
from mlaas_dask.train.pipeline import FitContext, fitter_for, register_fitter

from conftest import logged, write_events

quiet = {"progress": False}


def sample_job(tmp_path: Path, model: str = "{num_boost_round: 20}", extra: str = "") -> str:
    harder = np.random.default_rng(5).exponential(60, 3000).astype(np.float32)
    sig = write_events(tmp_path / "sig.root", n=3000, seed=1, extra={"MET_pt": harder})
    bkg = write_events(tmp_path / "bkg.root", n=3000, seed=2)
    return f"""
dataset:
  step_size: 1000
  groups:
    - {{name: sig, files: [{sig}], label: 1}}
    - {{name: bkg, files: [{bkg}], label: 0}}
features: {{flat: [MET_pt], collections: {{Jet: {{fields: [pt, eta], n: 2}}}}}}
model: {model}
{extra}"""


def test_an_unknown_model_kind_names_the_kinds() -> None:
    with pytest.raises(ConfigError) as err:
        fitter_for("lightgbm")
    message = str(err.value)
    assert message.startswith("No trainer for model kind 'lightgbm'; the kinds are ")
    assert "sklearn" in message and "xgboost" in message and "torch" in message


@pytest.mark.slow
def test_a_registered_fitter_gets_the_matrices_and_its_model_becomes_the_bundle(
        client: Any, tmp_path: Path) -> None:
    """A new model kind plugs in with one function: it sees the workers' matrices and
    the job, and the pipeline evaluates and writes what it returns."""
    from mlaas_dask.train.sklearn import fit_sklearn

    seen: list[FitContext] = []

    def fit_logistic(context: FitContext) -> Any:
        seen.append(context)
        model = dataclasses.replace(context.job.model, kind="sklearn", params={},
                                    estimator_class="sklearn.linear_model.LogisticRegression")
        return fit_sklearn(dataclasses.replace(
            context, job=dataclasses.replace(context.job, model=model)))

    register_fitter("logistic-test", fit_logistic)
    job = job_from_text(sample_job(tmp_path, "{class: sklearn.linear_model.SGDClassifier, "
                                             "params: {loss: log_loss}}"), base=tmp_path)
    job = dataclasses.replace(job, model=dataclasses.replace(job.model, kind="logistic-test"))
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    (context,) = seen
    stats = context.matrices.stats
    assert context.matrices.X["train"].shape == (sum(stats["events_per_class"]["train"]),
                                                 context.spec.n_features)
    assert context.out == tmp_path / "b" and context.classes == list(job.dataset.classes)
    model = ModelBundle.load(result.bundle)
    assert type(model.model).__name__ == "LogisticRegression"
    assert result.metrics["auc"] > 0.6
    assert {"read_features", "train", "predict", "evaluate", "total"} <= set(
        result.metrics["seconds"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["{num_boost_round: 20}",
                                   "{class: sklearn.linear_model.SGDClassifier, "
                                   "params: {loss: log_loss}, epochs: 2}"])
def test_test_scores_are_computed_once_by_the_bundles_own_predict(
        client: Any, tmp_path: Path, model: str) -> None:
    """Every kind scores the test split through ModelBundle.predict_matrix (what `mlaas
    predict` and the server run), once per block, timed as the predict stage; and the
    scores in the bundle's metrics are those of the loaded bundle."""
    from distributed import get_task_stream

    job = job_from_text(sample_job(tmp_path, model), base=tmp_path)
    with get_task_stream(client) as stream:
        result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    predicted = [t for t in stream.data if t["key"][0].startswith("_predict_block")]
    test_blocks = {t["key"] for t in predicted}
    assert len(predicted) == len(test_blocks) > 0  # no block scored twice
    assert result.metrics["seconds"]["predict"] > 0
    loaded = ModelBundle.load(result.bundle)
    metrics = json.loads((result.bundle / "metrics.json").read_text())
    assert metrics["auc"] == result.metrics["auc"]
    assert loaded.kind in ("xgboost", "sklearn")


def test_sklearn_tune_trials_scale_and_balance_as_training_does() -> None:
    """A trial fits the estimator as training fits it: features scaled with the training
    sample's mean and spread, classes balanced (model.balance_classes) -- so the
    trial's scores are those of the model that training would make."""
    from sklearn.linear_model import LogisticRegression

    from mlaas_dask.features import FeatureSpec
    from mlaas_dask.train.tune import run_trial

    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.1).astype(np.int32)  # 10% signal
    X = np.column_stack([rng.normal(y * 1.0, 1.0) * 1e4,  # a feature in large units
                         rng.normal(0, 1, n)]).astype(np.float32)
    data = {"X_train": X, "y_train": y, "w_train": np.ones(n, np.float32),
            "X_validation": X, "y_validation": y}
    spec = FeatureSpec.from_dict({"flat": ["a", "b"]})
    base = {"params": {}, "fill_value": 0.0, "scale": True, "spec": spec,
            "classes": ["bkg", "sig"], "counts": list(np.bincount(y)),
            "estimator": LogisticRegression(max_iter=200)}
    from mlaas_dask.train.tune import _sklearn_trial

    balanced, _ = _sklearn_trial({}, data, {**base, "balance_classes": True})
    plain, _ = _sklearn_trial({}, data, {**base, "balance_classes": False})
    assert balanced.preprocess is not None and balanced.preprocess.mean is not None
    assert balanced.preprocess.scale[0] == pytest.approx(float(X[:, 0].std()), rel=1e-3)
    # balanced classes: the mean score sits near 1/2, not near the 10% signal fraction
    assert balanced.predict_matrix(X).mean() > 0.35
    assert plain.predict_matrix(X).mean() < 0.2
    unscaled, _ = _sklearn_trial({}, data, {**base, "scale": False, "balance_classes": True})
    assert unscaled.preprocess is not None and unscaled.preprocess.mean is None
    trial = run_trial({"C": 0.5}, data, "sklearn", {**base, "balance_classes": True}, 2)
    assert trial["auc"] > 0.6 and trial["params"] == {"C": 0.5}


MODEL_NEEDS_TOKEN = '''
import os

from sklearn.linear_model import LogisticRegression


class NeedsToken(LogisticRegression):
    """Fits only where the user's bearer token has been installed."""

    def fit(self, X, y, sample_weight=None):
        if os.environ.get("BEARER_TOKEN") != "tune-token":
            raise RuntimeError("no bearer token on this worker")
        return super().fit(X, y, sample_weight=sample_weight)


def model():
    return NeedsToken(max_iter=100)
'''


@pytest.mark.slow
def test_tune_trials_run_with_the_users_credentials_on_the_workers(
        client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials run on the workers: like training, tune installs the user's remote-data
    credentials there first (a trial that cannot read a remote file would fail)."""
    from mlaas_dask.train.tune import tune

    monkeypatch.setenv("BEARER_TOKEN", "tune-token")
    (tmp_path / "needs_token.py").write_text(MODEL_NEEDS_TOKEN)
    text = sample_job(tmp_path, "{file: needs_token.py}",
                      "tune:\n  trials: 2\n  sample_size: 1000\n  space:\n    C: [0.1, 1.0]\n")
    job = job_from_text(text, base=tmp_path)
    with logged() as lines:
        result = tune(job, cluster=client, out=tmp_path / "b", **quiet)
    assert all(t["auc"] is not None for t in result.trials), result.trials
    assert "Running 2 trials" in lines.text
    left = client.run(lambda: __import__("os").environ.get("BEARER_TOKEN"))
    assert left == dict.fromkeys(client.scheduler_info()["workers"])  # removed at the end


@pytest.mark.parametrize("cut, message", [
    ("Jet_pt > 20", "gives a list per event; reduce it with any(), all() or count()"),
    ("MET_pt + 1", "must give true/false per event"),
])
def test_a_cut_that_cannot_work_fails_before_the_cluster(tmp_path: Path, cut: str,
                                                         message: str) -> None:
    """Found as a new user: a per-object cut printed a worker traceback first."""
    from mlaas_dask.errors import FeatureError
    from mlaas_dask.train.pipeline import prepare

    def with_cut(text: str) -> str:
        return sample_job(tmp_path).replace("  step_size: 1000",
                                            f"  step_size: 1000\n  cut: '{text}'")

    job = job_from_text(with_cut(cut), base=tmp_path)
    with pytest.raises(FeatureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare(job)  # no cluster exists yet
    job = job_from_text(with_cut("any(Jet_pt > 20)"), base=tmp_path)
    assert prepare(job).plan.cut == "any(Jet_pt > 20)"
