"""The user's dask-awkward collections as a training dataset (``train(job, events=...)``).

The job path (:class:`~mlaas_dask.data.dataset.Dataset`) opens files itself and reads
every partition in its own task, with timeouts, retries and redirector fallbacks. This
one takes the collections as the user built them -- ``uproot.dask`` or coffea NanoEvents,
after their selection, corrections and new columns -- one per group (class): each
partition of a collection becomes one training task, fed by the collection's own graph
after dask-awkward's column optimisation, so only the branches the features, the cut, the
weights and the event ids need are read. Reading errors are uproot's own (no retries).

Partitions are named ``<group>[<i>]`` (:attr:`Partition.path`): without event ids, the
split of an event is keyed by that name and the event's place in its partition, which is
deterministic for the same collection and partitioning; with event ids (``run``,
``luminosityBlock``, ``event`` in every collection) by the ids, as on the job path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlaas_dask.contracts import ReadReport
from mlaas_dask.data.dataset import Group, Partition
from mlaas_dask.data.events import branch_path, select_branches
from mlaas_dask.data.remote import ReadPolicy
from mlaas_dask.errors import DataError


class CollectionDataset:
    """Groups of events given as dask-awkward collections, one per group.

    Parameters
    ----------
    groups
        The groups (their ``files`` are empty), in the job's order.
    collections
        One dask-awkward array per group, in the same order.
    branches
        Branches every collection must give (the features', the cut's, the weight's).
    optional_branches
        Branches taken when every collection has them (event ids).
    """

    def __init__(self, groups: Sequence[Group], collections: Sequence[Any],
                 branches: Sequence[str], optional_branches: Sequence[str] = ()) -> None:
        self.groups = list(groups)
        self.policy = ReadPolicy()
        self.tree = "<dask-awkward>"
        self.files: list[Any] = []
        self.files_listed = 0
        self.unopened: list[dict[str, Any]] = []
        self.sample_skipped: list[dict[str, Any]] = []
        self.open_outcomes: dict[str, Any] = {}
        self.optional_present = [
            b for b in optional_branches
            if all(branch_path(c._meta, b) is not None for c in collections)]
        self.branches = list(dict.fromkeys([*branches, *self.optional_present]))
        self.collections = []
        for group, collection in zip(self.groups, collections, strict=True):
            what = f"the job (group {group.name!r})"
            self.collections.append(select_branches(collection, self.branches, what))
        self.partitions = [
            Partition(index, index, f"{group.name}[{i}]", 0, _known_length(collection, i))
            for index, (group, collection) in enumerate(
                zip(self.groups, self.collections, strict=True))
            for i in range(collection.npartitions)]

    @property
    def entries(self) -> int | None:
        """Events in all collections, or None when a selection made that unknown."""
        if not all(c.known_divisions for c in self.collections):
            return None
        return sum(c.divisions[-1] for c in self.collections)

    @property
    def jagged(self) -> dict[str, bool]:
        """Whether each branch is a list per event (from the first collection's type)."""
        meta = self.collections[0]._meta
        return {b: _is_list(meta[b]) for b in self.branches}

    def summary(self) -> dict[str, Any]:
        return {
            "source": "dask-awkward collections",
            "branches": self.branches,
            "entries": self.entries,
            "partitions": len(self.partitions),
            "groups": [{"name": g.name, "label": g.label, "weight": g.weight,
                        "partitions": c.npartitions}
                       for g, c in zip(self.groups, self.collections, strict=True)],
        }

    def delayed_partitions(self) -> list[Any]:
        """Every partition as a dask Delayed of its events (a flat record of
        :attr:`branches`), in :attr:`partitions` order, after column optimisation."""
        return [part for c in self.collections for part in c.to_delayed(optimize_graph=True)]

    def sample(self, branches: Sequence[str], per_group: int) -> list[Any]:
        """About the first ``per_group`` events of each group (computed here, partition
        by partition until there are enough), for estimates such as ``n: auto``."""
        return [events for _, events in self.sample_groups(branches, per_group)]

    def sample_groups(self, branches: Sequence[str], per_group: int) -> list[tuple[int, Any]]:
        """:meth:`sample` with the group index of every array."""
        arrays = []
        for index, (group, collection) in enumerate(zip(self.groups, self.collections,
                                                        strict=True)):
            got = 0
            for i in range(collection.npartitions):
                part = collection.partitions[i][list(branches)].compute()
                arrays.append((index, part[:per_group - got]))
                got += len(arrays[-1][1])
                if got >= per_group:
                    break
            if got == 0:
                raise DataError(f"The events of group {group.name!r} are empty: no event "
                                "to sample (check the selection).", group=group.name)
        return arrays

    def read_report(self, stats: list[dict[str, Any]]) -> ReadReport:
        """What was read, in the job path's terms (nothing is skipped or retried here:
        a partition that fails to read fails the job, as uproot raises)."""
        read = sum(s["read"] for s in stats)
        for partition, stat in zip(self.partitions, stats, strict=True):
            if partition.entries and stat["read"] != partition.entries:
                raise DataError(f"Read {stat['read']} events instead of {partition.entries} "
                                f"from partition {partition.path} of the collections.")
        return {
            "on_error": "fail", "min_fraction": 1.0, "rule": "every partition is read",
            "files_listed": 0, "files_opened": 0, "files_unopened": [],
            "fraction_files_opened": 1.0, "max_files_unopened": 0,
            "events_planned": read, "events_read": read, "events_skipped": 0,
            "fraction_read": 1.0, "partitions": len(self.partitions),
            "partitions_skipped": [], "sample_skipped": [], "recovered": [], "cache_hits": 0,
        }


def _is_list(array: Any) -> bool:
    """Whether an array holds a list per event (under any selection or missing values)."""
    import awkward as ak

    layout = ak.to_layout(array)
    while layout.is_indexed or layout.is_option:
        layout = layout.content
    return bool(layout.is_list)


def _known_length(collection: Any, i: int) -> int:
    """Events in partition ``i`` when the divisions are known (0: not known)."""
    if not collection.known_divisions:
        return 0
    return int(collection.divisions[i + 1] - collection.divisions[i])
