"""Data-parallel training across Dask workers with ``torch.distributed``, launched by Dask.

No ``torchrun``: :func:`run_ranks` submits one task per worker, pinned there
(``workers=[address]``, ``allow_other_workers=False``), and each task joins one process
group -- gloo on CPU, NCCL on GPU -- whose rendezvous comes from the cluster: rank 0's
worker host and a port found free on that worker (``init_method="tcp://host:port"``).
Every collective operation waits at most ``timeout`` seconds for the other ranks, the
process group is destroyed when a rank ends (also on failure), and the client watches the
scheduler's worker list, so a rank that fails or whose worker dies fails the job with a
message naming the worker instead of leaving the others waiting.

:func:`assign_partitions` gives each rank the partitions its worker holds (balanced by
rows, moving as few as needed) and :func:`steps_per_epoch` one step count for all ranks:
a rank with fewer rows repeats some of its batches (as torch's ``DistributedSampler``
pads), so no rank leaves an allreduce unanswered.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import math
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from mlaas_dask.errors import ConfigError, MlaasError
from mlaas_dask.nn.loader import Loader

if TYPE_CHECKING:
    import torch
    from distributed import Client

logger = logging.getLogger(__name__)

#: seconds a collective operation (and the rendezvous) may wait for another rank
DEFAULT_TIMEOUT = 300.0
#: seconds between two looks at the ranks and the scheduler's worker list
POLL_SECONDS = 0.5
#: how often a rank asks whether the client gave up on the job
STOP_POLL_SECONDS = 2.0
#: after a rank fails, how long to wait for the others to report theirs (the first error
#: seen may be a peer's "connection closed", not the cause)
SETTLE_SECONDS = 3.0


class RankFailed(MlaasError):
    """A rank of a data-parallel job failed, or its worker left the cluster.

    Attributes
    ----------
    rank
        The rank that failed first (0-based).
    worker
        Its worker, as ``"worker NAME (address)"``.
    """

    attributes = ("rank", "worker")

    def __init__(self, message: str, *, rank: int | None = None,
                 worker: str | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.worker = worker


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the ranks of one job meet."""

    host: str
    port: int
    world: int
    backend: str
    timeout: float

    @property
    def init_method(self) -> str:
        """The ``tcp://`` URL of rank 0's store (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass
class RankContext:
    """What the function run by :func:`run_ranks` gets as its first argument.

    Attributes
    ----------
    rank, world
        This rank and the number of ranks.
    group
        The ``torch.distributed`` process group of the job (the default group).
    backend
        ``"gloo"`` or ``"nccl"``.
    worker
        The address of the Dask worker this rank runs on.
    stop_event
        The name of the Dask ``Event`` the client sets when it gives up on the job.
    """

    rank: int
    world: int
    group: Any
    backend: str
    worker: str
    stop_event: str = ""
    _looked: float = field(default=0.0, repr=False)

    def stop_requested(self) -> bool:
        """Whether the client has given up on the job (interrupted, or another rank
        failed): a long training loop asks between steps and stops. Looks at most every
        :data:`STOP_POLL_SECONDS` (one scheduler round trip)."""
        now = time.monotonic()
        if not self.stop_event or now - self._looked < STOP_POLL_SECONDS:
            return False
        self._looked = now
        from distributed import Event

        return bool(Event(self.stop_event).is_set())


class RankStopped(RuntimeError):
    """Raised in a rank whose client gave up on the job."""


def choose_backend(device: str) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def run_ranks(client: Client, workers: Sequence[str], fn: Callable[..., Any], *args: Any,
              backend: str = "gloo", timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """Run ``fn(RankContext, *args)`` once on each of ``workers``, as ranks 0, 1, ... of
    one ``torch.distributed`` process group; their results, by rank.

    Parameters
    ----------
    client
        A connected client of a cluster with worker processes.
    workers
        Distinct worker addresses, one rank each (rank 0 hosts the rendezvous).
    fn
        A function that Dask can send to the workers; it trains (e.g. wraps its model
        with :func:`wrap_ddp`) and returns something small.
    backend
        ``"gloo"`` (CPU) or ``"nccl"`` (CUDA).
    timeout
        Seconds the rendezvous and every collective operation may wait for another rank.

    Raises
    ------
    RankFailed
        When a rank raises, or its worker leaves the cluster; the message names the
        rank, its worker and the cause, and the other ranks are stopped (their
        collectives fail at once when a peer is gone, at the latest after ``timeout``).
    ConfigError
        For workers that cannot form a process group (repeated, unknown, or threads of
        one process).
    """
    from distributed import wait

    from mlaas_dask.train.faults import WorkerWatch

    workers = list(workers)
    _check_workers(client, workers)
    rendezvous = _rendezvous(client, workers, backend, timeout)
    logger.info("Data-parallel training on %d workers (%s, rendezvous %s).", len(workers),
                backend, rendezvous.init_method)
    watch = WorkerWatch(client, workers)
    token = uuid.uuid4().hex[:8]
    stop = f"nn-ranks-stop-{token}"
    futures = [client.submit(_rank_main, fn, rank, address, rendezvous, stop, args,
                             workers=[address], allow_other_workers=False, pure=False,
                             key=f"nn-rank-{rank}-{token}")
               for rank, address in enumerate(workers)]
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                wait(futures, timeout=POLL_SECONDS)
            failed = [f for f in futures if f.status in ("error", "cancelled")]
            lost = watch.gone()
            if lost:
                raise _lost(lost, workers, watch)
            if failed:
                raise _first_failure(futures, workers, watch)
            if all(f.status == "finished" for f in futures):
                return [f.result() for f in futures]
    finally:
        if not all(f.status == "finished" for f in futures):
            from distributed import Event

            Event(stop, client=client).set()  # the ranks still training stop themselves
        client.cancel([f for f in futures if f.status == "pending"])


def _check_workers(client: Client, workers: list[str]) -> None:
    known = client.scheduler_info().get("workers", {})
    if not workers:
        raise ConfigError("Data-parallel training needs at least one worker; the cluster "
                          "has none.")
    unknown = [w for w in workers if w not in known]
    if unknown:
        raise ConfigError(f"Data-parallel training: {', '.join(unknown)} is not a worker of "
                          "this cluster.")
    if len(set(workers)) != len(workers):
        raise ConfigError("Data-parallel training takes each worker once (one rank per "
                          f"worker); got {workers}.")
    if any(w.startswith("inproc://") for w in workers) and len(workers) > 1:
        raise ConfigError(
            "Data-parallel training needs worker processes: these workers are threads of "
            "one process, which can hold one torch.distributed rank only. Start the cluster "
            "with processes (local:N does), or train on one worker.")


def _rendezvous(client: Client, workers: list[str], backend: str,
                timeout: float) -> Rendezvous:
    from distributed.comm import get_address_host

    first = workers[0]
    host = "127.0.0.1" if first.startswith("inproc://") else get_address_host(first)
    port = client.run(_free_port, host, workers=[first])[first]
    return Rendezvous(host, int(port), len(workers), backend, float(timeout))


def _free_port(host: str) -> int:
    """A TCP port free on this worker's host (runs on rank 0's worker)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _rank_main(fn: Callable[..., Any], rank: int, worker: str, rendezvous: Rendezvous,
               stop: str, args: tuple[Any, ...]) -> Any:
    """One rank, on its worker: join the group, run ``fn``, always leave the group."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError(f"worker {worker} is already a rank of another torch.distributed "
                           "job; run one data-parallel job at a time on a cluster.")
    dist.init_process_group(rendezvous.backend, init_method=rendezvous.init_method,
                            rank=rank, world_size=rendezvous.world,
                            timeout=_dt.timedelta(seconds=rendezvous.timeout))
    group = dist.group.WORLD
    assert group is not None  # init_process_group made it
    try:
        return fn(RankContext(rank, rendezvous.world, group, rendezvous.backend, worker,
                              stop), *args)
    except BaseException as err:
        # the peers waiting in a collective for this rank fail at once, instead of
        # after the timeout: abort closes this rank's connections to them
        group.abort()
        traceback.clear_frames(err.__traceback__)  # no model or group kept alive by it
        raise
    finally:
        del group
        dist.destroy_process_group()


def _lost(lost: list[str], workers: list[str], watch: Any) -> RankFailed:
    label = lost[0]
    rank = next((r for r, a in enumerate(workers) if a in label), None)
    return RankFailed(
        f"Data-parallel training stopped: rank {rank} of {len(workers)} on {label} left "
        "the cluster (the worker died or was killed: see its log; memory limits and "
        "preemption are the usual causes). The other ranks were stopped; no bundle was "
        "written.", rank=rank, worker=label)


def _first_failure(futures: list[Any], workers: list[str], watch: Any) -> RankFailed:
    """The failure that explains the others: a rank's own error rather than a peer's
    "connection closed" that followed it, or a lost worker the scheduler notices late."""
    from distributed import wait

    with contextlib.suppress(TimeoutError):
        wait(futures, timeout=SETTLE_SECONDS)
    errors = [(rank, f.exception()) for rank, f in enumerate(futures)
              if f.status == "error"]
    if not errors:  # cancelled under us (the client closed)
        return RankFailed("Data-parallel training was cancelled before it finished.")
    rank, error = min(errors, key=lambda item: (_is_collective_error(item[1]), item[0]))
    if _is_collective_error(error):
        lost = watch.gone_after(SETTLE_SECONDS)
        if lost:
            return _lost(lost, workers, watch)
    label = watch.label(workers[rank])
    cause = str(error) if isinstance(error, MlaasError) else f"{type(error).__name__}: {error}"
    hint = (" Another rank stopped answering or the network between the workers failed; "
            "see the workers' logs. model.collective_timeout sets how long a rank waits."
            if _is_collective_error(error) else "")
    return RankFailed(f"Data-parallel training failed on rank {rank} of {len(workers)} "
                      f"({label}): {cause}{hint}", rank=rank, worker=label)


def _is_collective_error(error: BaseException) -> bool:
    """An error that a rank gets because another one failed (not a cause of its own)."""
    try:
        import torch.distributed as dist

        if isinstance(error, dist.DistError):
            return True
    except ImportError:  # pragma: no cover - torch is there when ranks ran
        pass
    text = str(error)
    return any(s in text for s in ("Connection closed by peer", "Connection reset",
                                   "Gloo", "NCCL", "timed out", "Timed out"))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``module`` itself)."""
    return getattr(module, "module", module)


def parameter_digest(module: torch.nn.Module) -> str:
    """A short hash of the module's parameters and buffers, equal on every rank of a
    job whose replicas are in step."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(module).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def assign_partitions(holders: Sequence[str | None], rows: Sequence[int],
                      workers: Sequence[str]) -> list[list[int]]:
    """Which partitions each rank trains on: its worker's own, balanced by rows.

    Parameters
    ----------
    holders
        Per partition, the worker holding it (``who_has``; None or a worker that is not
        a rank: any rank may take it).
    rows
        Per partition, its training rows.
    workers
        The ranks' workers, in rank order.

    Returns
    -------
    list of list of int
        Per rank, partition indices. A partition moves off its worker only to even out
        the ranks' rows (largest first, and only when that narrows the gap).
    """
    index = {address: rank for rank, address in enumerate(workers)}
    parts: list[list[int]] = [[] for _ in workers]
    loads = [0] * len(workers)
    homeless = []
    for p, holder in enumerate(holders):
        if holder in index:
            parts[index[holder]].append(p)
            loads[index[holder]] += rows[p]
        else:
            homeless.append(p)
    for p in sorted(homeless, key=lambda p: -rows[p]):
        rank = loads.index(min(loads))
        parts[rank].append(p)
        loads[rank] += rows[p]
    while len(workers) > 1:
        big, small = loads.index(max(loads)), loads.index(min(loads))
        gap = loads[big] - loads[small]
        movable = [p for p in parts[big] if 0 < rows[p] < gap]
        if not movable:
            break
        # the partition whose move leaves the smallest gap between the two
        p = min(movable, key=lambda p: abs(gap - 2 * rows[p]))
        parts[big].remove(p)
        parts[small].append(p)
        loads[big] -= rows[p]
        loads[small] += rows[p]
    return parts


def steps_per_epoch(rank_rows: Sequence[int], batch_size: int) -> int:
    """One number of optimizer steps per epoch for every rank: enough batches for the
    rank with the most rows to see all of them (the others repeat some of theirs)."""
    if not rank_rows or max(rank_rows) == 0:
        return 0
    return max(math.ceil(r / batch_size) for r in rank_rows)


def holders_of(client: Client, futures: Sequence[Any]) -> list[str | None]:
    """Per future, one worker holding its result (None when none does yet)."""
    who = client.who_has(list(futures))
    return [next(iter(who.get(f.key, ())), None) for f in futures]


# -- data-parallel training of a network (the pipeline's hook) ------------------------


def train_ranks(client: Client, config: Any, data: Any, futures: Sequence[Any],
                workers: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Train ``config``'s network on ``workers`` as DistributedDataParallel ranks, each on
    the training partitions its worker holds (see :func:`assign_partitions`), all ranks
    taking :func:`steps_per_epoch` steps per epoch and the whole validation split.

    Parameters
    ----------
    config, data
        The :class:`~mlaas_dask.nn.trainer.TrainConfig` and
        :class:`~mlaas_dask.nn.loader.TrainingData` of single-worker training.
    futures
        The per-partition results (``Matrices.futures``), in ``data.keys`` order: where
        they are decides which rank trains on what.
    workers
        The ranks' workers; fewer ranks are used when fewer partitions have training rows.

    Returns
    -------
    dict
        Rank 0's :func:`~mlaas_dask.nn.trainer.train_rank` result (weights, history...)
        with ``worker`` (rank 0's) and ``data_parallel``: the backend, the steps per
        epoch and, per rank, its worker, partitions, rows, steps taken and the share of
        its rows that its worker held.
    """
    rows = list(data.rows["train"])
    # streamed data (no futures): no worker holds anything, any rank may take any part
    held = holders_of(client, futures) if futures else [None] * len(rows)
    workers = _enough_ranks(list(workers), rows)
    parts = assign_partitions(held, rows, workers)
    rank_rows = [sum(rows[p] for p in ps) for ps in parts]
    steps = steps_per_epoch(rank_rows, config.batch_size)
    local = [sum(rows[p] for p in ps if held[p] == w) / max(1, n)
             for ps, w, n in zip(parts, workers, rank_rows, strict=True)]
    logger.info("Ranks: %s; %d steps of %d events per epoch on each.", ", ".join(
        f"{r}: {n:,} events ({share:.0%} held by its worker)"
        for r, (n, share) in enumerate(zip(rank_rows, local, strict=True))),
        steps, config.batch_size)
    results = run_ranks(client, workers, _train_rank_task, config, data, parts, steps,
                        backend=choose_backend(config.device), timeout=timeout)
    digests = {r["final_digest"] for r in results}
    if len(digests) != 1:  # DDP keeps them equal; a different one means a broken job
        raise RankFailed("Data-parallel training ended with different weights on the ranks "
                         f"({len(digests)} versions); no bundle was written.")
    result = dict(results[0])
    result["worker"] = workers[0]
    result["data_parallel"] = {
        "backend": choose_backend(config.device), "ranks": len(workers),
        "steps_per_epoch": steps,
        "per_rank": [{"worker": w, "partitions": len(ps), "rows": n, "local_share": share,
                      "steps": r["steps"], "digests": r["digests"]}
                     for w, ps, n, share, r in zip(workers, parts, rank_rows, local, results,
                                                   strict=True)],
    }
    return result


def rank_workers(client: Client, allowed: Sequence[str], n: int,
                 futures: Sequence[Any]) -> list[str]:
    """The ``n`` workers of ``allowed`` holding the most partitions, in address order
    (rank 0 first).

    Raises
    ------
    ConfigError
        When fewer than ``n`` workers may train.
    """
    if len(allowed) < n:
        raise ConfigError(
            f"model.workers is {n} but {len(allowed)} worker{'s' if len(allowed) != 1 else ''}"
            f" of the cluster may train ({', '.join(sorted(allowed)) or 'none'}). Lower "
            "model.workers, or start more workers (--cluster local:N).",
            key="model.workers")
    held = holders_of(client, futures)
    counts = {w: held.count(w) for w in allowed}
    return sorted(sorted(allowed, key=lambda w: (-counts[w], w))[:n])


def _enough_ranks(workers: list[str], rows: list[int]) -> list[str]:
    filled = sum(1 for r in rows if r)
    if filled < len(workers):
        logger.info("Only %d partitions hold training events: %d ranks instead of %d.",
                    filled, max(1, filled), len(workers))
        return workers[:max(1, filled)]
    return workers


def only_partitions(data: Any, parts: Sequence[int]) -> Any:
    """``data`` whose training split is the partitions ``parts`` only (the validation
    split stays whole: every rank evaluates the same events, so that all ranks take
    the same early-stopping and schedule decisions)."""
    import dataclasses

    keep = set(parts)
    train = [n if p in keep else 0 for p, n in enumerate(data.rows["train"])]
    return dataclasses.replace(data, rows={**data.rows, "train": train})


def _train_rank_task(context: RankContext, config: Any, data: Any,
                     parts: list[list[int]], steps: int) -> dict[str, Any]:
    """One rank's training (runs on its worker inside :func:`run_ranks`)."""
    import dataclasses

    from distributed import get_client, get_worker, rejoin, secede

    from mlaas_dask.nn.trainer import train_rank

    mine = only_partitions(data, parts[context.rank])
    config = dataclasses.replace(config, threads=get_worker().state.nthreads)
    client = get_client()  # in the task's thread; its loader submits the cut tasks
    loader = StepLoader(mine, config.batch_size, config.seed, context.rank, steps,
                        client=client, stop=context.stop_requested)
    digests: list[str] = []

    def epoch_done(epoch: int, network: Any) -> None:
        import torch.distributed as dist

        digests.append(parameter_digest(network))
        # the ranks start the next epoch together: a rank still evaluating (the first
        # validation pass fetches its blocks) would otherwise stall the others' first
        # allreduce, and their epoch times would count that wait
        dist.barrier(group=context.group)

    secede()  # the loader's tasks may need this worker's threads
    try:
        result = train_rank(config, mine, rank=context.rank, world=context.world,
                            process_group=context.group, client=client, loader=loader,
                            on_epoch=epoch_done)
    finally:
        rejoin()
    if context.rank:
        result.pop("weights", None)  # rank 0's are the job's
    return {**result, "steps": loader.steps_taken, "digests": digests,
            "final_digest": digests[-1] if digests else ""}


class StepLoader(Loader):
    """A :class:`~mlaas_dask.nn.loader.Loader` over one rank's partitions whose epochs
    are exactly ``steps`` batches: after a pass over its rows it starts another
    (reshuffled) one until the steps are taken, so every rank answers every allreduce.

    Its batch order is seeded by the rank (each rank its own shuffle)."""

    def __init__(self, data: Any, batch_size: int, seed: int, rank: int, steps: int,
                 client: Any = None, stop: Callable[[], bool] | None = None) -> None:
        import numpy as np

        super().__init__(data, batch_size, seed, 0, 1, client=client)
        self.rng = np.random.default_rng([seed, rank])
        self.stop = stop or (lambda: False)
        self.steps = steps
        self.steps_taken = 0
        if steps and not data.total("train"):
            raise ValueError(f"rank {rank} has no training events to take {steps} steps on")

    def epoch(self, epoch: int) -> Any:
        taken = 0
        while taken < self.steps:
            one_pass = cast("Generator[Any, None, None]", super().epoch(epoch))
            with contextlib.closing(one_pass):
                for batch in one_pass:
                    if self.stop():
                        raise RankStopped("the client stopped the job")
                    yield batch
                    taken += 1
                    self.steps_taken += 1
                    if taken == self.steps:
                        return
