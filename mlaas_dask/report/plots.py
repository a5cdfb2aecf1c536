"""The report's figures, HEP style (mplhep's ROOT style, as TMVA draws them), as PNG
bytes. Figures are made without pyplot, so a notebook's backend is never switched."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from mlaas_dask.report.stats import class_scores, efficiencies, positives

#: bins of score histograms
SCORE_BINS = 40
#: input distributions: bins, and panels per row of the grid
INPUT_BINS = 30
INPUT_COLUMNS = 6
DPI = 80
#: the text on every figure: what it shows
LABEL = "mlaas_dask"


_LIGHTER: Any = {"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 9,
                 "xtick.minor.visible": False, "ytick.minor.visible": False,
                 "xtick.top": False, "ytick.right": False}


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib
    import mplhep

    # ROOT's look without its minor and mirrored ticks, which cost most of the drawing
    with matplotlib.rc_context(mplhep.style.ROOT), matplotlib.rc_context(_LIGHTER):
        yield


def _figure(width: float = 6.4, height: float = 4.8, rows: int = 1, cols: int = 1,
            **margins: float) -> tuple[Any, Any]:
    """A figure and its grid of axes, with fixed margins (a tight layout would draw the
    figure twice)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(**{"left": 0.14, "right": 0.96, "bottom": 0.13, "top": 0.93,
                           **margins})
    return fig, axes


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _label(ax: Any, text: str) -> None:
    import mplhep

    mplhep.label.exp_label(exp=LABEL, text=text, com=None, ax=ax, loc=0, fontsize=10)


def drawn(make: Callable[[], Any]) -> bytes:
    """A figure made by ``make`` inside the report's style, as PNG bytes."""
    with _style():
        return _png(make())


def overtraining_png(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     classes: Sequence[str],
                     pvalues: Mapping[str, Mapping[str, float | None]]) -> bytes:
    """TMVA's overtraining check: per score, each class's train scores (filled) and test
    scores (points with errors), normalised, with the KS p-values."""
    import mplhep

    def make() -> Any:
        train_parts = class_scores(train[0], train[1], classes)
        test_parts = class_scores(test[0], test[1], classes)
        cols = min(len(train_parts), 3)
        rows = math.ceil(len(train_parts) / cols)
        fig, axes = _figure(6.4 * cols, 4.8 * rows, rows, cols, wspace=0.3, hspace=0.3)
        bins = np.linspace(0, 1, SCORE_BINS + 1)
        for n, ((name, s_train, y_train), (_, s_test, y_test)) in enumerate(
                zip(train_parts, test_parts, strict=True)):
            ax = axes.flat[n]
            for i, cls in enumerate(classes):
                color = f"C{i}"
                trained, tested = s_train[y_train == i], s_test[y_test == i]
                if len(trained):
                    counts, _ = np.histogram(trained, bins)
                    mplhep.histplot(counts / max(counts.sum(), 1) / np.diff(bins), bins, ax=ax,
                                    histtype="fill", alpha=0.3, color=color,
                                    label=f"{cls} (train)")
                if len(tested):
                    counts, _ = np.histogram(tested, bins)
                    norm = max(counts.sum(), 1) * np.diff(bins)
                    p = pvalues.get(name, {}).get(cls)
                    ks = f", KS p = {p:.3f}" if p is not None else ""
                    mplhep.histplot(counts / norm, bins, yerr=np.sqrt(counts) / norm, ax=ax,
                                    histtype="errorbar", color=color, markersize=3,
                                    label=f"{cls} (test{ks})")
            ax.set_xlabel(f"score ({name})" if len(classes) > 2 else f"score: P({name})")
            ax.set_ylabel("normalised events (unweighted)")
            ax.set_yscale("log")
            ax.legend(loc="upper center")
            _label(ax, "Overtraining check")
        for ax in list(axes.flat)[len(train_parts):]:
            ax.set_visible(False)
        return fig

    return drawn(make)


def rejection_png(scores: np.ndarray, y: np.ndarray, classes: Sequence[str],
                  aucs: Mapping[str, float | None]) -> bytes:
    """ROC as background rejection 1/eff_B (log axis) vs signal efficiency, test split."""

    def make() -> Any:
        fig, axes = _figure()
        ax = axes[0, 0]
        for index, (name, score, labels) in enumerate(class_scores(scores, y, classes)):
            positive = positives(labels, index, classes)
            if positive.all() or not positive.any():
                continue
            eff_s, eff_b = efficiencies(score[positive], score[~positive])
            keep = eff_b > 0
            value = aucs.get(name)
            auc_text = f", AUC = {value:.4f}" if value is not None else ""
            who = f"{name} vs rest" if len(classes) > 2 else f"signal: {name}"
            ax.plot(eff_s[keep], 1 / eff_b[keep], label=f"{who}{auc_text}")
        grid = np.linspace(0.01, 1, 100)
        ax.plot(grid, 1 / grid, ls=":", color="grey", label="random")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("signal efficiency")
        ax.set_ylabel("background rejection 1 / eff$_B$")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3, which="both")
        _label(ax, "Test split, unweighted")
        return fig

    return drawn(make)


def inputs_png(X: np.ndarray, y: np.ndarray, names: Sequence[str],
               classes: Sequence[str]) -> bytes:
    """Every input feature's distribution per class (normalised, NaN padding left out):
    small panels without y ticks (the shapes are compared, not the heights)."""
    from matplotlib.ticker import MaxNLocator

    def make() -> Any:
        cols = min(INPUT_COLUMNS, max(len(names), 1))
        rows = max(math.ceil(len(names) / cols), 1)
        fig, axes = _figure(2.6 * cols, 1.9 * rows + 0.75, rows, cols, left=0.02, right=0.98,
                            bottom=0.4 / (1.9 * rows + 0.75), top=1 - 0.6 / (1.9 * rows + 0.75),
                            wspace=0.08, hspace=0.45)
        for j, name in enumerate(names):
            ax = axes.flat[j]
            _input_panel(ax, X[:, j], y, classes)
            ax.set_title(name, fontsize=8, pad=2)
            ax.tick_params(labelsize=7, left=False, labelleft=False)
            ax.xaxis.set_major_locator(MaxNLocator(3))
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("Input features per class (test split sample, unweighted, "
                     "normalised; missing objects left out)", fontsize=10)
        return fig

    return drawn(make)


def _input_panel(ax: Any, column: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> None:
    finite = np.isfinite(column)
    if not finite.any():
        return
    low, high = np.quantile(column[finite], [0.005, 0.995])
    bins = np.linspace(low, high if high > low else low + 1, INPUT_BINS + 1)
    for i, cls in enumerate(classes):
        values = column[finite & (y == i)]
        if len(values):
            counts, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins)
            ax.stairs(counts / counts.sum(), bins, color=f"C{i}", label=cls, lw=1.2)


def correlation(X: np.ndarray) -> np.ndarray:
    """Pearson correlations between the columns, over the events where both are
    present (missing objects are NaN); 0 where a column does not vary."""
    # every operand float64 and contiguous: matmul goes to BLAS (a bool operand made
    # numpy cast inside its own loops, 0.2 s instead of 2 ms for 5,000 x 48)
    present = np.isfinite(X).astype(np.float64)
    filled = np.where(present > 0, X, 0.0).astype(np.float64)
    both = present.T @ present
    with np.errstate(invalid="ignore", divide="ignore"):
        sum_x = filled.T @ present
        mean_x, mean_y = sum_x / both, (sum_x / both).T
        cross = filled.T @ filled / both - mean_x * mean_y
        square = (filled * filled).T @ present / both - mean_x ** 2
        out = cross / np.sqrt(square * square.T)
    return np.nan_to_num(np.clip(out, -1, 1))


def correlation_png(X: np.ndarray, names: Sequence[str], cls: str) -> bytes:
    """The correlation matrix of the inputs for one class, in percent, as TMVA shows it."""

    def make() -> Any:
        size = max(5.0, 0.22 * len(names) + 2)
        fig, axes = _figure(size + 1, size, left=1.3 / (size + 1), bottom=1.3 / size,
                            right=1 - 0.4 / (size + 1), top=1 - 0.4 / size)
        ax = axes[0, 0]
        matrix = correlation(X) * 100
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-100, vmax=100)
        if len(names) <= 20:
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.minorticks_off()
        ax.set_title(f"Correlations (%) of the inputs: {cls}")
        fig.colorbar(image, ax=ax, fraction=0.046)
        return fig

    return drawn(make)


def importance_png(importance: Mapping[str, float], what: str, top: int = 30) -> bytes:
    """Horizontal bars, largest first, of at most ``top`` features."""

    def make() -> Any:
        items = sorted(importance.items(), key=lambda kv: -kv[1])[:top]
        height = max(2.5, 0.16 * len(items) + 1.0)
        fig, axes = _figure(6.4, height, left=0.28, bottom=0.6 / height, top=1 - 0.35 / height)
        ax = axes[0, 0]
        ax.barh(range(len(items))[::-1], [v for _, v in items], color="C0")
        ax.set_yticks(range(len(items))[::-1], [k for k, _ in items], fontsize=7)
        ax.set_xlabel(what)
        ax.set_title("Feature importance")
        return fig

    return drawn(make)


def learning_curve_png(curves: Mapping[str, Sequence[float]], xlabel: str) -> bytes:
    """Loss per boosting round or epoch, one line per data set."""

    def make() -> Any:
        fig, axes = _figure()
        ax = axes[0, 0]
        for name, values in curves.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        _label(ax, "Learning curve")
        return fig

    return drawn(make)


def confusion_png(matrix: np.ndarray, classes: Sequence[str], accuracy: float | None) -> bytes:
    """The confusion matrix, normalised per true class (rows), with the counts."""

    def make() -> Any:
        fig, axes = _figure(1.2 * len(classes) + 3, 1.1 * len(classes) + 2.4, left=0.25,
                            bottom=0.25)
        ax = axes[0, 0]
        rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        fraction = matrix / rows
        image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{fraction[i, j]:.2f}\n({value})", ha="center", va="center",
                    fontsize=8, color="white" if fraction[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        shown = f"accuracy {accuracy:.4f}" if accuracy is not None else ""
        ax.set_title(f"Confusion matrix, test split ({shown})")
        fig.colorbar(image, ax=ax, fraction=0.046)
        return fig

    return drawn(make)


def bootstrap_png(values: Sequence[float], auc: float | None) -> bytes:
    """The AUCs of the bootstrap resamplings, with the test AUC."""

    def make() -> Any:
        fig, axes = _figure(6.4, 4.0)
        ax = axes[0, 0]
        ax.hist(values, bins=30, histtype="step", color="C0", lw=1.5,
                label=f"{len(values)} resamplings")
        if auc is not None:
            ax.axvline(auc, color="C3", ls="--", label=f"test AUC {auc:.4f}")
        ax.set_xlabel("AUC of a bootstrap resampling of the test split")
        ax.set_ylabel("resamplings")
        ax.legend()
        return fig

    return drawn(make)
