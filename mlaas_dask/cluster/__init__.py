"""Where Dask runs: one factory for every kind of cluster, from one name.

``connect(cluster)`` (a context manager) and ``start(cluster)`` / ``stop(client)`` (for
notebooks) take:

- ``"local"`` (the embedded default: one single-threaded worker process per core, on
  127.0.0.1) or ``"local:N"``;
- a cluster file's name (``clusters/NAME.yaml``: local-gpu, slurm, htcondor, pbs, ...) or
  path, optionally ``NAME:N`` for N workers / jobs;
- a scheduler address ``tcp://host:port``;
- a :class:`ClusterConfig` or a mapping with the keys of a cluster file;
- a connected :class:`distributed.Client` (used as it is, left open).

Batch systems go through dask-jobqueue (SLURM, HTCondor, PBS), with a fixed number of jobs
or adaptive scaling; see :mod:`mlaas_dask.cluster.config` for the file format and
:mod:`mlaas_dask.cluster.placement` for heterogeneous (CPU + GPU) placement.

Example (a notebook)::

    from mlaas_dask.cluster import start, stop
    client = start("local:2")
    client.dashboard_link
    ...
    stop(client)
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from typing import Any

from mlaas_dask.cluster.config import (
    ClusterConfig,
    available_clusters,
    cluster_from_text,
    example,
    load_cluster,
    load_cluster_file,
)
from mlaas_dask.cluster.placement import Placement
from mlaas_dask.errors import ConfigError, MlaasError

__all__ = [
    "ClusterConfig", "Placement", "available_clusters", "cluster_from_text", "config_of",
    "connect", "describe", "example", "load_cluster", "load_cluster_file",
    "local_cluster_options", "start", "stop",
]

#: client -> (its ClusterConfig, the cluster object mlaas started for it or None)
_STARTED: weakref.WeakKeyDictionary[Any, tuple[ClusterConfig, Any]] = \
    weakref.WeakKeyDictionary()

DEFAULT_TIMEOUT = {"local": 60, "address": 60}
BATCH_TIMEOUT = 300


def local_cluster_options(n_workers: int | None = None,
                          threads_per_worker: int = 1) -> dict[str, Any]:
    """Keyword arguments of the embedded LocalCluster: one single-threaded worker process
    per core (uproot decompression and XGBoost both scale with processes)."""
    from mlaas_dask.cluster.local import cores

    n = n_workers or max(1, cores() // threads_per_worker)
    return {
        "n_workers": n,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }


def start(cluster: Any = "local", **options: Any) -> Any:
    """Start (or join) a cluster and return a connected :class:`distributed.Client`.

    Waits for the workers the cluster file asks for (``wait``). Close it with
    :func:`stop`, which also ends the cluster (and its batch jobs) when this started it.
    ``options`` are extra LocalCluster keyword arguments (local clusters only).
    """
    from distributed import Client

    if isinstance(cluster, Client):
        return cluster
    config = load_cluster(cluster)
    if options and config.type != "local":
        raise ConfigError(f"Extra options {sorted(options)} apply to local clusters only.")
    owned = None
    client = None
    try:
        if config.type == "address":
            from mlaas_dask.cluster import address

            client = address.connect(config)
        else:
            owned = config.module.create(config, **options) if config.type == "local" \
                else config.module.create(config)
            client = Client(owned)
        _wait(client, config, owned)
    except BaseException:
        if client is not None:
            client.close()
        if owned is not None:
            owned.close()
        raise
    _STARTED[client] = (config, owned)
    return client


def stop(client: Any) -> None:
    """Close a client from :func:`start`, and the cluster it started (cancelling its jobs)."""
    config_owned = _STARTED.pop(client, None)
    try:
        client.close()
    finally:
        if config_owned is not None and config_owned[1] is not None:
            config_owned[1].close()


@contextlib.contextmanager
def connect(cluster: Any = "local", **options: Any) -> Iterator[Any]:
    """A connected :class:`distributed.Client`, closed (with its cluster) on exit.

    Parameters
    ----------
    cluster
        ``"local"`` (the default), ``"local:N"``, a cluster file's name or path
        (``NAME:N`` for N workers or jobs), a scheduler address ``tcp://host:port``, a
        :class:`ClusterConfig`, or an existing Client (left open on exit).
    options
        Extra LocalCluster keyword arguments.
    """
    from distributed import Client

    if isinstance(cluster, Client):
        yield cluster
        return
    client = start(cluster, **options)
    try:
        yield client
    finally:
        stop(client)


def config_of(client: Any) -> ClusterConfig | None:
    """The cluster description a client was started from (None for a Client made
    elsewhere)."""
    found = _STARTED.get(client)
    return found[0] if found else None


def _wait(client: Any, config: ClusterConfig, owned: Any) -> None:
    wait = config.options.get("wait") or {}
    wanted = wait.get("workers")
    if wanted is None:
        wanted = config.module.wanted_workers(config)
    timeout = wait.get("timeout") or DEFAULT_TIMEOUT.get(config.type, BATCH_TIMEOUT)
    if not wanted:
        return
    try:
        client.wait_for_workers(int(wanted), timeout=timeout)
    except (TimeoutError, OSError) as err:
        arrived = len(client.scheduler_info().get("workers", {}))
        raise MlaasError(f"Only {arrived} of {wanted} Dask workers of cluster "
                         f"{config.name!r} joined within {timeout:g} s. "
                         + _hint(config, owned)) from err


def _hint(config: ClusterConfig, owned: Any) -> str:
    if config.type == "address":
        return ("Start workers with 'dask worker ADDRESS', or lower wait.workers in the "
                "cluster file.")
    if config.type == "local":
        return "The machine may be short of memory; try fewer workers."
    jobs = [str(getattr(job, "job_id", None)) for job in getattr(owned, "workers", {}).values()]
    status = {"slurm": "squeue --me", "htcondor": "condor_q", "pbs": "qstat -u $USER"}
    logs = config.options.get("log_directory")
    return (f"Submitted jobs: {', '.join(jobs) or 'none'}. They may still be queued or have "
            f"failed: check '{status[config.type]}'"
            + (f" and the logs in {logs}" if logs else " (set log_directory to keep their "
               "output)")
            + "; raise wait.timeout for busy queues.")


def describe(client: Any) -> dict[str, Any]:
    """Workers, threads, memory and resources of a connected client (for metadata)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    config = config_of(client)
    return {
        "scheduler": info.get("address"),
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "resources": sorted({r for w in workers.values() for r in w.get("resources", {})}),
        "dashboard": client.dashboard_link,
        "cluster": config.summary() if config else {"name": "client", "type": "client"},
        "worker_list": [
            {"name": str(w.get("name", address)), "address": address,
             "threads": w.get("nthreads", 0), "memory_bytes": w.get("memory_limit", 0),
             "resources": dict(w.get("resources") or {}),
             "host": w.get("host")}
            for address, w in sorted(workers.items())
        ],
        "host": os.uname().nodename,
    }
