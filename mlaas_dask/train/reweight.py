"""Kinematic reweighting, so that a classifier cannot learn a spectrum (issue 13, item 4).

``reweight: {variables: [MET_pt], bins: 20, to: signal}`` in a job gives every event of
the training and validation splits a factor that makes each class's weighted distribution
of the variables (feature names: ``MET_pt``, ``Jet_pt_0``...) equal to the signal's
(``to: signal``, or a class name), or flat in the bins (``to: flat``) -- as weaver-core's
``reweight_method: ref|flat`` does. The histograms come from a sample read before the
cluster starts (the first ``sample_events`` of each group, as weaver-core takes its
reweighting from a fraction of the data); bins are quantiles of the target class's
values when ``bins`` is a number, or the edges given. Values outside the edges fall in the
edge bins; a missing value (NaN: no such object) keeps factor 1. Factors are clipped at
``max_factor`` and then scaled so that each class keeps its total weight. The test split
is not reweighted: its metrics are those of the physics sample.

The bundle keeps the table (``reweight.json``) and the distributions before and after
(``reweight.png``); scoring never applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas_dask.errors import ConfigError, did_you_mean

REWEIGHT_FILE = "reweight.json"
REWEIGHT_PLOT = "reweight.png"


@dataclass(frozen=True)
class Reweighting:
    """A fitted reweighting: per class, one factor per bin of the variables."""

    variables: tuple[str, ...]
    columns: tuple[int, ...]  # the variables' columns in the feature matrix
    edges: tuple[tuple[float, ...], ...]
    factors: np.ndarray  # (n_classes, bins_1, ..., bins_k)
    target: str

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The factor of every row of a feature matrix ``x`` with labels ``y``."""
        if len(y) == 0:
            return np.ones(0, np.float32)
        index, missing = self._bins(x)
        out = self.factors[(np.asarray(y, np.intp), *index)].astype(np.float32)
        out[missing] = 1.0
        return out

    def _bins(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        index, missing = [], np.zeros(len(x), bool)
        for column, edges in zip(self.columns, self.edges, strict=True):
            values = np.asarray(x[:, column], np.float64)
            missing |= ~np.isfinite(values)
            inner = np.asarray(edges[1:-1])
            index.append(np.searchsorted(inner, np.nan_to_num(values), side="right"))
        return index, missing

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """reweight.json: the variables, edges, target and every class's factors."""
        return {"variables": list(self.variables), "edges": [list(e) for e in self.edges],
                "to": self.target,
                "factors": {c: self.factors[i].tolist() for i, c in enumerate(classes)}}


def fit_reweighting(x: np.ndarray, y: np.ndarray, w: np.ndarray, feature_names: Sequence[str],
                    classes: Sequence[str], settings: dict[str, Any]) -> Reweighting:
    """Fit the factors on a sample (``x`` its feature matrix, ``y`` labels, ``w``
    training weights) for ``settings`` (the job's ``reweight`` mapping, validated).

    Raises
    ------
    ConfigError
        For a variable that is not a feature, a ``to`` that is not a class, ``flat`` or
        ``signal``, or a sample without events of the target class.
    """
    variables = tuple(settings["variables"])
    columns = []
    for name in variables:
        if name not in feature_names:
            raise ConfigError(f"reweight.variables names {name!r}, which is not a feature "
                              "of this job." + did_you_mean(name, feature_names, "features"),
                              key="reweight.variables")
        columns.append(list(feature_names).index(name))
    target = _target(settings["to"], classes)
    reference = (y == classes.index(target)) if target != "flat" else np.ones(len(y), bool)
    if not reference.any():
        raise ConfigError(f"The reweighting sample holds no event of class {target!r}; "
                          "raise reweight.sample_events.", key="reweight.to")
    w = np.abs(np.asarray(w, np.float64))
    edges = tuple(_edges(x[reference, c], w[reference], settings["bins"], i, variables)
                  for i, c in enumerate(columns))
    empty = Reweighting(variables, tuple(columns), edges,
                        np.ones((len(classes), *[len(e) - 1 for e in edges])), target)
    index, missing = empty._bins(x)
    shape = empty.factors.shape[1:]
    hist = np.zeros(empty.factors.shape)
    np.add.at(hist, (np.asarray(y, np.intp)[~missing], *[i[~missing] for i in index]),
              w[~missing])
    density = hist / np.maximum(hist.sum(axis=tuple(range(1, hist.ndim)), keepdims=True),
                                1e-300)
    goal = np.full(shape, 1.0 / np.prod(shape)) if target == "flat" else density[
        classes.index(target)]
    factors = np.where(density > 0, goal / np.where(density > 0, density, 1), 0.0)
    factors = np.minimum(factors, float(settings["max_factor"]))
    for c in range(len(classes)):
        if target != "flat" and classes[c] == target:
            factors[c] = 1.0
            continue
        kept = (hist[c] * factors[c]).sum()
        if kept > 0:  # each class keeps its total weight
            factors[c] *= hist[c].sum() / kept
    return Reweighting(variables, tuple(columns), edges, factors, target)


def _target(to: str, classes: Sequence[str]) -> str:
    if to == "flat":
        return "flat"
    if to == "signal" and len(classes) == 2:
        return classes[1]
    if to in classes:
        return to
    raise ConfigError(f"reweight.to is {to!r}; give 'flat', " + (
        "'signal', " if len(classes) == 2 else "") + "or one of the classes "
        + ", ".join(repr(c) for c in classes) + "." + did_you_mean(to, classes, "classes"),
        key="reweight.to")


def _edges(values: np.ndarray, weights: np.ndarray, bins: Any, i: int,
           variables: Sequence[str]) -> tuple[float, ...]:
    if isinstance(bins, list):
        given = bins[i] if bins and isinstance(bins[0], list) else bins
        if len(variables) > 1 and not (bins and isinstance(bins[0], list)):
            raise ConfigError("reweight.bins: with several variables give one list of edges "
                              "per variable, or a number of bins.", key="reweight.bins")
        edges = np.asarray(given, np.float64)
        if len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ConfigError(f"reweight.bins for {variables[i]!r} must be increasing edges "
                              f"(two or more), not {given!r}.", key="reweight.bins")
        return tuple(float(e) for e in edges)
    finite = np.isfinite(values)
    if not finite.any():
        raise ConfigError(f"reweight variable {variables[i]!r} has no value in the target "
                          "class's sample (every object missing?).", key="reweight.variables")
    quantiles = np.quantile(values[finite], np.linspace(0, 1, int(bins) + 1))
    return tuple(float(e) for e in np.unique(quantiles))


def reweight_png(x: np.ndarray, y: np.ndarray, w: np.ndarray, reweighting: Reweighting,
                 classes: Sequence[str]) -> bytes:
    """The variables' distributions per class in the sample, before and after."""
    import io

    from matplotlib.figure import Figure

    n = len(reweighting.variables)
    fig = Figure(figsize=(5 * n, 7), dpi=100)
    after = np.abs(w) * reweighting(x, y)
    for i, (name, column) in enumerate(zip(reweighting.variables, reweighting.columns,
                                           strict=True)):
        values = x[:, column]
        edges = np.asarray(reweighting.edges[i])
        for row, (weights, title) in enumerate(((np.abs(w), "before"), (after, "after"))):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            for c, label in enumerate(classes):
                rows = (y == c) & np.isfinite(values)
                if rows.any():
                    ax.hist(np.clip(values[rows], edges[0], edges[-1]), bins=edges.tolist(),
                            weights=weights[rows], density=True, histtype="step", lw=1.6,
                            ls=("-", "--", ":", "-.")[c % 4], label=label)
            ax.set_title(f"{name}, {title} reweighting (to {reweighting.target}; |w|)",
                         fontsize=9)
            ax.set_xlabel(name)
            ax.set_ylabel("normalised events")
            ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def sample_matrix(dataset: Any, plan: Any, per_group: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feature matrix, labels and training weights of the first ``per_group`` events
    of each group (the cut applied, ``dataset.negative_weights`` too): what the
    reweighting is fitted on, read in this process."""
    from mlaas_dask.train.matrix import _cut_mask, _labels, cut_branches, event_weights
    from mlaas_dask.train.weights import training_weights

    branches = list(dict.fromkeys([*plan.spec.branches(), *cut_branches(plan.cut),
                                   *([plan.weight_branch] if plan.weight_branch else []),
                                   *([plan.label_branch] if plan.label_branch else [])]))
    xs, ys, ws = [], [], []
    for group, events in dataset.sample_groups(branches, per_group):
        keep = (np.flatnonzero(_cut_mask(events, plan.cut)) if plan.cut
                else np.arange(len(events)))
        partition = next(p for p in dataset.partitions if p.group == group)
        w, kept = training_weights(event_weights(events, plan, group, keep)[0],
                                   plan.negative_weights)
        keep = keep if kept is None else keep[kept]
        xs.append(plan.spec.transform_with_stats(events, keep)[0])
        ys.append(_labels(events, partition, plan, keep))
        ws.append(w)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
