"""mlaas_dask: Machine Learning as a Service for High Energy Physics, on Dask.

``import mlaas_dask`` is light: the heavy stages (uproot, dask, xgboost) are imported
only when used.  The public entry points are

- :class:`mlaas_dask.features.FeatureSpec` -- events to a flat float32 matrix,
- :func:`mlaas_dask.job.load_job` -- a validated YAML job,
- :func:`mlaas_dask.train.train` -- distributed XGBoost on a Dask cluster,
- :class:`mlaas_dask.bundle.ModelBundle` -- the saved, reusable model,
- :func:`mlaas_dask.predict.predict_files` -- distributed scoring of ROOT files.
"""

from __future__ import annotations

from mlaas_dask import logs as _logs
from mlaas_dask.errors import MlaasError

_logs.install()

__version__ = "0.1.0"
__all__ = ["MlaasError", "__version__"]
