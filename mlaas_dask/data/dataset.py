"""Datasets: file groups read lazily, partition by partition, by the package's own tasks.

Opening a dataset reads only file metadata (trees, branch types, entry counts): partitions
(entry ranges) and their sizes are known before any event is read, and only the branches
asked for are ever read (column projection). Each partition is read by one Dask task with
uproot directly (:class:`PartitionSource`), not through ``uproot.dask``, so that every read
has its own timeout, retries and fallbacks and no credentials enter the task graph;
:meth:`Dataset.to_dask_awkward` gives the same partitions as plain ``uproot.dask``. The
user's own dask-awkward collections are read through their graphs instead
(:mod:`mlaas_dask.data.collections`).

Files may be local paths or globs, ``root://`` URLs (globs too), ``https://`` / ``davs://``
URLs, or CMS logical file names (``/store/...``) read through the redirectors of a
:class:`~mlaas_dask.data.remote.ReadPolicy`, which also says how long to wait, how often to
retry and whether a file that cannot be read stops the job or is skipped and reported.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlaas_dask.data.remote import (
    NotRootFile,
    Outcome,
    ReadFailure,
    ReadPolicy,
    display,
    failure_record,
    first_failure,
    is_lfn,
    is_remote,
    locations,
    normalise_url,
    open_root,
    read_range,
    with_fallback,
)
from mlaas_dask.data.rootio import branch_names, branch_types, find_tree, object_classes
from mlaas_dask.errors import DataError, did_you_mean, first_line


@dataclass(frozen=True)
class Group:
    """Files of one class. ``label`` is the class index; ``weight`` multiplies event weights."""

    name: str
    files: tuple[str, ...]
    label: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class FileInfo:
    """What opening a file told us: entries and the type of every branch we need.

    ``path`` is the file as the job names it (a path, URL or CMS LFN); ``url`` is where it
    was opened; ``places`` every place it may be read from, in order of preference (the
    one that worked first); ``identity`` its size and modification time (with a cache).
    """

    path: str
    group: int
    entries: int
    types: dict[str, str]
    jagged: dict[str, bool]
    url: str = ""
    places: tuple[str, ...] = ()
    identity: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        return self.url or self.path


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

    def __repr__(self) -> str:  # task arguments show up in worker logs: no credentials
        return (f"Partition(group={self.group}, file={self.file}, path={display(self.path)!r}, "
                f"start={self.start}, stop={self.stop})")


@dataclass(frozen=True)
class PartitionSource:
    """Everything a worker needs to read partitions of one file (sent with each task)."""

    path: str
    places: tuple[str, ...]
    entries: int
    tree: str
    branches: tuple[str, ...]
    policy: ReadPolicy
    identity: dict[str, Any] | None = None
    cache: Any = None

    def __repr__(self) -> str:  # task arguments show up in worker logs: no credentials
        return (f"PartitionSource({display(self.path)!r}, places="
                f"{[display(p) for p in self.places]!r}, entries={self.entries})")

    def read(self, start: int, stop: int) -> tuple[Any, Outcome]:
        """Events ``[start, stop)``; raises :class:`ReadFailure` if no place works."""
        return read_range(self.places, self.tree, self.branches, start, stop, self.entries,
                          self.policy, f"entries {start}-{stop} of {display(self.path)}")


def expand(pattern: str, group: str = "", policy: ReadPolicy | None = None) -> list[str]:
    """Local and ``root://`` globs become sorted file lists; other URLs, CMS logical file
    names (with redirectors) and plain paths are kept as they are."""
    where = f" (group {group!r})" if group else ""
    if "://" in pattern and not pattern.startswith("file://"):
        url = normalise_url(pattern)
        if url.startswith("root://") and glob.has_magic(url.split("://", 1)[1].split("/", 1)[-1]):
            return _remote_glob(url, where, policy or ReadPolicy())
        return [pattern]
    if is_lfn(pattern) and policy is not None and policy.redirectors:
        return [pattern]
    pattern = pattern.removeprefix("file://")
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise DataError(
                f"No file matches {pattern!r}{where}. Check the pattern, or generate sample "
                "data with 'mlaas sample --out DIR'.", file=pattern, group=group or None)
        return matches
    path = os.path.expanduser(pattern)
    if not os.path.exists(path):
        if is_lfn(path):
            raise DataError(
                f"{path!r}{where} looks like a CMS logical file name but no redirector is "
                "set: add dataset.redirectors, e.g. ['root://cms-xrd-global.cern.ch/'].",
                file=path, group=group or None)
        raise DataError(f"File {path!r}{where} does not exist. Check the path in the job file.",
                        file=path, group=group or None)
    if os.path.isdir(path):
        raise DataError(
            f"{path!r}{where} is a directory; give ROOT files or a glob such as "
            f"'{os.path.join(path, '*.root')}'.", file=path, group=group or None)
    return [path]


def _remote_glob(url: str, where: str, policy: ReadPolicy) -> list[str]:
    import fsspec

    from mlaas_dask.data.remote import open_options

    def action(u: str, fresh: bool) -> list[str]:
        fs, path = fsspec.core.url_to_fs(u, **open_options(u, policy),
                                         **({"skip_instance_cache": True} if fresh else {}))
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))

    found, _ = with_fallback([url], action, policy, f"the listing of {display(url)}{where}")
    if not found:
        raise DataError(f"No file matches {display(url)!r}{where}. Check the pattern.",
                        file=display(url))
    return found


def read_file_list(path: str | os.PathLike[str]) -> list[str]:
    """Paths, URLs or LFNs from a text file: one a line; blank lines and ``#`` comments
    are ignored; relative paths are relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(f"File list {path} does not exist.", file=str(path)) from None
    except OSError as err:
        raise DataError(f"Cannot read the file list {path} ({err.strerror}).",
                        file=str(path)) from None
    out = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not entry:
            continue
        if "://" not in entry and not is_lfn(entry) and not os.path.isabs(entry):
            entry = os.path.normpath(os.path.join(base, entry))
        out.append(entry)
    if not out:
        raise DataError(f"File list {path} lists no files.", file=str(path))
    return out


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
    policy
        Redirectors, timeouts, retries and the bad-file policy (:class:`ReadPolicy`).
    cache
        A :class:`~mlaas_dask.data.cache.FeatureCache`: file metadata is taken from it
        when the file's size and modification time match, and stored in it otherwise.
    """

    def __init__(
        self,
        groups: Sequence[Group],
        tree: str,
        branches: Sequence[str],
        step_size: int = 500_000,
        optional_branches: Sequence[str] = (),
        policy: ReadPolicy | None = None,
        cache: Any = None,
    ) -> None:
        self.groups = list(groups)
        self.tree = tree
        self.step_size = int(step_size)
        self.policy = policy or ReadPolicy()
        self.cache = cache
        paths = [(i, p) for i, g in enumerate(self.groups) for f in g.files
                 for p in expand(f, g.name, self.policy)]
        self.files_listed = len(paths)
        wanted = list(dict.fromkeys([*branches, *optional_branches]))

        def open_one(gp: tuple[int, str]) -> Any:
            try:
                return _open(gp[1], gp[0], tree, wanted, self.policy, cache)
            except ReadFailure as err:
                if self.policy.on_error == "fail":
                    raise
                return err

        with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
            results = list(pool.map(open_one, paths))
        #: files that could not be opened (with on_error: skip): file, group, error, attempts
        self.unopened: list[dict[str, Any]] = []
        #: partitions passed over by :meth:`sample` (with on_error: skip), as in a read report
        self.sample_skipped: list[dict[str, Any]] = []
        #: retries and fallbacks that ended well, when opening files
        self.open_outcomes: dict[str, Outcome] = {}
        opened = []
        for (number, path), result in zip(paths, results, strict=True):
            if isinstance(result, ReadFailure):
                self.unopened.append({
                    "file": display(path), "group": self.groups[number].name,
                    "start": 0, "stop": None, "entries": None, **failure_record(result)})
                continue
            info, available, outcome = result
            opened.append((info, available))
            if outcome is not None and outcome.attempts:
                self.open_outcomes[info.path] = outcome
        for group_index, group in enumerate(self.groups):
            if not any(info.group == group_index for info, _ in opened):
                lost = [u for u in self.unopened if u["group"] == group.name]
                raise DataError(
                    f"Group {group.name!r} lost all its files: none of its {len(lost)} "
                    "files could be opened (dataset.on_error: skip). First failure: "
                    f"{first_failure(lost)}",
                    group=group.name)
        self.files: list[FileInfo] = [info for info, _ in opened]
        present_everywhere = set(wanted).intersection(*(info.types for info in self.files))
        for info, available in opened:
            for branch in branches:
                if branch not in info.types:
                    raise DataError(
                        f"Branch {branch!r} is not in tree {tree!r} of {display(info.path)}."
                        + did_you_mean(branch, available, "branches"),
                        file=display(info.path), tree=tree, branch=branch, key=branch,
                        available=available)
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
        def describe(f: FileInfo) -> dict[str, Any]:
            out: dict[str, Any] = {"path": display(f.path), "entries": f.entries}
            if f.url and f.url != f.path:
                out["url"] = display(f.url)
            return out

        return {
            "tree": self.tree,
            "branches": self.branches,
            "entries": self.entries,
            "partitions": len(self.partitions),
            "groups": [
                {"name": g.name, "label": g.label, "weight": g.weight,
                 "files": [describe(f) for f in self.files if f.group == i]}
                for i, g in enumerate(self.groups)
            ],
            "reading": {**self.policy.describe(), "credentials": _credential_kinds(),
                        "cache": self.cache.describe() if self.cache is not None else None},
        }

    def sources(self) -> list[PartitionSource]:
        """One :class:`PartitionSource` per file (index = :attr:`Partition.file`)."""
        return [PartitionSource(info.path, info.places or (info.where,), info.entries,
                                self.tree, tuple(self.branches), self.policy, info.identity,
                                self.cache)
                for info in self.files]

    def read(self, file: int, branches: Sequence[str], start: int = 0,
             stop: int | None = None) -> Any:
        """Events ``[start, stop)`` of ``branches`` of file number ``file`` as an awkward
        array, with the dataset's timeouts, retries and fallbacks (on this machine)."""
        info = self.files[file]
        stop = info.entries if stop is None else min(stop, info.entries)
        events, _ = read_range(info.places or (info.where,), self.tree, branches, start,
                               stop, info.entries, self.policy,
                               f"entries {start}-{stop} of {display(info.path)}")
        return events

    def sample(self, branches: Sequence[str], per_group: int) -> list[Any]:
        """The first ``per_group`` events of each group, from its first file that can be
        read, as awkward arrays (for estimates such as ``n: auto``; not a full pass); see
        :meth:`sample_groups`."""
        return [events for _, events in self.sample_groups(branches, per_group)]

    def sample_groups(self, branches: Sequence[str], per_group: int) -> list[tuple[int, Any]]:
        """:meth:`sample` with the group index of every array.

        With ``on_error: skip`` a partition that cannot be read is passed over (and listed
        in :attr:`sample_skipped`): the sample goes on with the next partitions, of the
        same file or, when none of it can be read, of the group's next file. With
        ``fail`` the :class:`ReadFailure` ends the job."""
        arrays = []
        for group in range(len(self.groups)):
            wanted, sampled_file = per_group, None
            for part in (p for p in self.partitions if p.group == group):
                if wanted <= 0 or sampled_file not in (None, part.file):
                    break
                stop = min(part.stop, part.start + wanted)
                try:
                    events = self.read(part.file, branches, part.start, stop)
                except ReadFailure as err:
                    if self.policy.on_error == "fail":
                        raise
                    self.sample_skipped.append({
                        "file": display(part.path), "group": self.groups[group].name,
                        "start": part.start, "stop": stop, "entries": stop - part.start,
                        **failure_record(err)})
                    continue
                arrays.append((group, events))
                wanted -= len(events)
                sampled_file = part.file
        if not arrays and self.sample_skipped:
            raise DataError(
                f"No events could be read for the sample ({len(self.sample_skipped)} "
                f"partitions failed, dataset.on_error: skip). First failure: "
                f"{first_failure(self.sample_skipped)}", file=self.sample_skipped[0]["file"])
        return arrays

    # -- lazy reading ----------------------------------------------------------------------

    def to_dask_awkward(self) -> Any:
        """One dask-awkward array over every partition, in :attr:`partitions` order,
        reading only :attr:`branches`. Partition sizes are known without reading data.

        This is plain ``uproot.dask`` (no retries or fallbacks, no credentials in the
        graph); training and prediction read through :meth:`sources`, which have them."""
        import uproot

        files: dict[str, dict[str, Any]] = {}
        options: dict[str, Any] = {}
        for index, info in enumerate(self.files):
            steps = [[p.start, p.stop] for p in self.partitions if p.file == index]
            files[info.where] = {"object_path": self.tree, "steps": steps}
            if info.where.startswith("root://"):
                # only the timeout: TLS contexts and tokens must not go into a task graph
                options["timeout"] = max(1, round(self.policy.timeout))
        return uproot.dask(
            files,
            filter_name=self.branches,
            open_files=False,
            allow_read_errors_with_report=False,
            **options,
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
                        "drop the branch from the features.", file=display(info.path),
                        tree=self.tree, branch=branch)


def _open(path: str, group: int, tree: str, branches: Sequence[str], policy: ReadPolicy,
          cache: Any = None) -> tuple[FileInfo, list[str], Outcome | None]:
    """Open one file at the first of its places that works; read its tree's metadata."""
    places = locations(path, policy)
    wanted = sorted(branches)

    def action(url: str, fresh: bool) -> tuple[FileInfo, list[str]]:
        identity = None
        if cache is not None:
            from mlaas_dask.data.cache import digest, file_identity

            identity = file_identity(url, policy, name=path if is_lfn(path) else None)
            key = digest("meta", identity, tree, wanted)
            known = cache.load_meta(key)
            if known is not None:
                return FileInfo(path, group, known["entries"], known["types"],
                                known["jagged"], url, (), identity), known["available"]
        info, available = _read_metadata(path, url, group, tree, branches, policy, fresh)
        if cache is not None:
            cache.store_meta(key, {"entries": info.entries, "types": info.types,
                                   "jagged": info.jagged, "available": available})
        return FileInfo(path, group, info.entries, info.types, info.jagged, url, (),
                        identity), available

    try:
        (info, available), outcome = with_fallback(places, action, policy, display(path))
    except ReadFailure as err:
        if policy.on_error == "fail":
            raise DataError(f"{err} (dataset.on_error: fail)", file=display(path),
                            tree=tree) from None
        raise
    ordered = (info.url, *[p for p in places if p != info.url])
    info = FileInfo(info.path, info.group, info.entries, info.types, info.jagged, info.url,
                    ordered, info.identity)
    if info.entries == 0:
        raise DataError(
            f"Tree {tree!r} of {display(path)} has no events. Remove the file from the dataset.",
            file=display(path), tree=tree)
    return info, available, outcome


def _read_metadata(path: str, url: str, group: int, tree: str, branches: Sequence[str],
                   policy: ReadPolicy, fresh: bool = False) -> tuple[FileInfo, list[str]]:
    shown = display(path)
    try:
        handle = open_root(url, policy, fresh)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # uproot raises many kinds for bad files
        from mlaas_dask.data.remote import classify

        transient, _ = classify(err)
        if transient or is_remote(url):
            raise
        raise NotRootFile(  # the advice (truncated, corrupt...) comes with the ReadFailure
            f"cannot open it as a ROOT file ({_described(err)})"
        ) from None
    with handle:
        _check_size(handle)
        find_tree(object_classes(handle), tree, shown, by_base_name=False)
        try:
            ttree = handle[tree]  # a TTree or an RNTuple
            available = branch_names(ttree)
            types, jagged = branch_types(ttree, branches)
            entries = int(ttree.num_entries)
        except Exception as err:
            from mlaas_dask.data.remote import classify

            if classify(err)[0]:
                raise
            raise NotRootFile(
                f"cannot read tree {tree!r} ({_described(err)})"
            ) from None
    return FileInfo(path, group, entries, types, jagged, url), available


def _check_size(handle: Any) -> None:
    """A file shorter than its header says (a copy cut short) is refused when opened,
    not halfway through reading it."""
    file = handle.file
    try:
        size, end = int(file.source.num_bytes), int(file.fEND)
    except Exception:  # noqa: BLE001 - a source that cannot tell its size: skip the check
        return
    if size < end:
        raise NotRootFile(f"the file is truncated: it has {size:,} bytes but its ROOT header "
                          f"says {end:,}")


def _credential_kinds() -> dict[str, bool]:
    """Which credentials the client has (never their values)."""
    from mlaas_dask.data.credentials import bearer_token, proxy_path

    return {"x509_proxy": proxy_path() is not None, "bearer_token": bearer_token() is not None}


def _described(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err) or type(err).__name__}"
