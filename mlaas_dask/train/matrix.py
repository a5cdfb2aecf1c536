"""Partitions of a Dataset -> feature matrices, labels and weights per split.

One task per partition reads its events (only the needed branches), applies the cut,
runs :meth:`FeatureSpec.transform` and splits the rows; the results stay on the workers
and become dask arrays with known chunk sizes for ``xgboost.dask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.data.dataset import Dataset, Partition
from mlaas_dask.errors import DataError, FeatureError
from mlaas_dask.features import Expression, FeatureSpec
from mlaas_dask.train.split import SPLIT_NAMES, assign_split, file_key


@dataclass(frozen=True)
class PartitionPlan:
    """What every partition task needs besides its events (sent once to each task)."""

    spec: FeatureSpec
    cut: str | None
    weight_branch: str | None
    id_branches: tuple[str, ...]
    fractions: tuple[float, float]
    seed: int
    group_weights: tuple[float, ...]
    labels: tuple[int, ...]


@dataclass
class Matrices:
    """Per split, lazy dask arrays X (float32, n x F), y (int32), w (float32)."""

    X: dict[str, Any]
    y: dict[str, Any]
    w: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    #: the per-partition results held on the workers (release them to free memory)
    futures: list[Any] = field(default_factory=list)


def process_partition(events: Any, partition: Partition, plan: PartitionPlan) -> dict[str, Any]:
    """Cut, features, labels, weights and split of one partition (runs on a worker)."""
    read = len(events)
    if plan.cut:
        mask = _cut_mask(events, plan.cut)
        events = events[mask]
    selected = len(events)
    X, nonfinite = plan.spec.transform_with_stats(events)
    y = np.full(selected, plan.labels[partition.group], dtype=np.int32)
    w = np.full(selected, plan.group_weights[partition.group], dtype=np.float32)
    if plan.weight_branch:
        branch = np.asarray(events[plan.weight_branch], dtype=np.float32)
        nonfinite_w = ~np.isfinite(branch)
        if nonfinite_w.any():
            nonfinite[plan.weight_branch] = int(nonfinite_w.sum())
            branch = np.where(nonfinite_w, 0.0, branch).astype(np.float32)
        w *= branch
    if plan.id_branches:
        ids = [np.asarray(events[b]) for b in plan.id_branches]
    else:
        entry = np.arange(partition.start, partition.stop)
        if plan.cut:
            entry = entry[np.asarray(mask)]
        ids = [np.full(selected, file_key(partition.path), dtype=np.uint64), entry]
    split = assign_split(ids, *plan.fractions, plan.seed)
    out: dict[str, Any] = {
        "stats": {"read": read, "selected": selected, "nonfinite": nonfinite,
                  "group": partition.group},
    }
    for index, name in enumerate(SPLIT_NAMES):
        rows = split == index
        out[name] = (X[rows], y[rows], w[rows])
        out["stats"][name] = int(rows.sum())
        out["stats"][f"{name}_weight"] = float(w[rows].sum(dtype=np.float64))
    return out


def _cut_mask(events: Any, cut: str) -> np.ndarray:
    import awkward as ak

    expression = Expression(cut, "selection cut")
    namespace = {name: events[name] for name in expression.names if name in events.fields}
    result = expression(namespace)
    try:
        mask = ak.to_numpy(result)
    except (ValueError, TypeError):
        raise FeatureError(
            f"The selection cut {cut!r} gives a list per event; reduce it with any(), all() "
            "or count(), e.g. 'count(Jet_pt) >= 2' or 'any(Jet_pt > 30)'."
        ) from None
    if mask.dtype != bool or mask.ndim != 1:
        raise FeatureError(
            f"The selection cut {cut!r} must give true/false per event (a comparison such as "
            f"'MET_pt > 20'), not {mask.dtype} values."
        )
    return mask


def cut_branches(cut: str | None) -> list[str]:
    """Branches a selection cut reads."""
    return sorted(Expression(cut, "selection cut").names) if cut else []


def sample_multiplicities(dataset: Dataset, spec: FeatureSpec, sample: int = 100_000) -> dict[str, np.ndarray]:
    """Objects per event of every ``n: auto`` collection, from the first events of the
    first file of each group (a sample, not a full pass)."""
    import awkward as ak
    import uproot

    wanted = {name: c.branches()[0] for name, c in spec.collections.items() if c.n is None}
    if not wanted:
        return {}
    counts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    firsts = {}
    for info in dataset.files:
        firsts.setdefault(info.group, info)
    per_group = max(1, sample // max(1, len(firsts)))
    for info in firsts.values():
        with uproot.open(info.path) as handle:
            tree = handle[dataset.tree]
            arrays = tree.arrays(list(wanted.values()), entry_stop=per_group)
        for name, branch in wanted.items():
            counts[name].append(np.asarray(ak.num(arrays[branch])))
    return {name: np.concatenate(values) for name, values in counts.items()}


def build_matrices(
    client: Any, dataset: Dataset, plan: PartitionPlan, progress: bool = True
) -> Matrices:
    """Read and transform every partition on the cluster; keep the results on the workers.

    Returns dask arrays per split with known chunk sizes, plus totals for metadata.
    """
    import dask.array as da
    from dask import delayed
    from distributed import progress as progress_bar

    events = dataset.to_dask_awkward()
    parts = events.to_delayed(optimize_graph=True)
    task = delayed(process_partition, pure=True)
    tasks = [task(part, p, plan) for part, p in zip(parts, dataset.partitions, strict=True)]
    futures = client.compute(tasks)
    if progress:
        progress_bar(futures)
        print()
    stats = client.gather(client.map(_get_stats, futures, pure=False))
    matrices = Matrices({}, {}, {}, _summarise(stats, dataset, plan), futures)
    n_features = plan.spec.n_features
    getter = delayed(_get_split, pure=True)
    for name in SPLIT_NAMES:
        blocks_x, blocks_y, blocks_w = [], [], []
        for future, stat in zip(futures, stats, strict=True):
            rows = stat[name]
            if rows == 0:
                continue
            part = getter(future, name)
            blocks_x.append(da.from_delayed(part[0], shape=(rows, n_features), dtype=np.float32))
            blocks_y.append(da.from_delayed(part[1], shape=(rows,), dtype=np.int32))
            blocks_w.append(da.from_delayed(part[2], shape=(rows,), dtype=np.float32))
        if not blocks_x:
            empty = np.zeros((0, n_features), np.float32)
            blocks_x = [da.from_array(empty)]
            blocks_y = [da.from_array(np.zeros(0, np.int32))]
            blocks_w = [da.from_array(np.zeros(0, np.float32))]
        matrices.X[name] = da.concatenate(blocks_x)
        matrices.y[name] = da.concatenate(blocks_y)
        matrices.w[name] = da.concatenate(blocks_w)
    return matrices


def _get_stats(result: dict[str, Any]) -> dict[str, Any]:
    return result["stats"]


def _get_split(result: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return result[name]


def _summarise(stats: list[dict[str, Any]], dataset: Dataset, plan: PartitionPlan) -> dict[str, Any]:
    n_classes = max(plan.labels) + 1
    per_class = {name: [0] * n_classes for name in SPLIT_NAMES}
    weight_per_class = {name: [0.0] * n_classes for name in SPLIT_NAMES}
    nonfinite: dict[str, int] = {}
    read = selected = 0
    selected_per_group = [0] * len(dataset.groups)
    for stat in stats:
        label = plan.labels[stat["group"]]
        read += stat["read"]
        selected += stat["selected"]
        selected_per_group[stat["group"]] += stat["selected"]
        for name in SPLIT_NAMES:
            per_class[name][label] += stat[name]
            weight_per_class[name][label] += stat[f"{name}_weight"]
        for branch, count in stat["nonfinite"].items():
            nonfinite[branch] = nonfinite.get(branch, 0) + count
    if selected == 0:
        raise DataError(
            f"No events pass the selection cut {plan.cut!r} (read {read} events). Loosen the "
            "cut in dataset.cut." if plan.cut else "The dataset holds no events."
        )
    for index, group in enumerate(dataset.groups):
        if selected_per_group[index] == 0:
            raise DataError(
                f"Group {group.name!r} has no events after the selection cut {plan.cut!r}; "
                "every group needs events. Loosen the cut or remove the group."
            )
    classes_present = [c for c in range(n_classes) if sum(per_class[n][c] for n in SPLIT_NAMES)]
    if len(classes_present) < 2:
        raise DataError(
            "Only one class has events after the selection; a classifier needs at least two. "
            "Check the labels of dataset.groups and the cut."
        )
    return {
        "events_read": read,
        "events_selected": selected,
        "events_per_class": per_class,
        "weight_per_class": weight_per_class,
        "nonfinite_inputs": nonfinite,
    }
