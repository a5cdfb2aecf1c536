"""Partitions of a Dataset -> feature matrices, labels and weights per split.

One task per partition reads its events (only the needed branches), applies the cut,
runs :meth:`FeatureSpec.transform` and splits the rows; the results stay on the workers
and become dask arrays with known chunk sizes for ``xgboost.dask``
(:func:`build_matrices`).

Jobs whose matrix does not fit in the cluster's memory (:func:`estimate_memory`, from
the partitions' entries before anything is read), or that ask for it, are *streamed*
(:func:`stream_matrices`): the read pass keeps only each partition's stats and the
moments the preprocessing is fitted from, releases the partitions, and the matrices are
lazy dask arrays whose every computation reads the partitions again
(:func:`read_and_process`: the feature cache first when there is one). Their
:class:`StreamSource` lets the network loader and XGBoost's external memory read the
partitions themselves, a few at a time.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.contracts import MatrixStats, ReadReport
from mlaas_dask.data.collections import CollectionDataset
from mlaas_dask.data.dataset import Dataset, Partition, PartitionSource
from mlaas_dask.data.remote import ReadFailure, display, failure_record, max_files_unopened
from mlaas_dask.errors import DataError, FeatureError
from mlaas_dask.features import Expression, FeatureSpec
from mlaas_dask.train.split import SPLIT_NAMES, assign_split, file_key
from mlaas_dask.train.weights import count_signs, training_weights


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
    n_classes: int = 2
    label_branch: str | None = None
    #: what negative weights become in training (mlaas_dask.train.weights)
    negative_weights: str = "abs"
    #: the kinematic reweighting of the training splits (mlaas_dask.train.reweight)
    reweight: Any = None


@dataclass
class Matrices:
    """Per split, lazy dask arrays X (float32, n x F), y (int32), w (float32)."""

    X: dict[str, Any]
    y: dict[str, Any]
    w: dict[str, Any]
    stats: MatrixStats = field(default_factory=MatrixStats)
    #: the per-partition results held on the workers (release them to free memory)
    futures: list[Any] = field(default_factory=list)
    #: streamed matrices (nothing held): how to read the partitions again
    stream: StreamSource | None = None
    #: the memory estimate that chose between holding and streaming (None: not made)
    estimate: MemoryEstimate | None = None


#: the share of the workers' memory limits a held feature matrix may take
CLUSTER_FRACTION = 0.5


@dataclass(frozen=True)
class MemoryEstimate:
    """The feature matrix's size, from the partitions' entries, vs the cluster's memory.

    Attributes
    ----------
    matrix_bytes, train_bytes
        Every split (as :func:`build_matrices` holds them) and the training split alone:
        entries x (4 bytes x features + 8 for the label and weight); a cut only lowers it.
    memory_bytes
        The sum of the (reading) workers' memory limits; 0 when they have none.
    """

    matrix_bytes: int
    train_bytes: int
    memory_bytes: int
    workers: int

    @property
    def fits(self) -> bool:
        """Whether the matrix takes at most :data:`CLUSTER_FRACTION` of the memory."""
        return not self.memory_bytes or self.matrix_bytes <= CLUSTER_FRACTION * self.memory_bytes

    def describe(self) -> str:
        """The estimate in words (the start of the line the pipeline prints)."""
        limit = (f"{CLUSTER_FRACTION:g} x the memory limits of {self.workers} workers "
                 f"({_mb(self.memory_bytes)} in all)" if self.memory_bytes
                 else f"{self.workers} workers without memory limits")
        return (f"Feature matrix about {_mb(self.matrix_bytes)} (training split "
                f"{_mb(self.train_bytes)}) vs {limit}")

    def to_dict(self) -> dict[str, Any]:
        return {"matrix_bytes": self.matrix_bytes, "train_bytes": self.train_bytes,
                "memory_bytes": self.memory_bytes, "workers": self.workers,
                "cluster_fraction": CLUSTER_FRACTION, "fits": self.fits}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e10 else f"{n / 1e9:,.1f} GB"


def estimate_memory(client: Any, dataset: Dataset | CollectionDataset, plan: PartitionPlan,
                    workers: list[str] | None = None) -> MemoryEstimate | None:
    """:class:`MemoryEstimate` of a dataset of files before reading it (None for
    dask-awkward collections, whose entries are not known before reading)."""
    if isinstance(dataset, CollectionDataset):
        return None
    info = client.scheduler_info().get("workers", {})
    chosen = [w for a, w in info.items() if not workers or a in workers]
    limits = [int(w.get("memory_limit") or 0) for w in chosen]
    memory = 0 if not limits or not all(limits) else sum(limits)
    per_row = 4 * plan.spec.n_features + 8
    entries = sum(p.entries for p in dataset.partitions)
    return MemoryEstimate(entries * per_row, int(entries * plan.fractions[0]) * per_row,
                          memory, len(chosen))


@dataclass
class StreamSource:
    """How to read a streamed job's partitions again (picklable: sent to the tasks that
    read them), with what the read pass learnt of each.

    Attributes
    ----------
    rows, counts
        Per split, each partition's rows and events per class.
    moments
        Per partition, the :func:`~mlaas_dask.train.preprocess.feature_moments` of its
        training split (raw features).
    workers
        The workers allowed to read (None: any).
    """

    partitions: list[Partition]
    sources: list[PartitionSource]
    plan: PartitionPlan
    rows: dict[str, list[int]]
    counts: dict[str, list[list[int]]]
    moments: list[Any]
    workers: list[str] | None = None

    def read(self, index: int) -> dict[str, Any]:
        """Partition ``index`` read again (on a worker), checked against the read pass."""
        result = read_and_process(self.partitions[index], self.sources[index], self.plan)
        for name in SPLIT_NAMES:
            expected = self.rows[name][index] if name in self.rows else None
            if expected is not None and len(result[name][1]) != expected:
                raise DataError(
                    f"Entries {self.partitions[index].start}-{self.partitions[index].stop} "
                    f"of {display(self.partitions[index].path)} gave "
                    f"{len(result[name][1]):,} {name} events when read again, "
                    f"{expected:,} the first time: streamed training reads every partition "
                    "once per pass and needs the same events each time. Check that the "
                    "file did not change (or failed to read: dataset.on_error) and run "
                    "the job again.")
        return result

    def restrict(self) -> dict[str, Any]:
        """``client.submit`` keywords that keep reading on the allowed workers."""
        return {"workers": self.workers, "allow_other_workers": False} if self.workers else {}


def process_partition(events: Any, partition: Partition, plan: PartitionPlan) -> dict[str, Any]:
    """Cut, features, labels, weights and split of one partition (runs on a worker).

    The split of every event is known before the features are made, so the matrix is
    written once with its rows grouped by split: each split is a view of it, not a copy.
    """
    read = len(events)
    split = assign_split(_ids(events, partition, plan), *plan.fractions, plan.seed)
    if plan.cut:
        split[~_cut_mask(events, plan.cut)] = len(SPLIT_NAMES)  # sorts after the splits
    # a stable sort of small integers: a linear-time radix sort in numpy
    keep = np.argsort(split, kind="stable")
    bounds = np.searchsorted(split[keep], np.arange(len(SPLIT_NAMES) + 1))
    keep = keep[:bounds[-1]]
    selected = len(keep)
    X, nonfinite = plan.spec.transform_with_stats(events, keep)
    y = _labels(events, partition, plan, keep)
    w, bad_weights = event_weights(events, plan, partition.group, keep)
    if bad_weights:
        nonfinite[str(plan.weight_branch)] = bad_weights
    out: dict[str, Any] = {
        "stats": {"read": read, "selected": selected, "nonfinite": nonfinite,
                  "group": partition.group},
    }
    signs = {}
    for index, name in enumerate(SPLIT_NAMES):
        rows = slice(bounds[index], bounds[index + 1])
        x_split, y_split, w_split = X[rows], y[rows], w[rows]
        signs[name] = count_signs(w_split)
        if name != "test":  # the test split keeps the physics weights for the metrics
            w_split, kept = training_weights(w_split, plan.negative_weights)
            if kept is not None:
                x_split, y_split = x_split[kept], y_split[kept]
            if plan.reweight is not None:
                w_split = w_split * plan.reweight(x_split, y_split)
        out[name] = (x_split, y_split, w_split)
        out["stats"][name] = np.bincount(y_split, minlength=plan.n_classes).tolist()
        out["stats"][f"{name}_weight"] = np.bincount(
            y_split, weights=w_split, minlength=plan.n_classes).tolist()
    out["stats"]["weight_signs"] = signs
    return out


def event_weights(events: Any, plan: PartitionPlan, group: int,
                  keep: np.ndarray) -> tuple[np.ndarray, int]:
    """The physics weight of every kept event (the group's weight times the weight
    branch, a non-finite value counting as 0), and how many were non-finite."""
    w = np.full(len(keep), plan.group_weights[group], dtype=np.float32)
    if not plan.weight_branch:
        return w, 0
    branch = np.asarray(events[plan.weight_branch], dtype=np.float32)[keep]
    bad = ~np.isfinite(branch)
    if bad.any():
        branch = np.where(bad, 0.0, branch).astype(np.float32)
    return w * branch, int(bad.sum())


def _ids(events: Any, partition: Partition, plan: PartitionPlan) -> list[np.ndarray]:
    """The identity of every event: its id branches, else (file, entry)."""
    if plan.id_branches:
        return [np.asarray(events[b]) for b in plan.id_branches]
    entries = np.arange(partition.start, partition.start + len(events))
    return [np.full(len(events), file_key(partition.path), dtype=np.uint64), entries]


def _labels(events: Any, partition: Partition, plan: PartitionPlan,
            keep: np.ndarray) -> np.ndarray:
    if not plan.label_branch:
        return np.full(len(keep), plan.labels[partition.group], dtype=np.int32)
    values = np.asarray(events[plan.label_branch])[keep]
    labels = values.astype(np.int32)
    bad = (labels != values) | (labels < 0) | (labels >= plan.n_classes)
    if bad.any():
        raise DataError(
            f"Label branch {plan.label_branch!r} in {partition.path} holds the value "
            f"{values[bad][0].item()!r}; class indices 0 to {plan.n_classes - 1} are expected "
            f"(one per name in dataset.classes)."
        )
    return labels


def read_and_process(partition: Partition, source: PartitionSource,
                     plan: PartitionPlan) -> dict[str, Any]:
    """Read one partition (timeouts, retries, fallbacks; the feature cache first when
    there is one) and :func:`process_partition` it (runs on a worker).

    With ``on_error: skip`` a partition that cannot be read gives no rows and says why
    in its stats; with ``fail`` the :class:`ReadFailure` ends the job."""
    key = None
    cache = source.cache
    if cache is not None and source.identity is not None:
        from mlaas_dask.data.cache import digest

        key = digest("part", source.identity, source.tree, partition.start, partition.stop,
                     plan_fingerprint(plan, partition.group))
        cached = cache.load_partition(key, SPLIT_NAMES)
        if cached is not None:
            cached["stats"]["cache"] = "hit"
            cached["stats"]["group"] = partition.group
            return cached
    try:
        events, outcome = source.read(partition.start, partition.stop)
    except ReadFailure as err:
        if source.policy.on_error == "fail":
            raise
        return _failed(partition, err, plan)
    result = process_partition(events, partition, plan)
    if key is not None:
        cache.store_partition(key, result, SPLIT_NAMES)
        result["stats"]["cache"] = "miss"
    if outcome.attempts:
        result["stats"]["recovered"] = {
            "url": display(outcome.url or ""), "tries": outcome.tries,
            "fallbacks": outcome.fallbacks,
            "attempts": [a.to_dict() for a in outcome.attempts]}
    return result


def _failed(partition: Partition, err: ReadFailure, plan: PartitionPlan) -> dict[str, Any]:
    empty = (np.zeros((0, plan.spec.n_features), np.float32), np.zeros(0, np.int32),
             np.zeros(0, np.float32))
    stats: dict[str, Any] = {"read": 0, "selected": 0, "nonfinite": {},
                             "group": partition.group, "failed": failure_record(err)}
    out: dict[str, Any] = {"stats": stats}
    for name in SPLIT_NAMES:
        out[name] = empty
        stats[name] = [0] * plan.n_classes  # events per class, as process_partition gives
        stats[f"{name}_weight"] = [0.0] * plan.n_classes
    return out


def plan_fingerprint(plan: PartitionPlan, group: int) -> dict[str, Any]:
    """Everything that shapes one group's partition results (for the cache key)."""
    import dataclasses

    from mlaas_dask import __version__

    out: dict[str, Any] = {"version": __version__}
    for item in dataclasses.fields(plan):
        value = getattr(plan, item.name)
        if item.name == "spec":
            value = value.to_dict()
        elif item.name in ("labels", "group_weights"):
            value = value[group]
        out[item.name] = value
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


def sample_multiplicities(dataset: Dataset | CollectionDataset, spec: FeatureSpec,
                          sample: int = 100_000) -> dict[str, np.ndarray]:
    """Objects per event of every ``n: auto`` collection, from the first events of the
    first readable file of each group (a sample, not a full pass; with ``on_error: skip``
    unreadable partitions are passed over, see :meth:`Dataset.sample`)."""
    import awkward as ak

    wanted = {name: c.branches()[0] for name, c in spec.collections.items() if c.n is None}
    if not wanted:
        return {}
    counts: dict[str, list[np.ndarray]] = {name: [np.zeros(0, np.int64)] for name in wanted}
    per_group = max(1, sample // max(1, len({info.group for info in dataset.files})))
    for arrays in dataset.sample(list(wanted.values()), per_group):
        for name, branch in wanted.items():
            counts[name].append(np.asarray(ak.num(arrays[branch])))
    return {name: np.concatenate(values) for name, values in counts.items()}


def build_matrices(
    client: Any, dataset: Dataset | CollectionDataset, plan: PartitionPlan, progress: bool = True,
    workers: list[str] | None = None,
) -> Matrices:
    """Read and transform every partition on the cluster; keep the results on the workers.

    Returns dask arrays per split with known chunk sizes, plus totals for metadata.
    ``workers``, when given, are the only workers allowed to read (heterogeneous
    placement: e.g. the CPU workers, leaving the GPU workers to training).
    """
    from dask import delayed

    tasks = _partition_tasks(dataset, plan)
    restrict = {"workers": workers, "allow_other_workers": False} if workers else {}
    futures = client.compute(tasks, **restrict)
    try:
        stats, report = _read_pass(
            client, futures, dataset, progress,
            lambda: client.gather(client.map(_get_stats, futures, pure=False)))
    except BaseException:
        client.cancel(futures)
        raise
    matrices = _matrices(stats, report, dataset, plan, futures,
                         delayed(_get_split, pure=False))  # impure: a build of its own
    matrices.futures = futures
    return matrices


def stream_matrices(
    client: Any, dataset: Dataset, plan: PartitionPlan, progress: bool = True,
    workers: list[str] | None = None,
) -> Matrices:
    """:func:`build_matrices` for jobs that stream: one read pass keeps each partition's
    stats and training-split moments only (the partitions are released as soon as they
    are made); the matrices are lazy dask arrays whose computation reads the partitions
    again, and :attr:`Matrices.stream` says how to read them.

    Raises
    ------
    ConfigError
        For dask-awkward collections (``train(job, events=...)``): their partitions come
        from the user's graph and are held instead.
    """
    from dask import delayed

    from mlaas_dask.errors import ConfigError

    if isinstance(dataset, CollectionDataset):
        raise ConfigError("model.stream needs a dataset of files: dask-awkward collections "
                          "(train(job, events=...)) are read once and held. Set "
                          "model.stream: false, or list the files in the job.",
                          key="model.stream")
    sources = dataset.sources()
    restrict = {"workers": workers, "allow_other_workers": False} if workers else {}
    futures = client.map(scan_partition, dataset.partitions,
                         [sources[p.file] for p in dataset.partitions],
                         plan=plan, pure=False, **restrict)
    try:
        stats, report = _read_pass(client, futures, dataset, progress,
                                   lambda: client.gather(futures))
    except BaseException:
        client.cancel(futures)
        raise
    client.cancel(futures)  # only their stats: nothing to keep
    rows = {name: [int(sum(st[name])) for st in stats] for name in SPLIT_NAMES}
    counts = {name: [list(map(int, st[name])) for st in stats] for name in SPLIT_NAMES}
    source = StreamSource(list(dataset.partitions), [sources[p.file] for p in
                                                     dataset.partitions], plan, rows,
                          counts, [st.pop("moments") for st in stats], workers)
    reads = [delayed(_read_again, pure=False)(source, i,
                                              dask_key_name=f"stream-read-{uuid.uuid4().hex}")
             for i in range(len(source.partitions))]
    matrices = _matrices(stats, report, dataset, plan, reads, delayed(_get_split, pure=True))
    matrices.stream = source
    return matrices


def scan_partition(partition: Partition, source: PartitionSource,
                   plan: PartitionPlan) -> dict[str, Any]:
    """The streaming read pass of one partition (runs on a worker):
    :func:`read_and_process` (which fills the feature cache, when there is one), and
    only the stats and the training split's feature moments are kept."""
    from mlaas_dask.train.preprocess import feature_moments

    result = read_and_process(partition, source, plan)
    stats = result["stats"]
    stats["moments"] = feature_moments(result["train"][0])
    return dict(stats)


def _read_again(source: StreamSource, index: int) -> dict[str, Any]:
    return source.read(index)


def _read_pass(client: Any, futures: list[Any], dataset: Dataset | CollectionDataset,
               progress: bool, gather: Any) -> tuple[list[dict[str, Any]], ReadReport]:
    """The stats of a read pass's tasks, once they are done (a progress bar), checked by
    the read report."""
    from mlaas_dask.logs import show_progress

    if progress:
        show_progress(futures, "Reading partitions")
    stats: list[dict[str, Any]] = gather()
    report = (dataset.read_report(stats) if isinstance(dataset, CollectionDataset)
              else read_report(stats, dataset))
    return stats, report


def _matrices(stats: list[dict[str, Any]], report: ReadReport,
              dataset: Dataset | CollectionDataset, plan: PartitionPlan, parts: list[Any],
              getter: Any) -> Matrices:
    """Dask arrays per split over the per-partition results ``parts`` (futures or lazy
    tasks) of known rows."""
    import dask.array as da

    matrices = Matrices({}, {}, {}, _summarise(stats, dataset, plan))
    matrices.stats["read_report"] = report
    n_features = plan.spec.n_features
    for name in SPLIT_NAMES:
        blocks_x, blocks_y, blocks_w = [], [], []
        for part, stat in zip(parts, stats, strict=True):
            rows = sum(stat[name])
            if rows == 0:
                continue
            split = getter(part, name)
            blocks_x.append(da.from_delayed(split[0], shape=(rows, n_features),
                                            dtype=np.float32))
            blocks_y.append(da.from_delayed(split[1], shape=(rows,), dtype=np.int32))
            blocks_w.append(da.from_delayed(split[2], shape=(rows,), dtype=np.float32))
        if not blocks_x:
            empty = np.zeros((0, n_features), np.float32)
            blocks_x = [da.from_array(empty)]
            blocks_y = [da.from_array(np.zeros(0, np.int32))]
            blocks_w = [da.from_array(np.zeros(0, np.float32))]
        matrices.X[name] = da.concatenate(blocks_x)
        matrices.y[name] = da.concatenate(blocks_y)
        matrices.w[name] = da.concatenate(blocks_w)
    return matrices


def _partition_tasks(dataset: Dataset | CollectionDataset, plan: PartitionPlan) -> list[Any]:
    """One task per partition: the job path's tasks read their files themselves
    (:func:`read_and_process`); a collection's partitions come from its own graph."""
    import uuid

    from dask import delayed

    # a key of its own per job ('read_and_process-<hex>'): a second job on the same data
    # must read (or hit the feature cache) and report what it did itself, not get an
    # earlier job's results back from the workers
    if isinstance(dataset, CollectionDataset):
        task = delayed(process_partition, pure=True)
        return [task(events, p, plan, dask_key_name=f"process_partition-{uuid.uuid4().hex}")
                for events, p in zip(dataset.delayed_partitions(), dataset.partitions,
                                     strict=True)]
    sources = dataset.sources()
    task = delayed(read_and_process, pure=True)
    return [task(p, sources[p.file], plan, dask_key_name=f"read_and_process-{uuid.uuid4().hex}")
            for p in dataset.partitions]


def _get_stats(result: dict[str, Any]) -> dict[str, Any]:
    return result["stats"]


def _get_split(result: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return result[name]


def read_report(stats: list[dict[str, Any]], dataset: Dataset) -> ReadReport:
    """Exactly what was read: events planned (in the files that opened), read and skipped
    (per partition: file, entry range, error, attempts), files that did not open,
    partitions that needed retries or another place, partitions the ``n: auto`` sample
    passed over, cache hits.

    With ``on_error: skip`` the rule is (:data:`SKIP_RULE`): the events read must be at
    least ``min_fraction`` of the events in the files that opened, whose entries are
    known; a file that did not open has unknown entries, so it is counted apart, by
    files (:func:`~mlaas_dask.data.remote.max_files_unopened`). Raises
    :class:`DataError` when either falls short, or when a group lost all its events.
    """
    policy = dataset.policy
    skipped, recovered = [], []
    planned = read = failed_events = hits = 0
    read_per_group = [0] * len(dataset.groups)
    for partition, stat in zip(dataset.partitions, stats, strict=True):
        planned += partition.entries
        where = {"file": display(partition.path), "group": dataset.groups[partition.group].name,
                 "start": partition.start, "stop": partition.stop,
                 "entries": partition.entries}
        if "failed" in stat:
            failed_events += partition.entries
            skipped.append({**where, **stat["failed"]})
            continue
        if stat["read"] != partition.entries:
            raise DataError(  # never silently lose events
                f"Read {stat['read']} events instead of {partition.entries} from entries "
                f"{partition.start}-{partition.stop} of {display(partition.path)}.")
        read += stat["read"]
        read_per_group[partition.group] += stat["read"]
        hits += stat.get("cache") == "hit"
        if "recovered" in stat:
            recovered.append({**where, **stat["recovered"]})
    for path, outcome in dataset.open_outcomes.items():
        recovered.append({"file": display(path), "start": None, "stop": None,
                          "when": "opening", "url": display(outcome.url or ""),
                          "tries": outcome.tries, "fallbacks": outcome.fallbacks,
                          "attempts": [a.to_dict() for a in outcome.attempts]})
    if read + failed_events != planned:  # the accounting invariant
        raise DataError(f"Event accounting does not add up: read {read} + skipped "
                        f"{failed_events} != planned {planned}.")
    files_listed = dataset.files_listed
    files_opened = files_listed - len(dataset.unopened)
    fraction = read / planned if planned else 0.0
    report: ReadReport = {
        "on_error": policy.on_error,
        "min_fraction": policy.min_fraction,
        "rule": SKIP_RULE,
        "files_listed": files_listed,
        "files_opened": files_opened,
        "files_unopened": dataset.unopened,
        "fraction_files_opened": round(files_opened / max(1, files_listed), 6),
        "max_files_unopened": max_files_unopened(files_listed, policy.min_fraction),
        "events_planned": planned,
        "events_read": read,
        "events_skipped": failed_events,
        "fraction_read": round(fraction, 6),
        "partitions": len(dataset.partitions),
        "partitions_skipped": skipped,
        "sample_skipped": dataset.sample_skipped,
        "recovered": recovered,
        "cache_hits": hits,
    }
    for index, group in enumerate(dataset.groups):
        if read_per_group[index] == 0:
            first = f"{skipped[0]['message']} {skipped[0]['advice']}" if skipped else "none"
            raise DataError(
                f"Group {group.name!r} lost all its events: every partition of it failed "
                f"to read (dataset.on_error: skip). First failure: {first}")
    shortfalls = []
    if skipped and fraction < policy.min_fraction:
        shortfalls.append(
            f"Only {fraction:.1%} of the dataset could be read ({read:,} of {planned:,} "
            f"events in the {files_opened} of {files_listed} files that opened; "
            f"{len(dataset.unopened)} files did not open, {len(skipped)} partitions "
            f"failed), under dataset.min_fraction = {policy.min_fraction:g}")
    if len(dataset.unopened) > report["max_files_unopened"]:
        shortfalls.append(
            f"{'Only' if not shortfalls else 'only'} {files_opened} of {files_listed} files "
            f"could be opened: {len(dataset.unopened)} did not, and at most "
            f"{report['max_files_unopened']} may fail to open under dataset.min_fraction = "
            f"{policy.min_fraction:g}")
    if shortfalls:
        raise DataError(_shortfall_message(shortfalls, dataset.unopened + skipped))
    return report


#: the ``on_error: skip`` rule, as the docs and the messages state it
SKIP_RULE = ("at least dataset.min_fraction of the events in the files that opened must be "
             "read, and since a file that does not open has an unknown number of events, "
             "files that do not open count apart: at most (1 - min_fraction) of the files "
             "listed, and always one, may fail to open")


def _shortfall_message(shortfalls: list[str], failures: list[dict[str, Any]]) -> str:
    """One paragraph: what fell short, the rule, the first failure of (up to) three
    files, and each piece of advice once."""
    per_file: dict[str, dict[str, Any]] = {}
    for failure in failures:
        per_file.setdefault(failure["file"], failure)
    listed = " | ".join(f["message"] for f in list(per_file.values())[:3])
    advice = dict.fromkeys(f["advice"] for f in failures if f.get("advice"))
    return " ".join([
        f"{'; and '.join(shortfalls)}. The rule: {SKIP_RULE}.",
        f"{_n(len(failures), 'failure')} in {_n(len(per_file), 'file')}, the first of "
        f"each: {listed}", *advice,
        "To go on with what could be read, lower dataset.min_fraction."])


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_report(report: ReadReport) -> list[str]:
    """Terminal lines for a read report (none when every read went well first time)."""
    lines = []
    lost = report["files_unopened"] + report["partitions_skipped"]
    if lost:
        lines.append(
            f"Skipped {len(report['files_unopened'])} files that did not open and "
            f"{len(report['partitions_skipped'])} partitions ({report['events_skipped']:,} "
            f"events) that could not be read; read {report['events_read']:,} of "
            f"{report['events_planned']:,} events ({report['fraction_read']:.1%} of the "
            "events in the files that opened):")
        lines.extend(_failure_lines(lost))
    if report.get("sample_skipped"):
        lines.append(f"The sample for n: auto passed over {len(report['sample_skipped'])} "
                     "partitions that could not be read:")
        lines.extend(_failure_lines(report["sample_skipped"]))
    if report["recovered"]:
        retried = sum(1 for r in report["recovered"] if r["tries"] > 1)
        moved = sum(1 for r in report["recovered"] if r["fallbacks"])
        lines.append(f"Recovered {len(report['recovered'])} reads after errors "
                     f"({retried} retried, {moved} read from another place).")
    if report["cache_hits"]:
        lines.append(f"Feature cache: {report['cache_hits']} of {report['partitions']} "
                     "partitions came from the cache.")
    return lines


def _failure_lines(items: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in items:
        span = (f"entries {item['start']}-{item['stop']}" if item.get("stop") is not None
                else "whole file")
        lines.append(f"  {item['file']} ({span}, {len(item['attempts'])} attempts): "
                     f"{item['error']}")
    return lines


def _summarise(stats: list[dict[str, Any]], dataset: Dataset | CollectionDataset,
               plan: PartitionPlan) -> MatrixStats:
    n_classes = plan.n_classes
    per_class = {name: [0] * n_classes for name in SPLIT_NAMES}
    weight_per_class = {name: [0.0] * n_classes for name in SPLIT_NAMES}
    nonfinite: dict[str, int] = {}
    signs = {name: {"negative": 0, "zero": 0} for name in SPLIT_NAMES}
    read = selected = 0
    selected_per_group = [0] * len(dataset.groups)
    for stat in stats:
        read += stat["read"]
        selected += stat["selected"]
        selected_per_group[stat["group"]] += stat["selected"]
        for name in SPLIT_NAMES:
            for label in range(n_classes):
                per_class[name][label] += stat[name][label]
                weight_per_class[name][label] += stat[f"{name}_weight"][label]
        for branch, count in stat["nonfinite"].items():
            nonfinite[branch] = nonfinite.get(branch, 0) + count
        for name, counts in stat.get("weight_signs", {}).items():
            for sign, count in counts.items():
                signs[name][sign] += count
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
        "weights": {"negative_weights": plan.negative_weights, "per_split": signs},
    }


def balance_factors(totals: Any) -> np.ndarray:
    """Per-class weight factors that give every class present the same total weight
    (1 for classes that are absent)."""
    totals = np.asarray(totals, dtype=np.float64)
    present = totals > 0
    factors = np.ones_like(totals)
    factors[present] = totals[present].sum() / (present.sum() * totals[present])
    return factors


def bounded_sample(client: Any, x: Any, y: Any, w: Any, size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``size`` rows of dask arrays X, y, w, computed here: the same share of every
    block (blocks hold one file each, often of one class)."""
    import dask.array as da

    total = x.shape[0]
    size = min(total, size)
    take = [min(rows, math.ceil(size * rows / total)) for rows in x.chunks[0]]
    pieces = [(x.blocks[i][:k], y.blocks[i][:k], w.blocks[i][:k])
              for i, k in enumerate(take) if k]
    xs, ys, ws = client.compute([da.concatenate([p[j] for p in pieces]) for j in range(3)],
                                sync=True)
    return xs, ys, ws
