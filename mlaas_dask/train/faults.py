"""Lost workers during training: notice them, then resume from a checkpoint or fail.

A Dask worker that dies (preemption on a batch system, the out-of-memory killer) takes its
tasks and data with it. Dask recomputes lost data from the graph, but a training stage has
state that Dask does not know about (XGBoost's collective, the rounds or blocks done so
far), so the stage watches the scheduler's worker list while it runs. When a worker it
depends on leaves, the stage is stopped at once and resumed from its last checkpoint on
the workers that are left (or replacement ones), up to ``model.max_retries`` times;
otherwise the job fails with a message naming the worker and how far training got.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlaas_dask.errors import MlaasError

logger = logging.getLogger(__name__)

#: seconds between two looks at the scheduler's worker list
POLL_SECONDS = 0.5
#: how long a stopped training call may take to return before it is abandoned
ABORT_GRACE_SECONDS = 30.0
#: how long a failure may wait for the scheduler to notice the loss that caused it
SETTLE_SECONDS = 2.0
#: how long to wait for a worker when none is left (a nanny restarts one in seconds)
WORKER_WAIT_SECONDS = 60.0
#: how long to wait for replacements before resuming on fewer workers than before
REPLACEMENT_WAIT_SECONDS = 10.0


class TrainingFailed(MlaasError):
    """Training lost a worker and could not resume."""


class WorkerLost(Exception):
    """Raised inside a training attempt when a worker it depends on left the cluster.

    ``workers`` are labels such as ``"worker 0 (tcp://127.0.0.1:4321)"``; ``before`` is
    how many workers the cluster had when the attempt started.
    """

    def __init__(self, workers: list[str], before: int = 0) -> None:
        super().__init__(", ".join(workers))
        self.workers = workers
        self.before = before


class WorkerWatch:
    """The workers a training attempt depends on, and which of them have left.

    Parameters
    ----------
    client
        A connected :class:`distributed.Client`.
    addresses
        The workers to watch; all the cluster's current workers when None.
    """

    def __init__(self, client: Any, addresses: Iterable[str] | None = None) -> None:
        self.client = client
        workers = client.scheduler_info().get("workers", {})
        self.names = {a: str(w.get("name", a)) for a, w in workers.items()}
        self.watched = set(workers if addresses is None else addresses)

    def gone(self) -> list[str]:
        """Labels of the watched workers that the scheduler no longer lists."""
        current = self.client.scheduler_info().get("workers", {})
        return [self.label(a) for a in sorted(self.watched - set(current))]

    def gone_after(self, seconds: float) -> list[str]:
        """:meth:`gone`, looking again for up to ``seconds`` while nothing is gone yet
        (a task can fail from a lost peer before the scheduler has noticed the loss)."""
        deadline = time.monotonic() + seconds
        while True:
            lost = self.gone()
            if lost or time.monotonic() >= deadline:
                return lost
            time.sleep(POLL_SECONDS / 2)

    def label(self, address: str) -> str:
        name = self.names.get(address, address)
        return f"worker {name} ({address})" if name != address else f"worker {address}"


def run_watched(fn: Callable[[], Any], watch: WorkerWatch, abort: Callable[[], None]) -> Any:
    """``fn()`` in a thread while ``watch`` looks at the workers; its result.

    When a watched worker leaves, ``abort()`` is called (it cancels the attempt's tasks,
    which makes ``fn`` return), and :class:`WorkerLost` is raised. An exception from
    ``fn`` that comes with a lost worker also aborts and becomes :class:`WorkerLost`.
    The thread runs in a copy of the caller's context (Dask's current client is a
    context variable).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            box["error"] = err

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                              name="mlaas-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if thread.is_alive():
            lost = watch.gone()
            if lost:
                abort()
                thread.join(ABORT_GRACE_SECONDS)  # then abandoned: it blocks nothing
                raise WorkerLost(lost, len(watch.names))
    if "error" in box:
        lost = watch.gone_after(SETTLE_SECONDS)
        if lost:
            abort()
            raise WorkerLost(lost, len(watch.names)) from box["error"]
        raise box["error"]
    return box["result"]


def cancel_dependents(client: Any, futures: list[Any]) -> None:
    """Cancel what this client computes from ``futures``: the tasks at the top of what
    depends on them (e.g. ``xgboost.dask.train``'s result), so that a call waiting for
    one returns (with a cancellation error).

    Only the tops are cancelled: the scheduler cancels what depends on a cancelled key
    too, and fails (an assertion, distributed 2025.3) on a dependent that no client holds.
    """
    from distributed import Future

    keys = [future.key for future in futures]
    me = client.id

    def tops(dask_scheduler: Any) -> list[Any]:
        stack = [dask_scheduler.tasks[k] for k in keys if k in dask_scheduler.tasks]
        seen, found = {ts.key for ts in stack}, []
        while stack:
            ts = stack.pop()
            for dependent in ts.dependents:
                if dependent.key not in seen:
                    seen.add(dependent.key)
                    stack.append(dependent)
            if not ts.dependents and ts.key not in keys and any(
                    c.client_key == me for c in ts.who_wants or ()):
                found.append(ts.key)
        return found

    client.cancel([Future(key, client) for key in client.run_on_scheduler(tops)])


def wait_watched(futures: list[Any], watch: WorkerWatch) -> None:
    """Wait for ``futures`` to finish; :class:`WorkerLost` when a watched worker has left
    meanwhile (a failed future raises its error when its result is asked for)."""
    from distributed import wait

    while True:
        try:
            wait(futures, timeout=POLL_SECONDS)
            finished = True
        except TimeoutError:
            finished = False
        lost = watch.gone()  # also after success: Dask may have recomputed behind our back
        if lost:
            raise WorkerLost(lost, len(watch.names))
        if finished:
            return


@dataclass
class Retries:
    """The lost-worker budget of one training stage, and what happened.

    Parameters
    ----------
    client
        The job's client.
    stage
        What trains, for messages (``"XGBoost training"``).
    max_retries
        How many lost workers the stage may resume from (``model.max_retries``).
    """

    client: Any
    stage: str
    max_retries: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def resume_or_fail(self, lost: WorkerLost, reached: str, checkpoint: str | None) -> None:
        """Record a loss and say that training resumes; raise :class:`TrainingFailed`
        when the retries are used up or no worker is left.

        ``reached`` says how far training got (``"round 21"``), ``checkpoint`` where it
        resumes from (``"round 20"``; None: from the start).
        """
        who = ", ".join(lost.workers)
        since = f"the checkpoint at {checkpoint}" if checkpoint else "the start (no checkpoint yet)"
        self.events.append({"lost": lost.workers, "reached": reached, "resumed_from": since})
        if len(self.events) > self.max_retries:
            used = (f"model.max_retries is {self.max_retries}" if self.max_retries == 0 else
                    f"all {self.max_retries} retries (model.max_retries) are used up")
            raise TrainingFailed(
                f"{self.stage} lost {who} at {reached} and does not resume: {used} (last "
                f"checkpoint: {checkpoint or 'none yet'}). Raise model.max_retries, or find "
                "out why workers die (memory limits, preemption: see the worker logs).")
        workers = self._workers_left(lost, reached)
        logger.info(f"Lost {who} during {self.stage} at {reached}; resuming from {since} on "
                 f"{len(workers)} worker{'s' if len(workers) != 1 else ''} "
                 f"(retry {len(self.events)} of {self.max_retries}).")

    def fail_after_loss(self, err: BaseException) -> TrainingFailed:
        """The error to raise when resuming after a loss failed (e.g. the lost data
        could not be recomputed: its files are gone); it names the loss and the cause."""
        last = self.events[-1]
        cause = str(err) if isinstance(err, MlaasError) else f"{type(err).__name__}: {err}"
        return TrainingFailed(
            f"{self.stage} lost {', '.join(last['lost'])} at {last['reached']}, and "
            f"resuming from {last['resumed_from']} failed: {cause}")

    def _workers_left(self, lost: WorkerLost, reached: str) -> list[str]:
        """The workers to resume on: as many as before the loss (replacements started by
        a nanny or a batch system) if they come within :data:`REPLACEMENT_WAIT_SECONDS`,
        else those left, waiting up to :data:`WORKER_WAIT_SECONDS` for one."""
        start = time.monotonic()
        while True:
            workers = list(self.client.scheduler_info().get("workers", {}))
            waited = time.monotonic() - start
            if workers and (len(workers) >= lost.before or waited >= REPLACEMENT_WAIT_SECONDS):
                return workers
            if waited >= WORKER_WAIT_SECONDS:
                raise TrainingFailed(
                    f"{self.stage} lost {', '.join(lost.workers)} at {reached} and cannot "
                    f"resume: no worker is left on the cluster (waited "
                    f"{WORKER_WAIT_SECONDS:g} s for a replacement).")
            time.sleep(POLL_SECONDS)


def forget_topic(client: Any, topic: str) -> None:
    """Drop a training attempt's events (its checkpoints are large) from the scheduler's
    event log (XGBoost rounds, network epochs).

    The scheduler has no public call for this; without one the events stay until the
    scheduler's log length pushes them out.
    """
    def forget(dask_scheduler: Any) -> None:
        broker = getattr(dask_scheduler, "_broker", None)
        if broker is not None:
            broker.truncate(topic)

    with contextlib.suppress(Exception):  # best effort: a closing client, an old scheduler
        client.run_on_scheduler(forget)
