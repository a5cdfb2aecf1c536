"""Training: a job's dataset on a Dask cluster -> a model (XGBoost, scikit-learn, a neural
network) -> a model bundle. :mod:`mlaas_dask.train.pipeline` is the one pipeline."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlaas_dask.errors import MlaasError
from mlaas_dask.train.pipeline import Prepared, TrainResult, prepare, prepare_events

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
    events: Mapping[str, Any] | None = None,
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
    events
        The events of every group as the user's own dask-awkward collections (e.g.
        ``uproot.dask`` or coffea NanoEvents, after their selection and corrections), by
        group name: ``{"ttH": signal, "QCD": background}``. The job's groups then list no
        files (``load_job(path, events=True)``); its features, cut, weights, split and
        model apply as they are. Only the branches these need are read, through the
        collections' own graphs (uproot's reading: no retries or redirector fallbacks;
        see :mod:`mlaas_dask.data.collections`).
    """
    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster.session import cluster_session
    from mlaas_dask.train.pipeline import run

    target = Path(out or job.output)
    _check_target(target, overwrite)  # fail before any work, not after
    t0 = time.perf_counter()
    prepared = prepare(job) if events is None else prepare_events(job, events)
    with cluster_session(cluster if cluster is not None else job.cluster) as client:
        return run(job, client, prepared, target, overwrite=overwrite, progress=progress,
                   placement=placement, t0=t0)


__all__ = ["MlaasError", "Prepared", "TrainResult", "prepare", "prepare_events", "train"]
