"""What training a model kind hands back to the job: bundle files, lazy test scores and
figures for metrics.json and metadata.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fitted:
    """A trained model, ready to be evaluated and written as a bundle.

    Attributes
    ----------
    model_file, model_bytes
        The model's file name in the bundle (which says its kind) and content.
    test_scores
        Lazy (dask) scores of the test split: ``(n,)`` binary, ``(n, classes)`` else.
    files
        Further bundle files (``preprocess.json``).
    metrics
        Model-specific entries of metrics.json (rounds, history, importance...).
    model_metadata
        The ``model`` entry of metadata.json (kind, parameters, where it trained...).
    """

    model_file: str
    model_bytes: bytes
    test_scores: Any
    files: dict[str, bytes] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_metadata: dict[str, Any] = field(default_factory=dict)
