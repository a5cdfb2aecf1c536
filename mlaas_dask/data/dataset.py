"""Datasets: file groups read lazily with ``uproot.dask`` into dask-awkward partitions.

Opening a dataset reads only file metadata (trees, branch types, entry counts): partitions
and their sizes are known before any event is read, and only the branches asked for are
ever read (column projection).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlaas_dask.errors import DataError, did_you_mean


@dataclass(frozen=True)
class Group:
    """Files of one class. ``label`` is the class index; ``weight`` multiplies event weights."""

    name: str
    files: tuple[str, ...]
    label: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class FileInfo:
    """What opening a file told us: entries and the type of every branch we need."""

    path: str
    group: int
    entries: int
    types: dict[str, str]
    jagged: dict[str, bool]


@dataclass(frozen=True)
class Partition:
    """A contiguous range of entries of one file."""

    group: int
    file: int
    path: str
    start: int
    stop: int

    @property
    def entries(self) -> int:
        return self.stop - self.start


def expand(pattern: str, group: str = "") -> list[str]:
    """Local globs become sorted file lists; URLs and plain paths are kept as they are."""
    where = f" (group {group!r})" if group else ""
    if "://" in pattern and not pattern.startswith("file://"):
        return [pattern]
    pattern = pattern.removeprefix("file://")
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise DataError(
                f"No file matches {pattern!r}{where}. Check the pattern, or generate sample "
                "data with 'mlaas sample --out DIR'."
            )
        return matches
    path = os.path.expanduser(pattern)
    if not os.path.exists(path):
        raise DataError(f"File {path!r}{where} does not exist. Check the path in the job file.")
    if os.path.isdir(path):
        raise DataError(
            f"{path!r}{where} is a directory; give ROOT files or a glob such as "
            f"'{os.path.join(path, '*.root')}'."
        )
    return [path]


class Dataset:
    """File groups of one tree, opened and checked, ready to read lazily.

    Parameters
    ----------
    groups
        The file groups (one class each).
    tree
        TTree name, the same in every file.
    branches
        Branches to read (the column projection); checked to exist in every file with
        the same type.
    step_size
        Entries per partition.
    optional_branches
        Branches read when every file has them (e.g. event ids), silently dropped if not.
    """

    def __init__(
        self,
        groups: Sequence[Group],
        tree: str,
        branches: Sequence[str],
        step_size: int = 500_000,
        optional_branches: Sequence[str] = (),
    ) -> None:
        self.groups = list(groups)
        self.tree = tree
        self.step_size = int(step_size)
        paths = [(i, p) for i, g in enumerate(self.groups) for f in g.files
                 for p in expand(f, g.name)]
        wanted = list(dict.fromkeys([*branches, *optional_branches]))
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
            opened = list(pool.map(lambda gp: _open(gp[1], gp[0], tree, wanted), paths))
        self.files: list[FileInfo] = [info for info, _ in opened]
        present_everywhere = set(wanted).intersection(*(info.types for info in self.files))
        for info, available in opened:
            for branch in branches:
                if branch not in info.types:
                    raise DataError(
                        f"Branch {branch!r} is not in tree {tree!r} of {info.path}."
                        + did_you_mean(branch, available, "branches")
                    )
        self.optional_present = [b for b in optional_branches if b in present_everywhere]
        self.branches = list(dict.fromkeys([*branches, *self.optional_present]))
        self._check_same_schema()
        self.partitions = self._partition()

    # -- description --------------------------------------------------------------------

    @property
    def entries(self) -> int:
        return sum(f.entries for f in self.files)

    def entries_per_group(self) -> list[int]:
        totals = [0] * len(self.groups)
        for info in self.files:
            totals[info.group] += info.entries
        return totals

    @property
    def jagged(self) -> dict[str, bool]:
        """Whether each read branch is a list per event (from the first file)."""
        return {b: self.files[0].jagged[b] for b in self.branches}

    def summary(self) -> dict[str, Any]:
        return {
            "tree": self.tree,
            "branches": self.branches,
            "entries": self.entries,
            "partitions": len(self.partitions),
            "groups": [
                {"name": g.name, "label": g.label, "weight": g.weight,
                 "files": [{"path": f.path, "entries": f.entries}
                           for f in self.files if f.group == i]}
                for i, g in enumerate(self.groups)
            ],
        }

    # -- lazy reading ----------------------------------------------------------------------

    def to_dask_awkward(self) -> Any:
        """One dask-awkward array over every partition, in :attr:`partitions` order,
        reading only :attr:`branches`. Partition sizes are known without reading data."""
        import uproot

        files: dict[str, dict[str, Any]] = {}
        for info in self.files:
            steps = [[p.start, p.stop] for p in self.partitions if p.path == info.path]
            files[info.path] = {"object_path": self.tree, "steps": steps}
        return uproot.dask(
            files,
            filter_name=self.branches,
            open_files=False,
            allow_read_errors_with_report=False,
        )

    def _partition(self) -> list[Partition]:
        parts = []
        for index, info in enumerate(self.files):
            for start in range(0, info.entries, self.step_size):
                stop = min(start + self.step_size, info.entries)
                parts.append(Partition(info.group, index, info.path, start, stop))
        return parts

    def _check_same_schema(self) -> None:
        first = self.files[0]
        for info in self.files[1:]:
            for branch in self.branches:
                if info.types[branch] != first.types[branch]:
                    raise DataError(
                        f"Files in one dataset have different schemas: branch {branch!r} is "
                        f"{first.types[branch]} in {first.path} but {info.types[branch]} in "
                        f"{info.path}. Put files with different content in separate jobs, or "
                        "drop the branch from the features."
                    )


def _open(path: str, group: int, tree: str, branches: Sequence[str]) -> tuple[FileInfo, list[str]]:
    import uproot

    try:
        handle = uproot.open(path, timeout=30)
    except FileNotFoundError:
        raise DataError(f"File {path!r} does not exist. Check the path in the job file.") from None
    except Exception as err:  # noqa: BLE001 - uproot raises many kinds for bad files
        raise DataError(
            f"Cannot open {path!r} as a ROOT file ({type(err).__name__}: {_first_line(err)}). "
            "It may be truncated, corrupt or not a ROOT file; re-copy it or remove it from "
            "the dataset."
        ) from None
    with handle:
        trees = {k.split(";")[0]: v for k, v in handle.classnames().items()
                 if v in ("TTree", "TNtuple", "TNtupleD")}
        if tree not in trees:
            kinds = {k.split(";")[0]: v for k, v in handle.classnames().items()}
            if kinds.get(tree, "").endswith("RNTuple"):
                raise DataError(
                    f"{tree!r} in {path} is an RNTuple; mlaas_dask reads TTrees. Convert it, "
                    "or write the file as a TTree."
                )
            raise DataError(
                f"Tree {tree!r} is not in {path}."
                + (did_you_mean(tree, trees, "trees") if trees else " The file holds no trees.")
                + " Set dataset.tree in the job file."
            )
        try:
            ttree = handle[tree]
            available = list(ttree.keys(recursive=True))
            types: dict[str, str] = {}
            jagged: dict[str, bool] = {}
            for branch in branches:
                if branch in available:
                    types[branch] = ttree[branch].typename
                    jagged[branch] = _is_jagged(ttree[branch])
            entries = int(ttree.num_entries)
        except Exception as err:  # noqa: BLE001
            raise DataError(
                f"Cannot read tree {tree!r} of {path!r} ({type(err).__name__}: "
                f"{_first_line(err)}). The file may be truncated or corrupt."
            ) from None
    if entries == 0:
        raise DataError(
            f"Tree {tree!r} of {path} has no events. Remove the file from the dataset."
        )
    return FileInfo(path, group, entries, types, jagged), available


def _is_jagged(branch: Any) -> bool:
    import uproot

    interpretation = branch.interpretation
    return isinstance(interpretation, uproot.interpretation.jagged.AsJagged | uproot.AsObjects)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
