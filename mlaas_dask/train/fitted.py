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
        Scores of the test split, probabilities: ``(n,)`` binary, ``(n, classes)`` else;
        a dask array (persisted on the workers, gathered once when evaluated) or numpy.
    files
        Further bundle files (``preprocess.json``).
    metrics
        Model-specific entries of metrics.json (rounds, history, importance...).
    model_metadata
        The ``model`` entry of metadata.json (kind, parameters, where it trained...).
    timings
        Seconds of the fitter's stages for metrics.json (``train``, ``predict``: the
        test scores computed and held on the workers).
    """

    model_file: str
    model_bytes: bytes
    test_scores: Any
    files: dict[str, bytes] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_metadata: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
