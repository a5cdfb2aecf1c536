"""Prometheus metrics of the server, in a registry of its own (one per app).

- ``mlaas_requests_total{model, version, endpoint, status}`` (status 499: the client
  disconnected before sending its whole request)
- ``mlaas_request_duration_seconds{model, endpoint}`` (histogram)
- ``mlaas_events_scored_total{model, version}``
- ``mlaas_batch_rows`` and ``mlaas_batch_requests`` (histograms of the dynamic batches)
- ``mlaas_queue_rows`` (rows waiting for a prediction thread)
- ``mlaas_model_loads_total{model, result}`` and ``mlaas_models_loaded``

Model labels come only from models the server knows (unknown names are counted as
``model=""``), so clients cannot create label values at will.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class Metrics:
    """The server's metrics.

    Parameters
    ----------
    queue_rows
        Returns the number of rows waiting for a prediction thread.
    models_loaded
        Returns the number of loaded model versions.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_rows: Callable[[], float], models_loaded: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "mlaas_requests", "HTTP requests by model, version, endpoint and status",
            ["model", "version", "endpoint", "status"], registry=registry,
        )
        self.latency = Histogram(
            "mlaas_request_duration_seconds", "Request latency, body read to response",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.events = Counter(
            "mlaas_events_scored", "Events (rows) scored", ["model", "version"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "mlaas_batch_rows", "Rows per prediction batch", buckets=ROW_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "mlaas_batch_requests", "Requests merged into one prediction batch",
            buckets=ROW_BUCKETS[:9], registry=registry,
        )
        self.loads = Counter(
            "mlaas_model_loads", "Model version loads by result", ["model", "result"],
            registry=registry,
        )
        Gauge("mlaas_queue_rows", "Rows waiting for a prediction thread",
              registry=registry).set_function(queue_rows)
        Gauge("mlaas_models_loaded", "Loaded model versions",
              registry=registry).set_function(models_loaded)

    def observe_request(
        self, model: str, version: str, endpoint: str, status: int, seconds: float
    ) -> None:
        self.requests.labels(model, version, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def observe_load(self, model: str, version: str, ok: bool) -> None:
        self.loads.labels(model, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
