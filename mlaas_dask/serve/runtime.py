"""What serves one loaded model version: dynamic batchers for feature matrices (the Open
Inference Protocol) and for raw events (the event endpoint).

Event requests are merged *before* the FeatureSpec runs, so concurrent small requests share
one transformation and one prediction. Merging never changes a request's result: only
requests whose columns have the same types are merged (the transformation is per event),
and when a merged batch fails, each request is transformed alone so that only the bad one
gets the error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.serve.batching import Batcher, PredictionPool, split_rows
from mlaas_dask.serve.errors import BadRequest
from mlaas_dask.serve.events import EventColumns


class ModelRuntime:
    """The batchers of one model version.

    Parameters
    ----------
    bundle
        The loaded bundle.
    pool
        The shared prediction threads.
    max_batch_size, max_delay_s
        Dynamic batching limits (see :class:`~mlaas_dask.serve.batching.Batcher`).
    """

    def __init__(self, bundle: ModelBundle, pool: PredictionPool, max_batch_size: int,
                 max_delay_s: float = 0.0) -> None:
        self.bundle = bundle
        self.branches = bundle.spec.branches()
        #: the matrix columns (computed once: the FeatureSpec builds them on every call)
        self.feature_names = bundle.feature_names
        self.n_features = len(self.feature_names)
        self.matrices = Batcher(self.predict_matrices, pool, max_batch_size, max_delay_s)
        self.events = Batcher(self.score_events, pool, max_batch_size, max_delay_s)

    def predict_matrices(self, matrices: list[np.ndarray]) -> list[Any]:
        """Scores of each matrix, from one prediction over all that can be scored (the
        error of one that cannot)."""
        results: list[Any] = [self._unscorable(m) for m in matrices]
        good = [i for i, error in enumerate(results) if error is None]
        if good:
            parts = [matrices[i] for i in good]
            matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
            scores = self.bundle.predict_matrix(matrix)
            for index, values in zip(good, split_rows(scores, [len(p) for p in parts]),
                                     strict=True):
                results[index] = values
        return results

    def _unscorable(self, matrix: np.ndarray) -> BadRequest | None:
        """Why ``matrix`` cannot be scored: scikit-learn models refuse infinite values,
        also those that scaling makes infinite (XGBoost takes them); ``None`` if it can."""
        if self.bundle.kind == "xgboost" or not matrix.size:
            return None
        preprocess = self.bundle.preprocess
        with np.errstate(over="ignore", invalid="ignore"):
            seen = preprocess.apply(matrix) if preprocess is not None else matrix
        infinite = np.isinf(seen)
        if not infinite.any():
            return None
        row, column = np.unravel_index(np.argmax(infinite), matrix.shape)
        return BadRequest(
            f"Feature {self.bundle.feature_names[column]!r} of event {row} is "
            f"{matrix[row, column]:g}, which this {self.bundle.kind} model cannot score "
            "(it takes finite values once scaled; NaN marks a missing value). Send smaller "
            "values."
        )

    def score_events(self, parts: list[EventColumns]) -> list[Any]:
        """Scores of each request's events, or the exception of a request that failed."""
        results: list[Any] = [None] * len(parts)
        matrices: dict[int, np.ndarray] = {}
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, part in enumerate(parts):
            groups[part.signature()].append(index)
        for indices in groups.values():
            self._transform_group(parts, indices, matrices, results)
        done = sorted(matrices)
        if done:
            scores = self.predict_matrices([matrices[i] for i in done])
            for index, values in zip(done, scores, strict=True):
                results[index] = values
        return results

    def _transform_group(self, parts: list[EventColumns], indices: list[int],
                         matrices: dict[int, np.ndarray], results: list[Any]) -> None:
        spec = self.bundle.spec
        if len(indices) > 1:
            try:
                merged = spec.transform(EventColumns.merge([parts[i] for i in indices]).arrays())
            except Exception:  # noqa: BLE001 - one bad request: transform them one by one
                pass
            else:
                pieces = split_rows(merged, [parts[i].n_events for i in indices])
                matrices.update(zip(indices, pieces, strict=True))
                return
        for index in indices:
            try:
                matrices[index] = spec.transform(parts[index].arrays())
            except Exception as err:  # noqa: BLE001 - this request's error, not the others'
                results[index] = err
