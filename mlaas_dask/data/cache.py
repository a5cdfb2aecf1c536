"""A local cache of extracted features, so that training again reads nothing remote.

Entries are keyed by the file's identity -- its location plus size and modification time
(or ETag) as the storage reports them, so a changed file is never served stale -- and by
everything that shaped the features (the FeatureSpec, the cut, weights, split). Two kinds:

- ``meta/<key>.json``: what opening a file told the dataset (entries, branch types);
- ``parts/<xx>/<key>.parquet``: one partition's feature matrix, labels, weights and split.

Writers are safe to run concurrently (Dask workers on one machine, or several jobs):
each entry is written to a unique temporary file in the same folder and renamed into
place, which is atomic, so readers see a whole entry or none. The cache is kept under
``max_bytes``: after a write, the least recently used entries (by modification time,
touched on every hit) are deleted, under an advisory lock so that one process evicts at
a time. A reader whose entry was just evicted reads the data again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.errors import ConfigError

VERSION = 1
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(value: int | float | str) -> int:
    """``10 GB``, ``500MiB``, ``1e9`` or a number of bytes -> bytes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"cache size must be positive, got {value}.")
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot read {value!r} as a size; use e.g. '10 GB' or '500 MiB'.")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"cache size must be positive, got {value!r}.")
    return size


def digest(*parts: Any) -> str:
    text = json.dumps([VERSION, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureCache:
    """The cache folder and its size bound (picklable: it travels to the workers)."""

    directory: str
    max_bytes: int = 10 * 10**9

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", os.path.abspath(os.path.expanduser(
            self.directory)))

    # -- paths -----------------------------------------------------------------------

    def _part_path(self, key: str) -> Path:
        return Path(self.directory, "parts", key[:2], f"{key}.parquet")

    def _meta_path(self, key: str) -> Path:
        return Path(self.directory, "meta", f"{key}.json")

    # -- file metadata ---------------------------------------------------------------

    def load_meta(self, key: str) -> dict[str, Any] | None:
        path = self._meta_path(key)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        _touch(path)
        return data

    def store_meta(self, key: str, data: dict[str, Any]) -> None:
        self._write(self._meta_path(key), json.dumps(data).encode())

    # -- partitions ------------------------------------------------------------------

    def load_partition(self, key: str, split_names: tuple[str, ...]) -> dict[str, Any] | None:
        """A partition result as :func:`~mlaas_dask.train.matrix.process_partition` made
        it, or None when absent (or unreadable: a half-written file never is)."""
        import pyarrow.parquet as pq

        path = self._part_path(key)
        try:
            table = pq.read_table(path)
        except (OSError, ValueError):
            return None
        meta = json.loads(table.schema.metadata[b"mlaas"])
        n_features = meta["n_features"]
        columns = [table.column(f"f{i}").to_numpy() for i in range(n_features)]
        X = (np.column_stack(columns).astype(np.float32, copy=False) if columns
             else np.zeros((table.num_rows, 0), np.float32))
        X = np.asfortranarray(X)
        y = table.column("__y").to_numpy().astype(np.int32, copy=False)
        w = table.column("__w").to_numpy().astype(np.float32, copy=False)
        split = table.column("__split").to_numpy()
        result: dict[str, Any] = {"stats": meta["stats"]}
        for index, name in enumerate(split_names):
            rows = split == index
            result[name] = (X[rows], y[rows], w[rows])
        _touch(path)
        return result

    def store_partition(self, key: str, result: dict[str, Any],
                        split_names: tuple[str, ...]) -> None:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        blocks = [result[name] for name in split_names]
        X = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros((0, 0))
        columns: dict[str, Any] = {f"f{i}": np.ascontiguousarray(X[:, i])
                                   for i in range(X.shape[1])}
        columns["__y"] = np.concatenate([b[1] for b in blocks])
        columns["__w"] = np.concatenate([b[2] for b in blocks])
        columns["__split"] = np.concatenate([np.full(len(b[1]), i, np.int8)
                                             for i, b in enumerate(blocks)])
        table = pa.table(columns)
        meta = {"n_features": int(X.shape[1]), "stats": result["stats"]}
        table = table.replace_schema_metadata({"mlaas": json.dumps(meta, default=int)})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self._write(self._part_path(key), buffer.getvalue())

    # -- writing and eviction --------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # would evict everything else and still not fit
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.remove(tmp)
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                return  # a cache that cannot be written is no reason to fail a job
            raise
        self.evict()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry, oldest first."""
        out = []
        for sub in ("parts", "meta"):
            root = Path(self.directory, sub)
            if not root.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    path = Path(dirpath, name)
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    if name.endswith(".tmp"):
                        if time.time() - st.st_mtime > 3600:  # left by a killed writer
                            with contextlib.suppress(OSError):
                                path.unlink()
                        continue
                    out.append((st.st_mtime, st.st_size, path))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Delete least recently used entries until the cache fits; returns bytes freed."""
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        lock_path = Path(self.directory, ".lock")
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # another process is evicting
            try:
                entries = self.entries()
                total = sum(size for _, size, _ in entries)
                freed = 0
                for _, size, path in entries:
                    if total <= self.max_bytes:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        total -= size
                        freed += size
                return freed
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def describe(self) -> dict[str, Any]:
        return {"dir": self.directory, "max_bytes": self.max_bytes}


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def file_identity(url: str, policy: Any, name: str | None = None) -> dict[str, Any]:
    """Location (``name``: the logical name, e.g. a CMS LFN, else ``url``) + size +
    modification time (or ETag) of a file, from a stat: no data is read."""
    from mlaas_dask.data.remote import display, is_remote, open_options

    if not is_remote(url):
        st = os.stat(url)
        return {"url": os.path.abspath(name or url), "size": st.st_size,
                "mtime": st.st_mtime_ns}
    import fsspec

    options = open_options(url, policy)
    fs, path = fsspec.core.url_to_fs(url, **options)
    info = fs.info(path)
    identity = {"url": display(name or url), "size": info.get("size")}
    for key in ("mtime", "ETag", "Last-Modified", "checksum"):
        if info.get(key) is not None:
            identity[key] = info[key]
    return identity
