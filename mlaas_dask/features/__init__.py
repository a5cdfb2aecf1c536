"""Features: events (flat branches and jagged collections) -> a flat float32 matrix."""

from mlaas_dask.features.expressions import Expression
from mlaas_dask.features.scaling import Preprocess
from mlaas_dask.features.spec import Collection, FeatureSpec, estimate_n

__all__ = ["Collection", "Expression", "FeatureSpec", "Preprocess", "estimate_n"]
