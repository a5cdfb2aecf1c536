"""What the stages hand each other, typed: the read report and matrix statistics of the
data stage, the metrics of training, the rows of ``mlaas bench``.

They are :class:`~typing.TypedDict` s, not dataclasses, because each of them is also a
JSON document of the bundle (metadata.json, metrics.json) or of ``bench.json``: plain
dicts at run time, checked keys for mypy and for the reader. This module imports nothing
of the package, so every stage may use it.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ReadReport(TypedDict):
    """Exactly what was read (``metadata.json`` ``data_summary.read_report``)."""

    on_error: str
    min_fraction: float
    rule: str
    files_listed: int
    files_opened: int
    files_unopened: list[dict[str, Any]]
    fraction_files_opened: float
    max_files_unopened: int
    events_planned: int
    events_read: int
    events_skipped: int
    fraction_read: float
    partitions: int
    partitions_skipped: list[dict[str, Any]]
    sample_skipped: list[dict[str, Any]]
    recovered: list[dict[str, Any]]
    cache_hits: int


class MatrixStats(TypedDict, total=False):
    """Totals of the feature matrices, per split (``train``, ``validation``, ``test``)
    and class; ``read_report`` is added once every partition has been read."""

    events_read: int
    events_selected: int
    events_per_class: dict[str, list[int]]
    weight_per_class: dict[str, list[float]]
    nonfinite_inputs: dict[str, int]
    #: ``{"negative_weights": policy, "per_split": {split: {"negative": n, "zero": n}}}``
    #: (counted before the policy; mlaas_dask.train.weights)
    weights: dict[str, Any]
    read_report: ReadReport


class Metrics(TypedDict, total=False):
    """``metrics.json``: the test split's figures, then the model kind's own entries
    (XGBoost: rounds, history, feature_importance; scikit-learn: fit, epochs...; neural
    networks: epochs, history), then seconds per stage."""

    auc: float | None
    auc_weighted: float
    auc_per_class: dict[str, float]
    events: int
    classes: list[str]
    events_per_class: dict[str, list[int]]
    seconds: dict[str, float]
    events_per_second_read_features: int
    # model-specific
    best_iteration: int | None
    rounds: int
    feature_importance: dict[str, float]
    history: dict[str, Any]
    resumes: list[dict[str, Any]]
    fit: str
    epochs: int
    blocks: int
    best_epoch: int
    stopped_early: bool
    loader: dict[str, Any]
    data_parallel: dict[str, Any]


class BenchRow(TypedDict, total=False):
    """One cluster's row of ``mlaas bench`` (``bench.json`` ``rows``); ``error`` instead
    of the figures when that cluster failed."""

    cluster: str
    error: str
    startup_s: float
    workers: int
    threads: int
    gpu_workers: int
    device: str | None
    auc: float | None
    rounds: int | None
    total_s: float
    placement: dict[str, Any]
    read_features_s: float | None
    read_features_events: int
    read_features_events_per_s: float | None
    train_s: float | None
    train_events: int
    train_events_per_s: float | None
    predict_s: float | None
    predict_events: int
    predict_events_per_s: float | None
