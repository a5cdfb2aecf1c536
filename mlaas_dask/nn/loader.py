"""The loader: the training split -> mixed, preprocessed batches on the training worker,
the next chunks prefetched (and fetched in parallel) in a background thread.

Partitions usually hold one file, hence one class. Every epoch the loader cuts the
training split into *chunks*, each made of pieces of several partitions of every class
(weaver-core's file mixing): a class with fewer partitions than there are chunks has
its partitions sliced into more pieces, so every chunk holds events of every class. A
chunk's rows are shuffled (and the few rows left after its last full batch go into the
next chunk), so no batch is one class.

Pieces are cut and preprocessed (NaN fill, scaling, class-balance factors folded into
the event weights) by small tasks where the partitions are; only the chunk travels to
the trainer. Three modes (``TrainingData.mode``):

- ``memory`` -- the partitions are held on the workers (:func:`from_partitions`) and
  the splits fit the training worker (at most :data:`MEMORY_FRACTION` of its memory
  limit): the first epoch trains on the chunks as they arrive and keeps them in one
  array; later epochs shuffle all its rows.
- ``held`` -- the partitions are held on the workers but the splits do not fit the
  training worker: every epoch fetches its chunks again from them.
- ``stream`` -- nothing is held (:func:`from_stream`, for jobs whose matrix does not fit
  in the cluster's memory, or ``model.stream: true``): every epoch's chunks are made by
  tasks that read their partitions again (:meth:`StreamSource.read
  <mlaas_dask.train.matrix.StreamSource.read>`: the feature cache first, when there is
  one), at most ``prefetch`` chunks' partitions being read at once and at most
  ``prefetch + 2`` chunks on the training worker (``peak_rows_held`` in the loader's
  report says how many rows that was). Chunks are then about one partition of every
  class, so each partition is read about once per epoch (more for a class with fewer
  partitions: ``partition_reads`` says how many reads an epoch took). The validation
  split is scored inside per-partition tasks (:meth:`Loader.map_validation`): only the
  scores travel.
"""

from __future__ import annotations

import collections
import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas_dask.features import Preprocess

#: the largest share of the training worker's memory limit the splits may take in memory
MEMORY_FRACTION = 0.3
#: chunks fetched ahead of the one being trained on
PREFETCH = 2

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of the split of partition ``part``."""

    part: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class TrainingData:
    """What the trainer needs to fetch its data; picklable (sent with the training task).

    Attributes
    ----------
    keys
        The Dask keys of the per-partition results (held by the client while training;
        empty when streaming).
    rows, counts
        Per split, each partition's rows and events per class.
    preprocess
        Applied to every piece where it is cut.
    factors
        Per-class factors of the event weights (class balancing; ones without it).
    stream
        How to read the partitions again (:class:`~mlaas_dask.train.matrix.StreamSource`;
        mode ``stream`` only).
    """

    keys: list[str]
    rows: dict[str, list[int]]
    counts: dict[str, list[list[int]]]
    preprocess: Preprocess
    factors: tuple[float, ...]
    n_features: int
    mode: str = "memory"
    chunk_rows: int = 0
    prefetch: int = PREFETCH
    stream: Any = None

    def total(self, split: str) -> int:
        return int(sum(self.rows[split]))

    def nbytes(self, split: str) -> int:
        return self.total(split) * (4 * self.n_features + 8)


def from_partitions(client: Any, futures: list[Any], preprocess: Preprocess,
                    factors: Any, n_features: int, batch_size: int, stream: bool,
                    memory_limit: int) -> TrainingData:
    """The :class:`TrainingData` of the per-partition results ``futures`` (as
    :func:`mlaas_dask.train.matrix.build_matrices` holds them): their rows and classes
    per split are read from the tasks' small stats. Mode ``memory`` when the splits fit
    the training worker's ``memory_limit`` and ``stream`` is false, else ``held``."""
    from mlaas_dask.train.matrix import _get_stats

    stats = client.gather(client.map(_get_stats, futures, pure=False))
    rows = {s: [int(sum(st[s])) for st in stats] for s in ("train", "validation")}
    counts = {s: [list(map(int, st[s])) for st in stats] for s in ("train", "validation")}
    data = TrainingData([f.key for f in futures], rows, counts, preprocess,
                        tuple(float(f) for f in factors), n_features)
    in_use = [r for r in rows["train"] if r]
    data.chunk_rows = max(4 * batch_size, int(np.median(in_use)) if in_use else batch_size)
    fits = data.nbytes("train") + data.nbytes("validation") <= MEMORY_FRACTION * (
        memory_limit or float("inf"))
    data.mode = "memory" if fits and not stream else "held"
    return data


def from_stream(source: Any, preprocess: Preprocess, factors: Any, n_features: int,
                batch_size: int) -> TrainingData:
    """The :class:`TrainingData` of a streamed job (mode ``stream``) from its
    :class:`~mlaas_dask.train.matrix.StreamSource`: chunks of about one partition of
    every class (the sum over the classes of their median training rows per partition),
    so that each partition is read about once per epoch."""
    rows = {s: list(source.rows[s]) for s in ("train", "validation")}
    counts = {s: [list(c) for c in source.counts[s]] for s in ("train", "validation")}
    data = TrainingData([], rows, counts, preprocess, tuple(float(f) for f in factors),
                        n_features, mode="stream", stream=source)
    per_class: dict[int, list[int]] = {}
    for n, c in zip(rows["train"], counts["train"], strict=True):
        if n:
            per_class.setdefault(int(np.argmax(c)), []).append(n)
    typical = sum(int(np.median(v)) for v in per_class.values()) or batch_size
    data.chunk_rows = max(4 * batch_size, typical)
    return data


def cut_piece(result: dict[str, Any], split: str, start: int, stop: int,
              preprocess: Preprocess, factors: tuple[float, ...]) -> Arrays:
    """Rows ``start:stop`` of one partition's split, preprocessed, with class factors in
    the weights (runs where the partition is)."""
    x, y, w = result[split]
    x = preprocess.apply(x[start:stop])
    y = np.asarray(y[start:stop], dtype=np.int64)
    w = np.asarray(w[start:stop], dtype=np.float32) * np.asarray(factors, np.float32)[y]
    return x, y, w


def plan_chunks(rows: list[int], counts: list[list[int]], chunk_rows: int,
                rng: np.random.Generator) -> list[list[Piece]]:
    """One epoch's chunks: lists of pieces, each chunk with pieces of every class (see
    the module docstring), in a random order."""
    parts = [p for p, n in enumerate(rows) if n]
    if not parts:
        return []
    total = sum(rows[p] for p in parts)
    n_chunks = max(1, min(total, round(total / max(1, chunk_rows))))
    by_class: dict[int, list[int]] = {}
    for p in parts:
        by_class.setdefault(int(np.argmax(counts[p])), []).append(p)
    chunks: list[list[Piece]] = [[] for _ in range(n_chunks)]
    for members in by_class.values():
        rng.shuffle(members)
        slices = max(1, math.ceil(n_chunks / len(members)))
        pieces = []
        for p in members:
            bounds = np.linspace(0, rows[p], min(slices, rows[p]) + 1).astype(int)
            pieces += [Piece(p, int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
        order = rng.permutation(len(pieces))
        offset = int(rng.integers(n_chunks))
        for j, index in enumerate(order):
            chunks[(offset + j) % n_chunks].append(pieces[index])
    rng.shuffle(chunks)
    return [c for c in chunks if c]


def whole_partitions(rows: list[int]) -> list[list[Piece]]:
    """Every partition as one chunk (validation: order does not matter)."""
    return [[Piece(p, 0, n)] for p, n in enumerate(rows) if n]


def read_pieces(source: Any, index: int, split: str, bounds: list[tuple[int, int]],
                preprocess: Preprocess, factors: tuple[float, ...]) -> Arrays:
    """The pieces ``bounds`` of partition ``index``'s split, read again and cut, joined
    (a streaming task: the partition lives only while it runs)."""
    result = source.read(index)
    parts = [cut_piece(result, split, a, b, preprocess, factors) for a, b in bounds]
    return parts[0] if len(parts) == 1 else _join(parts)


@dataclass
class Fetcher:
    """Fetches chunks of the partitions held on the workers, from inside a task (the
    worker's client): :meth:`submit` starts a chunk's tasks, :meth:`collect` gathers it."""

    data: TrainingData
    split: str
    client: Any = None
    futures: dict[str, Any] = field(default_factory=dict)
    reads: int = 0

    def submit(self, chunk: list[Piece]) -> list[Any]:
        from distributed import Future

        client = self.client
        tasks = []
        for piece in chunk:
            key = self.data.keys[piece.part]
            source = self.futures.setdefault(key, Future(key, client=client))
            tasks.append(client.submit(cut_piece, source, self.split, piece.start,
                                       piece.stop, self.data.preprocess, self.data.factors,
                                       pure=False))
        return tasks

    def collect(self, tasks: list[Any]) -> Arrays:
        parts = self.client.gather(tasks)
        return parts[0] if len(parts) == 1 else _join(parts)

    def __call__(self, chunk: list[Piece]) -> Arrays:
        return self.collect(self.submit(chunk))


@dataclass
class StreamFetcher(Fetcher):
    """:class:`Fetcher` of a streamed job: one task per partition of the chunk reads it
    again and cuts its pieces (:func:`read_pieces`); nothing stays on the workers."""

    def submit(self, chunk: list[Piece]) -> list[Any]:
        by_part: dict[int, list[tuple[int, int]]] = {}
        for piece in chunk:
            by_part.setdefault(piece.part, []).append((piece.start, piece.stop))
        source = self.data.stream
        self.reads += len(by_part)
        return [self.client.submit(read_pieces, source, part, self.split, bounds,
                                   self.data.preprocess, self.data.factors, pure=False,
                                   **source.restrict())
                for part, bounds in by_part.items()]


class Prefetch:
    """Runs ``fetcher`` over ``chunks`` in a background thread: up to ``depth`` chunks
    fetched or being fetched ahead of the consumer (their tasks run in parallel on the
    cluster); errors are raised in the consumer. Tracks the most rows held at once
    (queued, being consumed, and just gathered)."""

    _DONE = object()

    def __init__(self, fetcher: Any, chunks: list[list[Piece]], depth: int) -> None:
        self.depth = max(1, depth)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._fetcher, self._chunks = fetcher, chunks
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mlaas-prefetch")
        self._thread.start()

    def _run(self) -> None:
        pending: collections.deque[Any] = collections.deque()
        todo = iter(self._chunks)
        try:
            exhausted = False
            while not self._stop.is_set():
                # at least one chunk in flight; more while the queue has room for them
                while not exhausted and (not pending or len(pending)
                                         + self._queue.qsize() < self.depth):
                    chunk = next(todo, None)
                    if chunk is None:
                        exhausted = True
                    else:
                        pending.append(self._fetcher.submit(chunk))
                if not pending:
                    break
                arrays = self._fetcher.collect(pending.popleft())
                self._count(len(arrays[1]))
                while not self._stop.is_set():
                    try:
                        self._queue.put(arrays, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._queue.put(err)
            return
        finally:
            if pending and self._stop.is_set():
                for tasks in pending:
                    self._fetcher.client.cancel(tasks)
        self._queue.put(self._DONE)

    def _count(self, rows: int) -> None:
        with self._lock:
            self.held += rows
            self.peak = max(self.peak, self.held)

    def __iter__(self) -> Iterator[Arrays]:
        previous = 0
        while True:
            item = self._queue.get()
            self._count(-previous)
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            previous = len(item[1])
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def batches(chunks: Iterator[Arrays], batch_size: int, rng: np.random.Generator,
            keep: Callable[[Arrays], None] | None = None) -> Iterator[Arrays]:
    """Shuffled batches of ``batch_size`` rows from a stream of chunks; the rows of a
    chunk left after its last full batch open the next chunk (only the epoch's very last
    batch may be smaller). ``keep`` sees every chunk (the memory mode stores them)."""
    left: Arrays | None = None
    for arrays in chunks:
        if keep is not None:
            keep(arrays)
        chunk = arrays if left is None or not len(left[1]) else _join([left, arrays])
        order = rng.permutation(len(chunk[1]))
        full = len(order) - len(order) % batch_size
        for start in range(0, full, batch_size):
            index = order[start:start + batch_size]
            yield chunk[0][index], chunk[1][index], chunk[2][index]
        rest = order[full:]
        left = (chunk[0][rest], chunk[1][rest], chunk[2][rest])
    if left is not None and len(left[1]):
        yield left


def _join(parts: list[Arrays]) -> Arrays:
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def in_memory_batches(arrays: Arrays, batch_size: int,
                      rng: np.random.Generator) -> Iterator[Arrays]:
    """Batches of all the rows in memory, in a new random order."""
    order = rng.permutation(len(arrays[1]))
    for start in range(0, len(order), batch_size):
        index = np.sort(order[start:start + batch_size])  # sorted: faster gathers
        yield arrays[0][index], arrays[1][index], arrays[2][index]


class Store:
    """The memory mode's copy of a split, filled chunk by chunk during the first epoch."""

    def __init__(self, rows: int, n_features: int) -> None:
        self.x = np.empty((rows, n_features), np.float32)
        self.y = np.empty(rows, np.int64)
        self.w = np.empty(rows, np.float32)
        self.filled = 0

    def add(self, chunk: Arrays) -> None:
        n = len(chunk[1])
        end = self.filled + n
        self.x[self.filled:end], self.y[self.filled:end], self.w[self.filled:end] = chunk
        self.filled = end

    @property
    def complete(self) -> bool:
        return self.filled == len(self.y)

    def arrays(self) -> Arrays:
        return self.x, self.y, self.w


class Loader:
    """Batches of one rank, epoch by epoch (see the module docstring).

    ``rank`` and ``world``: with several ranks, each trains on its share of every
    epoch's chunks (chunk ``i`` goes to rank ``i % world``).
    """

    def __init__(self, data: TrainingData, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, client: Any = None,
                 fetch: Callable[[str], Any] | None = None) -> None:
        self.data = data
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.rng = np.random.default_rng([seed, rank])
        if fetch is None:
            from distributed import get_client

            # taken here, in the task's thread: the prefetch threads have no worker context
            client = client or get_client()
            kind = StreamFetcher if data.mode == "stream" else Fetcher
            fetch = lambda split: kind(data, split, client)  # noqa: E731
        self.client = client
        self._fetch = fetch
        self._train = self._fetch("train")
        self._store: Store | None = None
        self._validation: Arrays | None = None
        self.peak_rows = 0
        self.chunks_fetched = 0
        self.validation_reads = 0

    def epoch(self, epoch: int) -> Iterator[Arrays]:
        """The training batches of one epoch."""
        data = self.data
        if data.mode == "memory" and self._store is not None and self._store.complete:
            yield from in_memory_batches(self._store.arrays(), self.batch_size, self.rng)
            return
        chunks = plan_chunks(data.rows["train"], data.counts["train"], data.chunk_rows,
                             np.random.default_rng([int(self.rng.integers(2**32)), epoch]))
        chunks = chunks[self.rank::self.world]
        keep = None
        if data.mode == "memory":
            self._store = Store(sum(p.rows for c in chunks for p in c), data.n_features)
            keep = self._store.add
        prefetch = Prefetch(self._train, chunks, data.prefetch)
        try:
            yield from batches(iter(prefetch), self.batch_size, self.rng, keep)
        finally:
            prefetch.close()
            self.peak_rows = max(self.peak_rows, prefetch.peak)
            self.chunks_fetched += len(chunks)

    def validation(self) -> Iterator[Arrays]:
        """The validation split in blocks (held after the first pass in memory mode)."""
        if self._validation is not None:
            yield self._validation
            return
        chunks = whole_partitions(self.data.rows["validation"])
        fetcher = self._fetch("validation")
        prefetch = Prefetch(fetcher, chunks, self.data.prefetch)
        kept: list[Arrays] = []
        try:
            for block in prefetch:
                if self.data.mode == "memory":
                    kept.append(block)
                yield block
        finally:
            prefetch.close()
            self.validation_reads += getattr(fetcher, "reads", 0)
        if self.data.mode == "memory" and kept:
            self._validation = _join(kept)

    @property
    def remote_validation(self) -> bool:
        """Whether the validation split is scored where it is read
        (:meth:`map_validation`) rather than fetched (:meth:`validation`)."""
        return self.data.mode == "stream" and self.client is not None

    def map_validation(self, score: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """``score(x, y, w, *args)`` of every validation partition, run in tasks that read
        the partition again (mode ``stream``): only what ``score`` returns travels. At
        most the cluster's threads' partitions are alive at once."""
        from distributed import as_completed

        data, source = self.data, self.data.stream
        tasks = [self.client.submit(_score_partition, source, part, data.preprocess,
                                    data.factors, score, *args, pure=False,
                                    **source.restrict())
                 for part, rows in enumerate(data.rows["validation"]) if rows]
        self.validation_reads += len(tasks)
        try:
            for future in as_completed(tasks):
                yield future.result()
        finally:
            self.client.cancel(tasks)

    def report(self) -> dict[str, Any]:
        """metrics.json's ``loader`` entry."""
        out = {"mode": self.data.mode, "chunk_rows": self.data.chunk_rows,
               "prefetch": self.data.prefetch, "chunks_fetched": self.chunks_fetched,
               "peak_rows_held": self.peak_rows,
               "training_rows": self.data.total("train")}
        if self.data.mode == "stream":
            out["partition_reads"] = getattr(self._train, "reads", 0)
            out["validation_reads"] = self.validation_reads
            out["partitions"] = sum(1 for n in self.data.rows["train"] if n)
        return out


def _score_partition(source: Any, index: int, preprocess: Preprocess,
                     factors: tuple[float, ...], score: Callable[..., Any],
                     *args: Any) -> Any:
    """One validation partition read again, preprocessed and scored (a task)."""
    result = source.read(index)
    rows = len(result["validation"][1])
    return score(*cut_piece(result, "validation", 0, rows, preprocess, factors), *args)
