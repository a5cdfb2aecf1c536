"""Multiplicities: how many objects of a collection (jets, muons...) each event has, and how
many of them a fixed-width feature matrix keeps.

One estimate serves every place that sizes a collection: ``n: auto`` in a job
(:meth:`FeatureSpec.resolve <mlaas_dask.features.FeatureSpec.resolve>`) and the features
block that ``mlaas inspect`` suggests.
"""

from __future__ import annotations

import math

import numpy as np

#: the multiplicity quantile that sizes a collection unless the job names another
DEFAULT_QUANTILE = 0.95
#: the most objects a collection may keep per event
MAX_OBJECTS = 1_000


def multiplicity_stats(counts: np.ndarray) -> dict[str, float] | None:
    """Mean, 95th and 99th percentile (numpy's linear interpolation) and maximum of
    per-event object counts; ``None`` for no events."""
    counts = np.asarray(counts)
    if counts.size == 0:
        return None
    p95, p99 = np.percentile(counts, [95, 99])
    return {
        "mean": float(np.mean(counts)),
        "p95": float(p95),
        "p99": float(p99),
        "max": int(np.max(counts)),
    }


def objects_to_keep(multiplicity: float) -> int:
    """Objects to keep per event for a multiplicity quantile's value: rounded up, at least
    1, at most :data:`MAX_OBJECTS`."""
    return min(MAX_OBJECTS, max(1, math.ceil(float(multiplicity))))


def estimate_n(counts: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> int:
    """Objects to keep per event: the ``quantile`` of the sampled multiplicity (at least 1,
    at most :data:`MAX_OBJECTS`).

    MLaaS4HEP pads to the maximum seen over a full pass; a quantile of a sample keeps the
    matrix small and stable against rare, very busy events.
    """
    return objects_to_keep(float(np.quantile(np.asarray(counts), quantile)))
