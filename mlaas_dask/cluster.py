"""Where Dask runs: the embedded local cluster, or an existing scheduler.

``connect("local")`` starts a LocalCluster of worker *processes* sized to the machine, with
the scheduler and dashboard on 127.0.0.1. ``connect("tcp://host:8786")`` joins a running
scheduler. A :class:`distributed.Client` passed in is used as it is (notebooks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from mlaas_dask.errors import ConfigError


def local_cluster_options(n_workers: int | None = None,
                          threads_per_worker: int = 1) -> dict[str, Any]:
    """Keyword arguments of the embedded LocalCluster: one single-threaded worker process
    per core (uproot decompression and XGBoost both scale with processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = n_workers or max(1, (cores or 1) // threads_per_worker)
    return {
        "n_workers": n,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }


@contextlib.contextmanager
def connect(cluster: Any = "local", **options: Any) -> Iterator[Any]:
    """A connected :class:`distributed.Client`, closed (with its cluster) on exit.

    Parameters
    ----------
    cluster
        ``"local"`` (the default), ``"local:N"`` for N workers, a scheduler address
        ``tcp://host:port``, or an existing Client (left open on exit).
    options
        Extra LocalCluster keyword arguments.
    """
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    if not isinstance(cluster, str):
        raise ConfigError(f"Unknown cluster {cluster!r}; use 'local', 'local:N' or tcp://host:port.")
    if cluster.startswith(("tcp://", "tls://", "ucx://")):
        try:
            client = Client(cluster, timeout="20s")
        except OSError as err:
            raise ConfigError(
                f"Cannot reach the Dask scheduler at {cluster} ({err}). Is it running? "
                "Start one with 'dask scheduler', or use --cluster local."
            ) from None
        with client:
            yield client
        return
    name, _, count = cluster.partition(":")
    if name != "local" or (count and not count.isdigit()):
        raise ConfigError(
            f"Unknown cluster {cluster!r}. Use 'local' (one worker per core), 'local:N' "
            "(N workers) or a scheduler address such as tcp://127.0.0.1:8786."
        )
    kwargs = {**local_cluster_options(int(count) if count else None), **options}
    with LocalCluster(**kwargs) as local, Client(local) as client:
        yield client


def describe(client: Any) -> dict[str, Any]:
    """Workers, threads, memory and resources of a connected client (for metadata)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return {
        "scheduler": info.get("address"),
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "resources": sorted({r for w in workers.values() for r in w.get("resources", {})}),
        "dashboard": client.dashboard_link,
    }
