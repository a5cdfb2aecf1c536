"""At the end of training: the samples the report needs, taken from the feature matrices
held on the workers, and the model (as written in the bundle's staging folder) applied to
the training sample."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from mlaas_dask.report.data import INPUT_ROWS, TRAIN_ROWS, ReportData, Split
from mlaas_dask.report.stats import auc, class_scores, positives

logger = logging.getLogger(__name__)

#: rows of the input sample the permutation importance is measured on
PERMUTATION_ROWS = 5_000


def _keep_rows(block: np.ndarray, fraction: float, seed: int,
               block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """A block's share of a uniform sample: each row kept with probability ``fraction``
    (random numbers seeded by the block's place, so the sample is reproducible)."""
    place = block_info[0]["chunk-location"][0] if block_info else 0
    rng = np.random.default_rng([seed, place])
    return rng.random(len(block)) < fraction


def sample_rows(client: Any, X: Any, y: Any, w: Any, rows: int, total: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About ``rows`` events of a split (all of them when it has fewer), gathered from
    the workers: ``X``, ``y`` and ``w`` as numpy."""
    fraction = 1.0 if total <= rows else rows / total
    if fraction >= 1.0:
        return tuple(client.compute([X, y, w], sync=True))
    mask = y.map_blocks(_keep_rows, fraction, seed, dtype=bool)
    return tuple(client.compute([X[mask], y[mask], w[mask]], sync=True))


def split_events(stats: Any, split: str) -> int:
    """Events of a split, from the matrices' statistics."""
    return int(sum(stats["events_per_class"][split]))


def permutation_importance(model: Any, X: np.ndarray, y: np.ndarray, names: list[str],
                           classes: list[str], seed: int = 0) -> dict[str, float]:
    """Per feature, the AUC lost when its column is shuffled (macro one-vs-rest AUC for
    multi-class): a model-agnostic importance for models without their own."""
    rng = np.random.default_rng(seed)
    if len(y) > PERMUTATION_ROWS:
        keep = rng.choice(len(y), PERMUTATION_ROWS, replace=False)
        X, y = X[keep], y[keep]

    def score(matrix: np.ndarray) -> float:
        parts = class_scores(model.predict_matrix(matrix), y, classes)
        values = [auc(s, positives(labels, i, classes)) for i, (_, s, labels) in
                  enumerate(parts)]
        return float(np.nanmean(values))

    base = score(X)
    out = {}
    for j, name in enumerate(names):
        shuffled = X.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        out[name] = base - score(shuffled)
    return out


def load_staged(staging: Any) -> tuple[Any, str | None]:
    """The bundle being written, loaded from its staging folder, or ``None`` and why not
    (a model of the user's own classes, which is only run where the user trusts it)."""
    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.errors import MlaasError

    try:
        bundle = ModelBundle.load(staging, allow_pickle=True)
    except MlaasError as err:
        return None, str(err).splitlines()[0]
    if bundle.kind == "xgboost":  # the report's scoring runs here, with every core
        bundle.model.set_param({"nthread": os.cpu_count() or 1})
    return bundle, None


def collect(client: Any, matrices: Any, test: Split, model: Any, classes: list[str],
            names: list[str], with_permutation: bool) -> ReportData:
    """The report's data: the test split's scores, a training sample scored by
    ``model`` (``None``: no overtraining check) and a sample of the test inputs."""
    stats = matrices.stats
    notes = []
    X_in, y_in, _ = sample_rows(client, matrices.X["test"], matrices.y["test"],
                                matrices.w["test"], INPUT_ROWS, split_events(stats, "test"))
    train = None
    if model is not None:
        X_tr, y_tr, w_tr = sample_rows(client, matrices.X["train"], matrices.y["train"],
                                       matrices.w["train"], TRAIN_ROWS,
                                       split_events(stats, "train"), seed=1)
        train = Split(np.asarray(model.predict_matrix(X_tr)), y_tr, w_tr,
                      split_events(stats, "train"))
    permutation = None
    if model is not None and with_permutation and len(y_in):
        permutation = permutation_importance(model, X_in, y_in, names, classes)
        notes.append(f"permutation importance on {min(len(y_in), PERMUTATION_ROWS):,} "
                     "test events")
    return ReportData(classes, names, test, train, np.asarray(X_in, np.float32),
                      np.asarray(y_in), permutation, notes)
