"""Dynamic batching: concurrent small requests merged into one prediction off the event loop.

Each model version has a :class:`Batcher`; all batchers share one :class:`PredictionPool`
(threads and their slots). A request's rows wait in its batcher until a prediction slot is
free, so under load the requests that arrive while the threads are busy are merged into the
next batch (up to ``max_batch_size`` rows), and when idle a request is predicted at once.
``max_delay_s`` > 0 additionally holds a batch open that long for more requests.

Before a batch is taken, the batcher yields to the event loop once, so that every request
already delivered to the loop joins it without waiting: uvicorn hands over the requests of
many connections in one loop iteration, but grpc.aio delivers each call in a callback of
its own, and without the yield gRPC batches held 2-3 rows on average at concurrency 64
(about 25 for HTTP), each paying XGBoost's fixed cost per call (about 0.3 ms); with it,
4-7 (measured with h2load on a 2-core machine).

XGBoost releases the GIL while predicting, so the event loop keeps parsing requests while
the pool's threads predict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas_dask.serve.errors import Unavailable

#: runs one batch in a pool thread: payloads -> one result (or exception) per payload
RunBatch = Callable[[list[Any]], list[Any]]
#: called with (rows, requests) for every batch run
BatchObserver = Callable[[int, int], None]


class PredictionPool:
    """Prediction threads, the slots that bound the batches in flight, and the queue depth.

    Parameters
    ----------
    threads
        Number of prediction threads (and batches in flight).
    max_queue_rows
        Rows allowed to wait for a slot, over all models; above it requests get a 503.
    observe_batch
        Called with (rows, requests) for each batch, for metrics.
    """

    def __init__(
        self, threads: int, max_queue_rows: int, observe_batch: BatchObserver | None = None
    ) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="mlaas-predict")
        self.max_queue_rows = max_queue_rows
        self.queued_rows = 0
        self.observe_batch = observe_batch
        self._slots: asyncio.Semaphore | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # created lazily, inside the running event loop
            self._slots = asyncio.Semaphore(self.threads)
        return self._slots

    def reserve(self, rows: int) -> None:
        """Count ``rows`` as queued, or refuse them when the queue is full."""
        if self.queued_rows and self.queued_rows + rows > self.max_queue_rows:
            raise Unavailable(
                f"The server is overloaded: {self.queued_rows} rows are waiting for a "
                "prediction. Retry shortly, or send fewer concurrent requests."
            )
        self.queued_rows += rows

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Item:
    payload: Any
    rows: int
    future: asyncio.Future[Any]


class Batcher:
    """Merges the requests of one model version into batches run in the pool.

    Parameters
    ----------
    run
        Runs a batch in a pool thread: the payloads of its requests -> one result per
        payload, or an exception instance for a payload that failed alone.
    pool
        The shared :class:`PredictionPool`.
    max_batch_size
        Rows merged into one prediction at most (a larger single request runs alone).
    max_delay_s
        Time a batch is held open for more requests once a slot is free (0: none).
    """

    def __init__(
        self, run: RunBatch, pool: PredictionPool, max_batch_size: int,
        max_delay_s: float = 0.0,
    ) -> None:
        self.run = run
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._pending: deque[_Item] = deque()
        self._rows = 0
        self._runner: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, payload: Any, rows: int) -> Any:
        """The result for ``payload`` (``rows`` events), run alone or merged with concurrent
        requests."""
        self.pool.reserve(rows)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Item(payload, rows, future))
        self._rows += rows
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        elif self._rows >= self.max_batch_size:
            self._full.set()
        return await future

    async def _run(self) -> None:
        while self._pending:
            await self.pool.slots.acquire()
            try:
                await asyncio.sleep(0)  # let the requests already delivered join
                if self.max_delay_s > 0 and self._rows < self.max_batch_size:
                    await self._wait_for_more()
                batch = self._take()
            except BaseException:
                self.pool.slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._predict(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_more(self) -> None:
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_delay_s):
                await self._full.wait()

    def _take(self) -> list[_Item]:
        """Pending requests up to ``max_batch_size`` rows (at least one)."""
        batch: list[_Item] = []
        rows = 0
        while self._pending:
            n = self._pending[0].rows
            if batch and rows + n > self.max_batch_size:
                break
            batch.append(self._pending.popleft())
            rows += n
        self._rows -= rows
        self.pool.queued_rows -= rows
        return [item for item in batch if not item.future.done()]

    async def _predict(self, batch: list[_Item]) -> None:
        try:
            if not batch:
                return
            loop = asyncio.get_running_loop()
            payloads = [item.payload for item in batch]
            try:
                results = await loop.run_in_executor(self.pool.executor, self.run, payloads)
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                results = [err] * len(batch)
            if self.pool.observe_batch is not None:
                self.pool.observe_batch(sum(item.rows for item in batch), len(batch))
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            self.pool.slots.release()


def split_rows(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``values`` cut along the first axis into consecutive pieces of ``sizes`` rows."""
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []
