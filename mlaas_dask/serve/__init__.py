"""Serving: trained bundles over HTTP.

The server speaks the Open Inference Protocol (KServe v2) REST API, with the binary tensor
data extension and the model repository extension (and its gRPC API with ``--grpc-port``),
and adds an event-level endpoint that takes raw events (flat values and jagged lists) and
applies the bundle's FeatureSpec: the same code as at training time.

Modules, one concept each:

- :mod:`~mlaas_dask.serve.errors` -- HTTP errors with a status and a readable message,
- :mod:`~mlaas_dask.serve.protocol` -- OIP JSON and binary tensor parsing and encoding,
- :mod:`~mlaas_dask.serve.events` -- raw JSON events (row-wise or columnar) to arrays,
- :mod:`~mlaas_dask.serve.repository` -- the model repository, versions, atomic swaps,
- :mod:`~mlaas_dask.serve.batching` -- dynamic batching, predictions off the event loop,
- :mod:`~mlaas_dask.serve.metrics` -- Prometheus metrics,
- :mod:`~mlaas_dask.serve.auth` -- bearer tokens for write (and optionally read) endpoints,
- :mod:`~mlaas_dask.serve.config` -- the server settings,
- :mod:`~mlaas_dask.serve.connections` -- head timeout, head size and connection limits
  (a uvicorn protocol),
- :mod:`~mlaas_dask.serve.modelconfig` -- Triton's model configuration of a served model,
- :mod:`~mlaas_dask.serve.grpc_service` -- the KServe v2 / Triton gRPC service (grpc.aio,
  ``--grpc-port``), beside the HTTP server on the same state,
- :mod:`~mlaas_dask.serve.app` -- the Starlette application.

Importing this package is light; :func:`create_app` imports Starlette when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlaas_dask.serve.config import ServeConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["ServeConfig", "create_app"]


def create_app(config: ServeConfig, **kwargs: Any) -> Starlette:
    """The Starlette application for ``config`` (see :func:`mlaas_dask.serve.app.create_app`)."""
    from mlaas_dask.serve.app import create_app as _create_app

    return _create_app(config, **kwargs)
