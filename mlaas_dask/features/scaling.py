"""Preprocessing that models other than XGBoost need: NaN replacement and standard scaling.

Fitted at training time on the training split only, stored in the bundle as
``preprocess.json`` and applied by the same :meth:`Preprocess.apply` in ``mlaas predict``
and in the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


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
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        mean, scale = data.get("mean"), data.get("scale")
        return cls(float(data.get("fill_value", 0.0)),
                   tuple(float(v) for v in mean) if mean is not None else None,
                   tuple(float(v) for v in scale) if scale is not None else None)
