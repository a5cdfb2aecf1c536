"""Negative and zero event weights (issue 13, item 3): the weighted AUC takes them, the
training splits get what ``dataset.negative_weights`` says, the test split keeps the signed
weights, and the counts reach metadata.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import quiet
from sklearn.metrics import roc_auc_score

from mlaas_dask.errors import ConfigError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train
from mlaas_dask.train.metrics import evaluate, weighted_auc
from mlaas_dask.train.weights import training_weights

from conftest import write_events


def test_weighted_auc_is_scikit_learns_for_positive_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 4000)
    scores = np.round(rng.random(4000) + 0.4 * y, 2)  # with ties
    w = rng.random(4000)
    assert weighted_auc(y, scores, w) == pytest.approx(
        roc_auc_score(y, scores, sample_weight=w), abs=1e-12)
    assert weighted_auc(y, scores, np.ones(4000)) == pytest.approx(roc_auc_score(y, scores))


def test_weighted_auc_with_negative_and_zero_weights_by_hand() -> None:
    # signal scores 0.9 (w 1), 0.4 (w -0.5); background 0.5 (w 2), 0.4 (w 1), 0.1 (w 0)
    y = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.5, 0.4, 0.1])
    w = np.array([1.0, -0.5, 2.0, 1.0, 0.0])
    # pairs: 0.9 beats all three: 1 * (2 + 1 + 0) = 3; 0.4 beats 0.1 and ties 0.4:
    # -0.5 * (0 + 0.5 * 1) = -0.25; total (3 - 0.25) / (W_s 0.5 * W_b 3) = 11/6
    assert weighted_auc(y, scores, w) == pytest.approx(2.75 / 1.5)
    assert weighted_auc(y, scores, np.array([1.0, 1.0, 0.0, 0.0, 0.0])) is None
    # why it is not scikit-learn's: a negative weight makes its ROC curve non-monotonic
    y, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    w = np.array([1.0, -0.5, 1.0, 0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="neither increasing nor decreasing"):
        roc_auc_score(y, scores, sample_weight=w)
    pairs = sum(w[i] * w[j] * ((scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j]))
                for i in np.flatnonzero(y == 1) for j in np.flatnonzero(y == 0))
    assert weighted_auc(y, scores, w) == pytest.approx(pairs / (w[y == 1].sum()
                                                                * w[y == 0].sum()))


def test_weighted_auc_is_reported_when_some_weights_are_zero() -> None:
    y = np.array([0, 0, 1, 1])
    metrics = evaluate(y, np.array([0.1, 0.6, 0.4, 0.9]), np.array([1.0, 0.0, 1.0, 1.0]),
                       ["background", "signal"])
    assert metrics["auc"] == 0.75 and metrics["auc_weighted"] == 1.0


@pytest.mark.parametrize("policy, expected, kept", [
    ("abs", [1.0, 2.0, 0.0, 3.0], None),
    ("keep", [1.0, -2.0, 0.0, 3.0], None),
    ("zero", [1.0, 0.0, 0.0, 3.0], None),
    ("drop", [1.0, 0.0, 3.0], [True, False, True, True]),
])
def test_policies(policy: str, expected: list[float], kept: list[bool] | None) -> None:
    w, mask = training_weights(np.array([1.0, -2.0, 0.0, 3.0], np.float32), policy)
    assert w.tolist() == expected and w.dtype == np.float32
    assert (mask.tolist() if mask is not None else None) == kept


def _nlo_job(tmp_path: Path, policy: str | None, model: str = "") -> str:
    rng = np.random.default_rng(5)
    for name, seed, scale in (("sig.root", 1, 60), ("bkg.root", 2, 30)):
        weights = rng.choice([1.0, -1.0, 0.0], 4000, p=[0.75, 0.2, 0.05]).astype(np.float32)
        write_events(tmp_path / name, n=4000, seed=seed, extra={
            "MET_pt": rng.exponential(scale, 4000).astype(np.float32), "genWeight": weights})
    key = f"  negative_weights: {policy}\n" if policy else ""
    return ("dataset:\n  step_size: 1000\n  weight_branch: genWeight\n" + key
            + "  groups:\n    - {name: sig, files: [sig.root], label: 1}\n"
            "    - {name: bkg, files: [bkg.root], label: 0}\n"
            "features: {flat: [MET_pt], collections: {Jet: {fields: [pt], n: 2}}}\n"
            + (model or "model: {num_boost_round: 15, params: {max_depth: 2}}\n"))


def test_keep_is_refused_for_xgboost(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        job_from_text(_nlo_job(tmp_path, "keep"), base=tmp_path, name="job.yaml")
    assert "XGBoost cannot train with negative weights" in str(info.value)
    assert "negative_weights: abs" in str(info.value)


def _matrices(client: Any, job: Any) -> Any:
    from mlaas_dask.train.matrix import build_matrices
    from mlaas_dask.train.pipeline import prepare

    prepared = prepare(job)
    return build_matrices(client, prepared.dataset, prepared.plan, progress=False)


@pytest.mark.slow
def test_each_policy_shapes_the_training_splits_only(client: Any, tmp_path: Path) -> None:
    seen = {}
    for policy in ("abs", "zero", "drop", "keep"):
        model = ("model: {class: sklearn.linear_model.SGDClassifier, params: {loss: log_loss}}\n"
                 if policy == "keep" else "")
        matrices = _matrices(client, job_from_text(_nlo_job(tmp_path, policy, model),
                                                   base=tmp_path))
        w = {s: matrices.w[s].compute() for s in ("train", "validation", "test")}
        seen[policy] = (w, matrices.stats)
        client.cancel(matrices.futures)
    signs = seen["abs"][1]["weights"]["per_split"]
    assert signs["train"]["negative"] > 0 and signs["train"]["zero"] > 0
    assert seen["abs"][1]["weights"]["negative_weights"] == "abs"
    for policy, (w, _) in seen.items():  # the test split keeps the signed weights
        np.testing.assert_array_equal(w["test"], seen["keep"][0]["test"])
        assert (w["test"] < 0).sum() == signs["test"]["negative"], policy
    keep = seen["keep"][0]["train"]
    np.testing.assert_array_equal(seen["abs"][0]["train"], np.abs(keep))
    np.testing.assert_array_equal(seen["zero"][0]["train"], np.where(keep < 0, 0, keep))
    np.testing.assert_array_equal(seen["drop"][0]["train"], keep[keep >= 0])
    dropped = sum(seen["drop"][1]["events_per_class"]["train"])
    assert dropped == sum(seen["keep"][1]["events_per_class"]["train"]) - signs["train"]["negative"]


@pytest.mark.slow
def test_training_with_nlo_weights_reports_them(client: Any, tmp_path: Path) -> None:
    job = job_from_text(_nlo_job(tmp_path, None), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    assert 0.6 < result.metrics["auc"] < 1 and "auc_weighted" in result.metrics
    metadata = json.loads((tmp_path / "b" / "metadata.json").read_text())
    weights = metadata["data_summary"]["weights"]
    assert weights["negative_weights"] == "abs"
    assert weights["per_split"]["test"]["negative"] > 0
    assert weights["per_split"]["train"]["zero"] > 0
