"""Event weights for training: what negative and zero weights (NLO samples) become.

``dataset.negative_weights`` decides for the training and validation splits:

- ``abs`` (the default) -- train with ``|w|``: every event counts, with the shape of the
  sample kept and the sign ignored (the common choice for BDTs; XGBoost needs weights of 0
  or more);
- ``keep`` -- train with the signed weights (neural networks and scikit-learn models whose
  loss takes them; refused for XGBoost);
- ``zero`` -- negative weights become 0: the events are read but do not count;
- ``drop`` -- events with a negative weight leave the training and validation splits.

The test split always keeps the signed weights, so the weighted metrics (the weighted AUC
of :func:`mlaas_dask.train.metrics.weighted_auc`) are those of the physics sample.
"""

from __future__ import annotations

import numpy as np

#: the choices of ``dataset.negative_weights``; the first is the default
NEGATIVE_WEIGHTS = ("abs", "keep", "zero", "drop")


def count_signs(w: np.ndarray) -> dict[str, int]:
    """How many weights are negative and how many are zero."""
    return {"negative": int(np.count_nonzero(w < 0)), "zero": int(np.count_nonzero(w == 0))}


def training_weights(w: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The weights to train with under ``policy``, and for ``drop`` the mask of the rows
    kept (``None`` when every row stays)."""
    if policy not in NEGATIVE_WEIGHTS:
        raise ValueError(f"negative_weights must be one of {NEGATIVE_WEIGHTS}, not {policy!r}")
    negative = w < 0
    if policy == "keep" or not negative.any():
        return w, None
    if policy == "abs":
        return np.abs(w), None
    if policy == "zero":
        return np.where(negative, np.float32(0), w).astype(w.dtype, copy=False), None
    return w[~negative], ~negative
