"""Evaluation: AUC, ROC curves, score distributions and feature importance, as JSON and PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def evaluate(
    y: np.ndarray, scores: np.ndarray, w: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """AUC (unweighted and event-weighted) on one split.

    Binary models score the second class; multi-class AUC is one-vs-rest, macro-averaged.
    The weighted AUC (:func:`weighted_auc`) takes zero and negative weights; it is left
    out only when a class has no total weight.
    """
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {"events": len(y)}
    if len(np.unique(y)) < 2:
        out["auc"] = None
        return out
    if len(classes) == 2:
        out["auc"] = float(roc_auc_score(y, scores))
        weighted = weighted_auc(y, scores, w)
        if weighted is not None:
            out["auc_weighted"] = weighted
    else:
        out["auc"] = float(roc_auc_score(y, scores, multi_class="ovr",
                                         labels=list(range(len(classes)))))
        out["auc_per_class"] = {
            c: float(roc_auc_score(y == i, scores[:, i])) for i, c in enumerate(classes)
            if 0 < np.sum(y == i) < len(y)
        }
    return out


def weighted_auc(y: np.ndarray, scores: np.ndarray, w: np.ndarray) -> float | None:
    """The event-weighted AUC of a binary classifier: the weighted fraction of
    (signal, background) pairs that the score orders right, ties counting one half.

    Unlike scikit-learn's ``roc_auc_score``, which needs a monotonic ROC curve, this takes
    zero and negative weights (NLO samples): it is the sum over pairs of ``w_s * w_b`` for
    ``score_s > score_b``, divided by ``W_s * W_b``. ``None`` when either class has a total
    weight of 0.
    """
    y, scores, w = np.asarray(y), np.asarray(scores, np.float64), np.asarray(w, np.float64)
    signal = y == 1
    total_s, total_b = w[signal].sum(), w[~signal].sum()
    if total_s == 0 or total_b == 0:
        return None
    order = np.argsort(scores[~signal], kind="stable")
    background, weights = scores[~signal][order], w[~signal][order]
    below = np.concatenate([[0.0], np.cumsum(weights)])
    lower = below[np.searchsorted(background, scores[signal], side="left")]
    not_above = below[np.searchsorted(background, scores[signal], side="right")]
    pairs = np.sum(w[signal] * (lower + 0.5 * (not_above - lower)))
    return float(pairs / (total_s * total_b))


def _figure() -> tuple[Any, Any]:
    # a Figure without pyplot: no global backend switch (notebooks keep inline plots)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def roc_png(y: np.ndarray, scores: np.ndarray, classes: Sequence[str], auc: float | None) -> bytes:
    """ROC curve(s): signal efficiency vs background rejection, HEP style."""
    from sklearn.metrics import roc_curve

    fig, ax = _figure()
    if len(classes) == 2:
        curves = [(classes[1], y == 1, scores)]
    else:
        curves = [(c, y == i, scores[:, i]) for i, c in enumerate(classes)]
    for name, positive, score in curves:
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        label = f"{name} vs rest" if len(classes) > 2 else f"AUC = {auc:.4f}"
        ax.plot(tpr, 1 - fpr, label=label)
    ax.plot([0, 1], [1, 0], ls=":", color="grey", label="random")
    ax.set_xlabel("signal efficiency (true positive rate)")
    ax.set_ylabel("background rejection (1 - false positive rate)")
    ax.set_title("ROC on the test split (unweighted events)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _png(fig)


def scores_png(y: np.ndarray, scores: np.ndarray, w: np.ndarray, classes: Sequence[str]) -> bytes:
    """Normalised score distributions per true class on the test split: the score of a
    binary model, or one panel per class score (``score_<class>``) for multi-class."""
    from matplotlib.figure import Figure

    panels = [(None, scores)] if len(classes) == 2 else [
        (name, scores[:, i]) for i, name in enumerate(classes)]
    columns = min(len(panels), 3)
    rows_of_panels = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(6 if columns == 1 else 4.2 * columns, 4.5 * rows_of_panels), dpi=100)
    bins = np.linspace(0, 1, 41).tolist()
    for number, (score_of, score) in enumerate(panels, 1):
        ax = fig.add_subplot(rows_of_panels, columns, number)
        for index, name in enumerate(classes):
            rows = y == index
            if rows.any():
                ax.hist(score[rows], bins=bins, weights=np.abs(w[rows]), density=True,
                        histtype="step", lw=1.8, label=f"{name} ({rows.sum()} events)")
        ax.set_xlabel("classifier score" if score_of is None else f"score_{score_of}")
        ax.set_ylabel("normalised events")
        ax.set_yscale("log")
        ax.set_title("Score distributions on the test split (weighted by |w|)"
                     if score_of is None else f"P({score_of}), test split, |w|-weighted",
                     fontsize=10 if score_of is not None else None)
        ax.legend(fontsize=8 if score_of is not None else None)
    return _png(fig)


def importance(booster: Any, feature_names: Sequence[str]) -> dict[str, float]:
    """Total gain per feature, largest first (features never used are left out)."""
    gains = booster.get_score(importance_type="total_gain")
    named = {}
    for key, value in gains.items():
        name = feature_names[int(key[1:])] if key.startswith("f") and key[1:].isdigit() else key
        named[name] = float(value)
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))
