"""The figures of the evaluation report, in numpy: Kolmogorov-Smirnov p-values of the
overtraining check, working points, a bootstrap AUC uncertainty, the confusion matrix.

Every figure counts events (unweighted): the event weights of a simulation may be
negative (NLO), which neither the KS test nor an efficiency of "events" allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: signal efficiencies at which the background efficiency is quoted
SIGNAL_EFFICIENCIES = (0.5, 0.7, 0.9)
#: background efficiencies at which the signal efficiency is quoted
BACKGROUND_EFFICIENCIES = (0.01, 0.1)
#: bootstrap resamplings of the test split for the AUC uncertainty
BOOTSTRAP_SAMPLES = 200


def ks_pvalue(train: np.ndarray, test: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov p-value of a class's train and test scores
    (:func:`scipy.stats.ks_2samp`, two-sided), ``None`` when either is empty.

    A small p-value (TMVA's rule of thumb: below 0.01) says that the model scores its
    training events differently from unseen ones: overtraining.
    """
    from scipy.stats import ks_2samp

    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    if len(train) == 0 or len(test) == 0:
        return None
    return float(ks_2samp(train, test).pvalue)


def class_scores(scores: np.ndarray, y: np.ndarray, classes: Sequence[str]
                 ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per score of the model, ``(score name, score, labels)``: the one binary score
    (P(second class)), or one score per class for multi-class models."""
    if len(classes) == 2:
        return [(classes[1], np.asarray(scores).reshape(-1), y)]
    return [(name, np.asarray(scores)[:, i], y) for i, name in enumerate(classes)]


def overtraining(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 classes: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """KS p-values of train vs test scores, per score and per true class.

    Parameters
    ----------
    train, test
        ``(scores, labels)`` of each split.

    Returns
    -------
    dict
        ``{score name: {true class: p-value}}``.
    """
    out: dict[str, dict[str, float | None]] = {}
    train_scores = class_scores(train[0], train[1], classes)
    test_scores = class_scores(test[0], test[1], classes)
    for (name, s_train, y_train), (_, s_test, y_test) in zip(train_scores, test_scores,
                                                             strict=True):
        out[name] = {c: ks_pvalue(s_train[y_train == i], s_test[y_test == i])
                     for i, c in enumerate(classes)}
    return out


def efficiencies(signal: np.ndarray, background: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Signal and background efficiencies of a cut ``score >= t`` for every threshold
    ``t`` in the data, from the tightest cut to the loosest (both rising from 0 to 1)."""
    scores = np.concatenate([signal, background]).astype(np.float64)
    is_signal = np.concatenate([np.ones(len(signal)), np.zeros(len(background))])
    order = np.argsort(-scores, kind="stable")
    scores, is_signal = scores[order], is_signal[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # one point per threshold
    passed_signal = np.cumsum(is_signal)[last]
    passed_background = (last + 1) - passed_signal
    eff_s = np.r_[0.0, passed_signal / max(len(signal), 1)]
    eff_b = np.r_[0.0, passed_background / max(len(background), 1)]
    return eff_s, eff_b


def working_points(signal: np.ndarray, background: np.ndarray) -> dict[str, Any]:
    """Background efficiency at 50, 70 and 90% signal efficiency, and signal efficiency
    at 1% and 10% background efficiency (linear interpolation between thresholds).

    Returns
    -------
    dict
        ``{"background_efficiency_at_signal_efficiency": {"0.5": ..., ...},
        "signal_efficiency_at_background_efficiency": {"0.01": ..., ...},
        "weighting": "unweighted events"}``; ``None`` entries without events of a class.
    """
    out: dict[str, Any] = {"weighting": "unweighted events"}
    if len(signal) == 0 or len(background) == 0:
        out["background_efficiency_at_signal_efficiency"] = dict.fromkeys(
            map(str, SIGNAL_EFFICIENCIES))
        out["signal_efficiency_at_background_efficiency"] = dict.fromkeys(
            map(str, BACKGROUND_EFFICIENCIES))
        return out
    eff_s, eff_b = efficiencies(signal, background)
    out["background_efficiency_at_signal_efficiency"] = {
        str(e): float(np.interp(e, eff_s, eff_b)) for e in SIGNAL_EFFICIENCIES}
    out["signal_efficiency_at_background_efficiency"] = {
        str(e): float(np.interp(e, eff_b, eff_s)) for e in BACKGROUND_EFFICIENCIES}
    return out


def all_working_points(scores: np.ndarray, y: np.ndarray, classes: Sequence[str]
                       ) -> dict[str, Any]:
    """:func:`working_points` per score: the binary score (signal: the second class),
    or each class against the rest."""
    out = {}
    for index, (name, score, labels) in enumerate(class_scores(scores, y, classes)):
        positive = positives(labels, index, classes)
        out[name] = working_points(score[positive], score[~positive])
    return out


def positives(labels: np.ndarray, index: int, classes: Sequence[str]) -> np.ndarray:
    """The events that score ``index`` of :func:`class_scores` calls signal."""
    return np.asarray(labels) == (1 if len(classes) == 2 else index)


def _auc_parts(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's tie group of scores (ascending) and whether it is positive."""
    _, groups = np.unique(score, return_inverse=True)
    return groups.reshape(-1), positive.astype(bool)


def _auc_counted(groups: np.ndarray, positive: np.ndarray, counts: np.ndarray,
                 n_groups: int) -> float:
    """Mann-Whitney AUC of events counted ``counts`` times (ties count one half)."""
    pos = np.bincount(groups, weights=counts * positive, minlength=n_groups)
    neg = np.bincount(groups, weights=counts * ~positive, minlength=n_groups)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the ``positive`` events (equal to scikit-learn's)."""
    groups, positive = _auc_parts(np.asarray(score), np.asarray(positive))
    return _auc_counted(groups, positive, np.ones(len(groups)), int(groups.max(initial=-1)) + 1)


def bootstrap_auc(scores: np.ndarray, y: np.ndarray, classes: Sequence[str], *,
                  samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """The test AUC's spread over bootstrap resamplings of the test split (events drawn
    with replacement; macro-averaged one-vs-rest AUC for multi-class).

    Returns
    -------
    dict
        ``{"std", "low", "high" (the central 68% interval), "samples", "values"}``.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    parts = []
    for index, (_, score, labels) in enumerate(class_scores(scores, y, classes)):
        positive = positives(labels, index, classes)
        if 0 < positive.sum() < n:
            groups, positive = _auc_parts(score, positive)
            parts.append((groups, positive, int(groups.max()) + 1))
    if not parts or n == 0:
        return {"std": None, "low": None, "high": None, "samples": 0, "values": []}
    values = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        values.append(float(np.nanmean([_auc_counted(g, p, counts, k) for g, p, k in parts])))
    array = np.asarray(values)
    low, high = np.nanquantile(array, [0.16, 0.84])
    return {"std": float(np.nanstd(array)), "low": float(low), "high": float(high),
            "samples": samples, "values": [round(v, 6) for v in values]}


def confusion(scores: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted class) and accuracy of the
    most probable class (binary: score >= 0.5 predicts the second class)."""
    k = len(classes)
    scores = np.asarray(scores)
    predicted = (scores.reshape(-1) >= 0.5).astype(np.int64) if k == 2 else scores.argmax(axis=1)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y, np.int64), predicted), 1)
    total = int(matrix.sum())
    return {"classes": list(classes), "matrix": matrix.tolist(),
            "accuracy": float(np.trace(matrix) / total) if total else None,
            "rule": "score >= 0.5" if k == 2 else "most probable class"}
