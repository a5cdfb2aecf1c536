"""Preprocessing that models other than XGBoost need: NaN replacement and standard scaling.

Fitted at training time on the training split only, stored in the bundle as
``preprocess.json`` and applied by the same :meth:`Preprocess.apply` in ``mlaas predict``
and in the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas_dask.errors import FeatureError

#: the file of a model bundle that holds a Preprocess
PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class Preprocess:
    """``(where(isnan(X), fill_value, X) - mean) / scale``, column by column.

    ``mean`` and ``scale`` are ``None`` when only the NaN replacement is wanted.
    """

    fill_value: float = 0.0
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def apply(self, matrix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The preprocessed float32 matrix: a new row-major array, or ``out`` when given
        (any float32 array of the same shape; it may be ``matrix`` itself)."""
        if out is None:
            out = np.empty(matrix.shape, dtype=np.float32)
        if out is not matrix:
            out[...] = matrix
        np.copyto(out, np.float32(self.fill_value), where=np.isnan(out))
        if self.mean is not None and self.scale is not None:
            out -= np.asarray(self.mean, np.float32)
            out /= np.asarray(self.scale, np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"fill_value": self.fill_value,
                "mean": list(self.mean) if self.mean is not None else None,
                "scale": list(self.scale) if self.scale is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], n_features: int | None = None) -> Preprocess:
        """Build from the dict form (``preprocess.json``), checking every value.

        Parameters
        ----------
        n_features
            The width of the matrix it applies to: ``mean`` and ``scale`` must have one
            value per feature.

        Raises
        ------
        FeatureError
            For unknown keys, values that are not finite numbers, a zero scale, or lists
            of the wrong length.
        """
        if not isinstance(data, Mapping):
            raise FeatureError(f"{PREPROCESS_FILE} must hold a JSON object, not "
                               f"{type(data).__name__}.")
        unknown = sorted(set(data) - {"fill_value", "mean", "scale"})
        if unknown:
            raise FeatureError(f"{PREPROCESS_FILE} has unknown keys {unknown}; it holds "
                               "fill_value, mean and scale.", key=str(unknown[0]))
        fill = _number(data.get("fill_value", 0.0), "fill_value")
        mean = _numbers(data.get("mean"), "mean", n_features)
        scale = _numbers(data.get("scale"), "scale", n_features)
        if (mean is None) != (scale is None):
            raise FeatureError(f"{PREPROCESS_FILE} gives {'mean' if scale is None else 'scale'} "
                               "without the other; give both or neither.")
        if mean is not None and scale is not None and len(mean) != len(scale):
            raise FeatureError(f"{PREPROCESS_FILE} has {len(mean)} means but {len(scale)} "
                               "scales.", key="scale")
        if scale is not None and 0.0 in scale:
            raise FeatureError(f"{PREPROCESS_FILE}: scale {scale.index(0.0)} is 0; scales divide "
                               "the features and must not be 0.",
                               key=f"scale[{scale.index(0.0)}]")
        return cls(fill, mean, scale)



def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeatureError(f"{PREPROCESS_FILE}: {key} must be a number, not {value!r}.",
                           key=key)
    if abs(value) > _LARGEST or not math.isfinite(value):  # a huge int is no float
        raise FeatureError(f"{PREPROCESS_FILE}: {key} is {value!r}; it must be a finite "
                           "float32.", key=key)
    return float(value)


def _numbers(values: Any, key: str, n_features: int | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    if not isinstance(values, list):
        raise FeatureError(f"{PREPROCESS_FILE}: {key} must be a list of numbers, not "
                           f"{type(values).__name__}.", key=key)
    if n_features is not None and len(values) != n_features:
        raise FeatureError(f"{PREPROCESS_FILE}: {key} has {len(values)} values but the model "
                           f"has {n_features} features. The bundle is inconsistent; retrain it.",
                           key=key)
    return tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(values))


#: the largest float32: the matrix is float32, so larger means and scales overflow
_LARGEST = float(np.finfo(np.float32).max)
