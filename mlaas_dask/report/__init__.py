"""The evaluation report of a bundle, in HEP style (TMVA's figures, drawn with mplhep):
overtraining check (train vs test scores per class, Kolmogorov-Smirnov p-values), ROC
as background rejection, working points, input distributions and correlations per class,
feature importance, learning curve, confusion matrix and accuracy, a bootstrap AUC
uncertainty.

Every bundle gets ``report.html`` (self-contained) and the figures as ``report_*.png``,
written in the bundle's staging folder with the rest of it (:func:`in_staging`);
``report_data.npz`` keeps what they are drawn from, so that :func:`rewrite` (``mlaas
report BUNDLE``) draws them again. The figures go into metrics.json too (``working_points``,
``auc_uncertainty``, ``overtraining``, ``confusion``). ``MLAAS_REPORT=0`` in the
environment leaves the report out of a training (for measurements).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.report import html, plots, stats
from mlaas_dask.report.data import DATA_FILE, TEST_ROWS, ReportData, Split

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
#: environment variable that switches the report off when it is "0"
SWITCH = "MLAAS_REPORT"

__all__ = ["DATA_FILE", "REPORT_FILE", "ReportData", "Split", "build", "in_staging",
           "report_metrics", "rewrite"]


def enabled() -> bool:
    """Whether trainings write the report (``MLAAS_REPORT`` is not ``0``)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def report_metrics(data: ReportData) -> dict[str, Any]:
    """The report's figures for metrics.json."""
    classes, test = data.classes, data.test
    boot = stats.bootstrap_auc(test.scores, test.y, classes)
    out: dict[str, Any] = {
        "working_points": {**stats.all_working_points(test.scores, test.y, classes),
                           "test_events": len(test.y)},
        "auc_uncertainty": {"method": "bootstrap of the test split", **boot},
        "confusion": stats.confusion(test.scores, test.y, classes),
    }
    if data.train is not None:
        out["overtraining"] = {
            "ks_pvalue": stats.overtraining((data.train.scores, data.train.y),
                                            (test.scores, test.y), classes),
            "test": "Kolmogorov-Smirnov (scipy.stats.ks_2samp), unweighted, train vs test "
                    "scores per true class", "train_events": len(data.train.y)}
    return out


def _aucs(classes: list[str], metrics: Mapping[str, Any]) -> dict[str, float | None]:
    if len(classes) == 2:
        return {classes[1]: metrics.get("auc")}
    return dict(metrics.get("auc_per_class") or {})


def _learning_curves(metrics: Mapping[str, Any]) -> tuple[dict[str, list[float]], str]:
    """Curves from metrics.json's history: XGBoost ``{data: {metric: [...]}}`` per round,
    a network's ``{train_loss: [...], validation_loss: [...]}`` per epoch."""
    history = metrics.get("history") or {}
    if not isinstance(history, dict):
        return {}, ""
    curves: dict[str, list[float]] = {}
    for key, value in history.items():
        if isinstance(value, dict):
            curves.update({f"{key} {m}": list(v) for m, v in value.items()
                           if isinstance(v, list) and v})
        elif key.endswith("_loss") and isinstance(value, list) and value:
            curves[key.removesuffix("_loss")] = [np.nan if v is None else v for v in value]
    return curves, "epoch" if "train_loss" in history else "boosting round"


def _importance(data: ReportData, metrics: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    gains = metrics.get("feature_importance")
    if isinstance(gains, dict) and gains:
        return {str(k): float(v) for k, v in gains.items()}, "total gain (XGBoost)"
    if data.permutation is not None:
        return data.permutation, "test AUC lost when the feature is shuffled (permutation)"
    return {}, ""


#: figures drawn on the cluster's workers when there is one (the largest), while this
#: process draws the others
_ON_WORKERS = ("inputs_png", "correlation_png")


class _Page:
    """Sections and figures collected while the report is drawn; figures are drawn when
    the page is rendered, the largest on the workers of ``client`` (if any) meanwhile."""

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.sections: list[tuple[str, str, str | None, Any, str]] = []
        self.files: dict[str, bytes] = {}

    def add(self, heading: str, content: str = "", name: str | None = None,
            draw: tuple[Any, ...] | None = None, caption: str = "") -> None:
        """A section; ``draw`` is ``(plots function, *arguments)`` of its figure."""
        pending = None
        if name is not None and draw is not None:
            function, *arguments = draw
            if self.client is not None and function.__name__ in _ON_WORKERS:
                pending = self.client.submit(function, *arguments, pure=False)
            else:
                pending = draw
        self.sections.append((heading, content, name, pending, caption))

    def render(self) -> list[tuple[str, str]]:
        """Draw the figures (this process's first, then the workers' gathered)."""
        drawn = {}
        for _, _, name, pending, _ in self.sections:
            if isinstance(pending, tuple):
                drawn[name] = pending[0](*pending[1:])
        for _, _, name, pending, _ in self.sections:
            if pending is not None and not isinstance(pending, tuple):
                drawn[name] = pending.result()
        out = []
        for heading, content, name, _, caption in self.sections:
            shown = content
            if name in drawn:
                self.files[str(name)] = drawn[name]
                shown += html.figure(str(name), drawn[name], caption)
            out.append((heading, shown))
        return out


def build(data: ReportData, metrics: Mapping[str, Any], metadata: Mapping[str, Any],
          client: Any = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Draw the report (the largest figures on the workers of ``client``, if given).

    Returns
    -------
    tuple
        The bundle files (``report.html``, ``report_*.png``, ``report_data.npz``) and
        the entries for metrics.json (:func:`report_metrics`).
    """
    figures = report_metrics(data)
    page = _Page(client)
    _summary(page, data, metrics, metadata, figures)
    _scores(page, data, metrics, figures)
    _inputs(page, data)
    _training(page, data, metrics)
    sections = page.render()
    page.files[DATA_FILE] = data.to_npz()
    title = f"Evaluation report: {_bundle_name(Path(str(metadata.get('bundle', 'model'))))}"
    page.files[REPORT_FILE] = html.page(title, sections)
    return page.files, figures


def _bundle_name(folder: Path) -> str:
    """The bundle's name, also from its staging folder (``.NAME.partial-XXXX``)."""
    staged = re.fullmatch(r"\.(.+)\.partial-[^.]+", folder.name)
    return staged.group(1) if staged else folder.name


def _summary(page: _Page, data: ReportData, metrics: Mapping[str, Any],
             metadata: Mapping[str, Any], figures: Mapping[str, Any]) -> None:
    boot = figures["auc_uncertainty"]
    model = metadata.get("model", {}) if isinstance(metadata.get("model"), dict) else {}
    per_class = metrics.get("events_per_class", {})
    rows: list[list[Any]] = [
        ["model", model.get("kind", "?")], ["classes", ", ".join(data.classes)],
        ["signal (binary score = P(signal))", data.classes[1] if len(data.classes) == 2
         else "-"],
        ["test AUC", metrics.get("auc")],
        ["test AUC uncertainty (bootstrap std)", boot["std"]],
        ["test AUC 68% interval", f"{_cell(boot['low'])} - {_cell(boot['high'])}"],
        ["test AUC, event-weighted", metrics.get("auc_weighted")],
        [f"accuracy ({figures['confusion']['rule']})", figures["confusion"]["accuracy"]],
    ]
    rows += [[f"events per class, {split}", ", ".join(map(str, counts))]
             for split, counts in per_class.items()]
    page.add("Summary", html.table(["", ""], rows) + "".join(html.note(n) for n in data.notes))


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _scores(page: _Page, data: ReportData, metrics: Mapping[str, Any],
            figures: Mapping[str, Any]) -> None:
    classes, test = data.classes, data.test
    if data.train is not None:
        pvalues = figures["overtraining"]["ks_pvalue"]
        rows = [[score, cls, p] for score, per in pvalues.items() for cls, p in per.items()]
        page.add("Overtraining check",
                 html.table(["score", "true class", "KS p-value"], rows)
                 + html.note(f"Kolmogorov-Smirnov test of train vs test scores, unweighted "
                             f"({len(data.train.y):,} train and {len(test.y):,} test "
                             "events); p below 0.01 points to overtraining."),
                 "report_overtraining.png",
                 (plots.overtraining_png, (data.train.scores, data.train.y),
                                        (test.scores, test.y), classes, pvalues),
                 "Train (filled) and test (points) scores per true class, normalised")
    else:
        page.add("Overtraining check", html.note(
            "Not available: the training split could not be scored here "
            + "; ".join(data.notes)))
    page.add("ROC: background rejection", "", "report_rejection.png",
             (plots.rejection_png, test.scores, test.y, classes, _aucs(classes, metrics)),
             "Background rejection 1/eff_B vs signal efficiency, test split, unweighted")
    points = figures["working_points"]
    rows = []
    for score, entry in points.items():
        if not isinstance(entry, dict):
            continue
        for key, values in entry.items():
            if isinstance(values, dict):
                given = "signal" if key.endswith("signal_efficiency") else "background"
                rows += [[score, f"{given} efficiency {float(e):.0%}",
                          "background" if given == "signal" else "signal", v]
                         for e, v in values.items()]
    page.add("Working points", html.table(["score", "at", "efficiency of", "value"], rows)
             + html.note(f"Test split, {points['test_events']:,} events, unweighted."))
    _uncertainty(page, figures, metrics)


def _uncertainty(page: _Page, figures: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    boot = figures["auc_uncertainty"]
    if boot["values"]:
        page.add("AUC uncertainty", html.note(
            f"{boot['samples']} bootstrap resamplings of the test split: std "
            f"{_cell(boot['std'])}"), "report_auc_bootstrap.png",
            (plots.bootstrap_png, boot["values"], metrics.get("auc")),
            "AUC of each bootstrap resampling")
    confusion = figures["confusion"]
    if len(confusion["classes"]) > 2:
        page.add("Confusion matrix", "", "report_confusion.png",
                 (plots.confusion_png, np.asarray(confusion["matrix"]), confusion["classes"],
                                     confusion["accuracy"]),
                 "Test split: fraction of each true class predicted as each class (counts)")


def _inputs(page: _Page, data: ReportData) -> None:
    X, y = data.inputs, data.inputs_y
    if len(y) == 0:
        page.add("Input features", html.note("No test events to show."))
        return
    page.add("Input features", "", "report_inputs.png",
             (plots.inputs_png, X, y, data.feature_names, data.classes),
             f"Input distributions per class ({len(y):,} test events)")
    for i, cls in enumerate(data.classes):
        rows = X[y == i]
        if len(rows) > 1:
            page.add(f"Correlations: {cls}", "", f"report_correlation_{_safe(cls)}.png",
                     (plots.correlation_png, rows, data.feature_names, cls),
                     f"Linear correlations of the inputs, {cls} ({len(rows):,} events; "
                     "pairs where both are present)")


def _training(page: _Page, data: ReportData, metrics: Mapping[str, Any]) -> None:
    importance, what = _importance(data, metrics)
    if importance:
        page.add("Feature importance", "", "report_importance.png",
                 (plots.importance_png, importance, what), f"Feature importance: {what}")
    else:
        page.add("Feature importance", html.note(
            "Not available: the model has no importance of its own and could not be "
            "scored here for a permutation importance."))
    curves, unit = _learning_curves(metrics)
    if curves:
        page.add("Learning curve", "", "report_learning_curve.png",
                 (plots.learning_curve_png, curves, unit), f"Loss per {unit}")
    else:
        page.add("Learning curve", html.note("This model kind records no loss per "
                                             "iteration."))


# -- in a bundle --------------------------------------------------------------------------


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((folder / name).read_text()))


def finish(folder: Path, data: ReportData, client: Any = None) -> dict[str, bytes]:
    """The report files of the bundle (or staging folder) ``folder``, and its
    metrics.json with the report's figures, as files to write there (the largest
    figures drawn on the workers of ``client``, if given)."""
    from mlaas_dask.bundle import METADATA_FILE, METRICS_FILE, json_bytes

    start = time.perf_counter()
    metrics = _read_json(folder, METRICS_FILE)
    metadata = {**_read_json(folder, METADATA_FILE), "bundle": str(folder)}
    files, figures = build(data, metrics, metadata, client)
    metrics.update(figures)
    seconds = metrics.setdefault("seconds", {})
    if isinstance(seconds, dict):
        seconds["report"] = round(time.perf_counter() - start, 3)
    files[METRICS_FILE] = json_bytes(metrics)
    return files


def in_staging(client: Any, matrices: Any, test: tuple[np.ndarray, np.ndarray, np.ndarray]
               ) -> Callable[[Path], dict[str, bytes]] | None:
    """What ``write_bundle(stage=...)`` calls with the bundle's staging folder, at the end
    of a training: the model loaded from there, the samples gathered from the workers,
    the report drawn. ``None`` when ``MLAAS_REPORT=0``.

    Parameters
    ----------
    matrices
        The training's feature matrices on the workers (train and test splits sampled).
    test
        The whole test split, gathered already: ``(labels, scores, weights)``.
    """
    if not enabled():
        return None

    def stage(folder: Path) -> dict[str, bytes]:
        from mlaas_dask.bundle import METADATA_FILE
        from mlaas_dask.report.collect import collect, load_staged

        start = time.perf_counter()
        model, why = load_staged(folder)
        metadata = _read_json(folder, METADATA_FILE)
        y, scores, w = (np.asarray(a) for a in test)
        data = collect(client, matrices, Split(scores, y, w).sample(TEST_ROWS), model,
                       [str(c) for c in metadata["classes"]],
                       list(metadata["features"]["names"]),
                       with_permutation=model is not None and model.kind != "xgboost")
        if why:
            data.notes.append(why)
        files = finish(folder, data, client)
        logger.info("Report: %s (%.1f s)", REPORT_FILE, time.perf_counter() - start)
        return files

    return stage


def rewrite(bundle: str | os.PathLike[str]) -> Path:
    """Draw a bundle's report again from its ``report_data.npz`` (``mlaas report``),
    replacing report.html, the figures and metrics.json's report entries atomically.

    Raises
    ------
    BundleError
        For a path that is not a bundle folder, or a bundle without report data.
    """
    from mlaas_dask.bundle import check_bundle_dir, update_bundle
    from mlaas_dask.errors import BundleError

    path = Path(bundle)
    if path.is_file():
        raise BundleError(
            f"{path} is a file: mlaas report rewrites a bundle folder. Extract the archive "
            f"(tar xzf {path}) and give the folder.", bundle=str(path))
    check_bundle_dir(path)
    source = path / DATA_FILE
    if not source.is_file():
        raise BundleError(
            f"Model bundle {path} has no {DATA_FILE} (it was written before reports "
            "existed, or with MLAAS_REPORT=0): retrain it to get a report.",
            bundle=str(path), file=DATA_FILE)
    data = ReportData.from_npz(source.read_bytes(), str(source))
    return update_bundle(path, lambda folder: finish(folder, data))
