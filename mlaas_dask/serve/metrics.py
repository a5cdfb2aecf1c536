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

With several server processes (``mlaas serve --workers N``) every process writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, which the
command line sets up) and ``/metrics`` from any of them answers the sum over all of them:
one view. The two gauges are then each process's value as of its last refresh (every
``--poll`` seconds and on every scrape), summed over the live processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: the folder of prometheus_client's multiprocess mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
        #: the labelled children already made (label values come from known models and
        #: fixed endpoints and statuses, so these stay small)
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._event_children: dict[tuple[str, str], Any] = {}
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []
        for name, doc, function in (
                ("mlaas_queue_rows", "Rows waiting for a prediction thread", queue_rows),
                ("mlaas_models_loaded", "Loaded model versions", models_loaded)):
            if self.multiprocess:  # files: values are written, not computed on scrape
                self._gauges.append((Gauge(name, doc, registry=registry,
                                           multiprocess_mode="livesum"), function))
            else:
                Gauge(name, doc, registry=registry).set_function(function)

    def observe_request(
        self, model: str, version: str, endpoint: str, status: int, seconds: float
    ) -> None:
        key = (model, version, endpoint, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and checks every value: once per key
            children = self._children[key] = (
                self.requests.labels(model, version, endpoint, str(status)),
                self.latency.labels(model, endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def observe_events(self, model: str, version: str, rows: int) -> None:
        key = (model, version)
        child = self._event_children.get(key)
        if child is None:
            child = self._event_children[key] = self.events.labels(model, version)
        child.inc(rows)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def observe_load(self, model: str, version: str, ok: bool) -> None:
        self.loads.labels(model, "ok" if ok else "error").inc()

    def refresh(self) -> None:
        """Write this process's gauge values (multiprocess mode; nothing otherwise)."""
        for gauge, function in self._gauges:
            gauge.set(function())

    def render(self) -> bytes:
        """The metrics in the Prometheus text format (of every process in multiprocess
        mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        self.refresh()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """This process is going: its live gauges leave the sum."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """Set up prometheus_client's multiprocess mode for the server processes started inside:
    ``PROMETHEUS_MULTIPROC_DIR`` as given (its old value files removed, as
    prometheus_client asks) or a new temporary folder, removed at the end."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink(missing_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="mlaas-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
