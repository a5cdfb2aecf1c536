"""Training: a job's dataset on a Dask cluster -> a model (XGBoost, scikit-learn, a neural
network) -> a model bundle. :mod:`mlaas_dask.train.pipeline` is the one pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlaas_dask.errors import MlaasError
from mlaas_dask.train.pipeline import Prepared, TrainResult, prepare

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.cluster import ClusterSpec
    from mlaas_dask.job import Job


def train(
    job: Job,
    *,
    cluster: ClusterSpec | Client | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    placement: dict[str, str] | None = None,
) -> TrainResult:
    """Train the job's classifier on a Dask cluster and write its model bundle.

    Progress lines go to the ``mlaas_dask`` logger (see :mod:`mlaas_dask.logs`).

    Parameters
    ----------
    job
        A :class:`mlaas_dask.job.Job` (see :func:`mlaas_dask.job.load_job`).
    cluster
        ``"local"``, ``"local:N"``, a cluster file's name or path, a scheduler address, a
        :class:`~mlaas_dask.cluster.ClusterConfig` or a connected
        :class:`distributed.Client`; defaults to the job's ``cluster``.
    out
        Bundle directory; defaults to the job's ``output.dir``.
    overwrite
        Replace an existing bundle there (never anything that is not a bundle).
    progress
        Show progress bars and per-round (per-epoch) lines.
    placement
        Which workers read and which train, overriding the cluster file's ``placement``:
        ``{"read": "cpu", "train": "gpu"}`` (rules: auto, any, cpu, gpu, a resource tag).
    """
    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster.session import cluster_session
    from mlaas_dask.train.pipeline import run

    target = Path(out or job.output)
    _check_target(target, overwrite)  # fail before any work, not after
    t0 = time.perf_counter()
    prepared = prepare(job)
    with cluster_session(cluster if cluster is not None else job.cluster) as client:
        return run(job, client, prepared, target, overwrite=overwrite, progress=progress,
                   placement=placement, t0=t0)


__all__ = ["MlaasError", "Prepared", "TrainResult", "prepare", "train"]
