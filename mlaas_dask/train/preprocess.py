"""The preprocessing of models that need it (scikit-learn, neural networks): NaN
replacement and standard scaling, fitted on the training split where its blocks are.
It becomes the bundle's ``preprocess.json``, applied identically by ``mlaas predict``
and the server (:class:`mlaas_dask.features.Preprocess`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlaas_dask.features import Preprocess


def fit_preprocess(client: Any, X_train: Any, fill_value: float, scale: bool) -> Preprocess:
    """NaN replacement, and standard scaling fitted on the training split only.

    One pass over the training blocks where they are: each block gives its row count,
    mean and sum of squared deviations in float64, combined with Chan et al.'s parallel
    formula (stable when means are far from zero). The same mean and scale as
    :class:`dask_ml.preprocessing.StandardScaler`, about 3x faster (its mean and variance
    are two dask reductions with float64 copies of every block).
    """
    fill = Preprocess(fill_value)
    if not scale:
        return fill
    from dask import delayed

    moments = client.compute([delayed(_block_moments, pure=True)(block, fill)
                              for block in X_train.to_delayed().ravel()], sync=True)
    return _from_moments(moments, X_train.shape[1], fill_value)


def _from_moments(moments: list[tuple[int, np.ndarray, np.ndarray]], width: int,
                  fill_value: float) -> Preprocess:
    n, mean, squares = 0, np.zeros(width), np.zeros(width)
    for n_block, mean_block, squares_block in moments:
        if n_block == 0:
            continue
        delta = mean_block - mean
        total = n + n_block
        squares = squares + squares_block + delta**2 * (n * n_block / total)
        mean = mean + delta * (n_block / total)
        n = total
    spread = np.sqrt(squares / max(n, 1))
    spread[~np.isfinite(spread) | (spread == 0)] = 1.0
    return Preprocess(fill_value, tuple(mean.tolist()), tuple(spread.tolist()))


def _block_moments(block: np.ndarray, fill: Preprocess) -> tuple[int, np.ndarray, np.ndarray]:
    filled = fill.apply(block)
    if len(filled) == 0:
        return 0, np.zeros(block.shape[1]), np.zeros(block.shape[1])
    mean = filled.mean(axis=0, dtype=np.float64)
    filled -= mean.astype(np.float32)
    np.square(filled, out=filled)
    return len(filled), mean, filled.sum(axis=0, dtype=np.float64)


def preprocess_from_matrix(X: np.ndarray, fill_value: float, scale: bool) -> Preprocess:
    """:func:`fit_preprocess` for a matrix in memory (a tune trial's sample)."""
    fill = Preprocess(fill_value)
    if not scale:
        return fill
    return _from_moments([_block_moments(X, fill)], X.shape[1], fill_value)
