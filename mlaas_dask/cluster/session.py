"""One Dask session for every job that computes on a cluster: train, tune, predict, bench."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.cluster import ClusterSpec

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def cluster_session(cluster: ClusterSpec | Client) -> Iterator[Client]:
    """Connect to ``cluster`` and make it ready for a job; yield the client.

    ``cluster`` is what :func:`mlaas_dask.cluster.connect` takes: ``"local"``,
    ``"local:N"``, a cluster file's name or path, a scheduler address, a
    :class:`~mlaas_dask.cluster.ClusterConfig` or a connected
    :class:`distributed.Client` (left open at the end).

    Inside the block the client is the current one (``xgboost.dask`` waits on futures
    through the *default* client: with two clients in one process, a notebook or the
    tests, that would be the other one, and it deadlocks), the workers have the user's
    credentials for remote files (tokens, X.509 proxies), and low-level task fusion is off
    (xgboost and dask-ml submit the same arrays several times; differently fused graphs
    under one key make the scheduler warn of deadlocks). The dashboard link is logged.
    """
    import dask

    from mlaas_dask.cluster import connect
    from mlaas_dask.data.credentials import worker_credentials

    with connect(cluster) as client, client.as_current(), worker_credentials(client), \
            dask.config.set({"optimization.fuse.active": False}):
        logger.info("Dask dashboard: %s", client.dashboard_link)
        yield client
