"""The end of every training job, whatever the model: evaluate on the test split, plot,
and write the bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlaas_dask.train import metrics as metrics_module
from mlaas_dask.train.fitted import Fitted

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.contracts import Metrics
    from mlaas_dask.features import FeatureSpec
    from mlaas_dask.train.matrix import Matrices


def evaluate_and_write(client: Client, fitted: Fitted, matrices: Matrices, classes: list[str],
                       timings: dict[str, float], t0: float, out: Path, overwrite: bool,
                       spec: FeatureSpec, metadata: dict[str, Any]) -> tuple[Path, Metrics]:
    """Gather the test scores (once), compute metrics and plots, write the bundle
    atomically.

    Returns the bundle path and metrics.json's content.
    """
    from mlaas_dask.bundle import ROC_PLOT, SCORES_PLOT, write_bundle
    from mlaas_dask.report import in_staging

    start = time.perf_counter()
    scores, y_test, w_test = client.compute(
        [fitted.test_scores, matrices.y["test"], matrices.w["test"]], sync=True)
    test = metrics_module.evaluate(y_test, scores, w_test, classes)
    plots = {
        ROC_PLOT: metrics_module.roc_png(y_test, scores, classes, test.get("auc")),
        SCORES_PLOT: metrics_module.scores_png(y_test, scores, w_test, classes),
    }
    timings["evaluate"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0
    stats = matrices.stats
    metrics = cast("Metrics", {
        "auc": test.get("auc"),
        **{k: v for k, v in test.items() if k != "auc"},
        "classes": classes,
        "events_per_class": stats["events_per_class"],
        **fitted.metrics,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "events_per_second_read_features": round(stats["events_read"]
                                                 / max(timings["read_features"], 1e-9)),
    })
    bundle = write_bundle(out, model=fitted.model_bytes, model_file=fitted.model_file,
                          spec=spec, metadata={**metadata, "model": fitted.model_metadata},
                          metrics=metrics, extra_files={**plots, **fitted.files},
                          overwrite=overwrite,
                          stage=in_staging(client, matrices, (y_test, scores, w_test)))
    return bundle, metrics
