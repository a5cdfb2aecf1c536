"""What the report is drawn from, stored in the bundle as ``report_data.npz`` (numpy
arrays only, read with ``allow_pickle=False``) so that ``mlaas report`` redraws it
without the training data or the cluster."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.errors import BundleError

#: the file in the bundle
DATA_FILE = "report_data.npz"
#: most events kept per split (a uniform sample of larger splits): scores, labels, weights
TEST_ROWS = 500_000
TRAIN_ROWS = 100_000
#: most test events whose input features are kept (distributions, correlations)
INPUT_ROWS = 10_000
_VERSION = 1


@dataclass
class Split:
    """Scores (``(n,)`` binary, ``(n, classes)`` else), labels and weights of a split."""

    scores: np.ndarray
    y: np.ndarray
    w: np.ndarray
    #: events of the split before sampling
    total: int = 0

    def sample(self, rows: int, seed: int = 0) -> Split:
        """At most ``rows`` events, a uniform sample in their original order."""
        n = len(self.y)
        if n <= rows:
            return Split(self.scores, self.y, self.w, self.total or n)
        keep = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))
        return Split(self.scores[keep], self.y[keep], self.w[keep], self.total or n)


@dataclass
class ReportData:
    """Everything the report shows that metrics.json does not hold.

    Attributes
    ----------
    test, train
        The test split and (when the model could score it) the training split.
    inputs, inputs_y
        A sample of the test split's feature matrix (float32, NaN for missing objects)
        and its labels.
    permutation
        Per feature, the test AUC lost when the feature is shuffled (models without
        their own importance), or ``None``.
    """

    classes: list[str]
    feature_names: list[str]
    test: Split
    train: Split | None
    inputs: np.ndarray
    inputs_y: np.ndarray
    permutation: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_npz(self) -> bytes:
        arrays: dict[str, Any] = {
            "version": np.array(_VERSION),
            "classes": np.array(self.classes, dtype=str),
            "feature_names": np.array(self.feature_names, dtype=str),
            "inputs": self.inputs.astype(np.float32),
            "inputs_y": self.inputs_y.astype(np.int16),
            "notes": np.array(self.notes, dtype=str),
        }
        splits = {"test": self.test, "train": self.train}
        for name, split in splits.items():
            if split is not None:
                arrays.update({f"{name}_scores": split.scores.astype(np.float32),
                               f"{name}_y": split.y.astype(np.int16),
                               f"{name}_w": split.w.astype(np.float32),
                               f"{name}_total": np.array(split.total)})
        if self.permutation is not None:
            arrays["permutation"] = np.array([self.permutation.get(n, np.nan)
                                              for n in self.feature_names])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes, where: str) -> ReportData:
        """Read :meth:`to_npz`'s bytes; ``where`` names the file in messages.

        Raises
        ------
        BundleError
            For a file that is not such an archive or lacks an array.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            names = [str(n) for n in arrays["feature_names"]]
            permutation = (dict(zip(names, map(float, arrays["permutation"]), strict=True))
                           if "permutation" in arrays else None)
            return cls([str(c) for c in arrays["classes"]], names, _split(arrays, "test"),
                       _split(arrays, "train") if "train_scores" in arrays else None,
                       arrays["inputs"], arrays["inputs_y"].astype(np.int64), permutation,
                       [str(n) for n in arrays.get("notes", [])])
        except (KeyError, ValueError, OSError) as err:
            raise BundleError(
                f"{where} is not a readable report data file ({type(err).__name__}: {err}). "
                "Retrain the bundle to make it again.", bundle=where, file=DATA_FILE
            ) from None


def _split(arrays: dict[str, Any], name: str) -> Split:
    return Split(arrays[f"{name}_scores"], arrays[f"{name}_y"].astype(np.int64),
                 arrays[f"{name}_w"], int(arrays[f"{name}_total"]))
