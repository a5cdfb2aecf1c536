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

Each kind of cluster is a backend (:class:`ClusterBackend`: schema, example, status
command, checks, ``NAME:N``, start), one module each -- :mod:`~mlaas_dask.cluster.local`,
:mod:`~mlaas_dask.cluster.address`, and through dask-jobqueue
:mod:`~mlaas_dask.cluster.slurm`, :mod:`~mlaas_dask.cluster.htcondor`,
:mod:`~mlaas_dask.cluster.pbs` -- registered below, in one place; more can be added with
:func:`register_backend`. See :mod:`mlaas_dask.cluster.config` for the file format and
:mod:`mlaas_dask.cluster.placement` for heterogeneous (CPU + GPU) placement.

Example (a notebook)::

    from mlaas_dask.cluster import ClusterConfig, start, stop
    client = start("local:2")
    client.dashboard_link
    ...
    stop(client)
    # checked and defaulted like clusters/slurm.yaml would be
    client = start(ClusterConfig("slurm", options={"cores": 4, "memory": "16GB", "jobs": 2}))
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from mlaas_dask.cluster.address import AddressBackend
from mlaas_dask.cluster.backend import (
    ClusterBackend,
    ClusterConfig,
    backend_names,
    backends,
    get_backend,
    register_backend,
    unregister_backend,
)
from mlaas_dask.cluster.config import (
    available_clusters,
    cluster_from_text,
    example,
    load_cluster,
    load_cluster_file,
)
from mlaas_dask.cluster.htcondor import HTCondorBackend
from mlaas_dask.cluster.local import LocalBackend, cores
from mlaas_dask.cluster.pbs import PBSBackend
from mlaas_dask.cluster.placement import Placement
from mlaas_dask.cluster.slurm import SlurmBackend
from mlaas_dask.errors import ConfigError, MlaasError

if TYPE_CHECKING:
    from distributed import Client

#: what names a cluster: ``"local"``, ``"local:N"``, a cluster file's name (``NAME[:N]``)
#: or path, a scheduler address ``tcp://host:port``, a :class:`ClusterConfig`, or a
#: mapping with a cluster file's keys
ClusterSpec: TypeAlias = "str | os.PathLike[str] | ClusterConfig | dict[str, Any]"

__all__ = [
    "ClusterBackend", "ClusterConfig", "ClusterSpec", "Placement", "available_clusters",
    "backend_names", "backends", "cluster_from_text", "config_of", "connect", "describe", "example",
    "get_backend", "load_cluster", "load_cluster_file", "local_cluster_options",
    "register_backend", "start", "stop", "unregister_backend",
]

# The built-in kinds of cluster, in the order messages list them: the one place where
# backends are registered (others add theirs with register_backend).
for _backend in (LocalBackend(), AddressBackend(), SlurmBackend(), HTCondorBackend(),
                 PBSBackend()):
    register_backend(_backend)
del _backend

#: client -> (its ClusterConfig, the cluster object mlaas started for it or None)
_STARTED: weakref.WeakKeyDictionary[Any, tuple[ClusterConfig, Any]] = \
    weakref.WeakKeyDictionary()


def local_cluster_options(n_workers: int | None = None,
                          threads_per_worker: int = 1) -> dict[str, Any]:
    """Keyword arguments of the embedded LocalCluster: one single-threaded worker process
    per core (uproot decompression and XGBoost both scale with processes)."""
    n = n_workers or max(1, cores() // threads_per_worker)
    return {
        "n_workers": n,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }


def start(cluster: ClusterSpec = "local", **options: Any) -> Client:
    """Start (or join) a cluster and return a connected :class:`distributed.Client`.

    Waits for the workers the cluster file asks for (``wait``). Close it with
    :func:`stop`, which also ends the cluster (and its batch jobs) when this started it.

    Parameters
    ----------
    cluster
        What :func:`connect` takes.
    options
        Extra LocalCluster keyword arguments (local clusters only).

    Returns
    -------
    distributed.Client
        Connected, its workers joined.
    """
    from distributed import Client

    if isinstance(cluster, Client):
        return cluster
    config = load_cluster(cluster)
    backend = config.backend
    if options and not backend.takes_options:
        raise ConfigError(f"Extra options {sorted(options)} apply to local clusters only.")
    owned = None
    client = None
    try:
        started = backend.start(config, **options)
        if isinstance(started, Client):
            client = started
        else:
            owned = started
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


def stop(client: Client) -> None:
    """Close a client from :func:`start`, and the cluster it started (cancelling its jobs)."""
    config_owned = _STARTED.pop(client, None)
    try:
        client.close()
    finally:
        if config_owned is not None and config_owned[1] is not None:
            config_owned[1].close()


@contextlib.contextmanager
def connect(cluster: ClusterSpec | Client = "local", **options: Any) -> Iterator[Client]:
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
    wait = config.block("wait")
    wanted = wait["workers"]
    if wanted is None:
        wanted = config.backend.wanted_workers(config)
    timeout = wait["timeout"]
    if not wanted:
        return
    try:
        client.wait_for_workers(int(wanted), timeout=timeout)
    except (TimeoutError, OSError) as err:
        arrived = len(client.scheduler_info().get("workers", {}))
        raise MlaasError(f"Only {arrived} of {wanted} Dask workers of cluster "
                         f"{config.name!r} joined within {timeout:g} s. "
                         + config.backend.hint(config, owned)) from err


def describe(client: Client) -> dict[str, Any]:
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
