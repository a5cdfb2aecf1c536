"""``type: slurm``: Dask workers as SLURM batch jobs (dask-jobqueue's SLURMCluster)."""

from __future__ import annotations

from typing import Any

from mlaas_dask.cluster import jobqueue
from mlaas_dask.cluster.config import ClusterConfig, as_walltime
from mlaas_dask.config import Field, Validator

SUBMIT_COMMAND = "sbatch"

SCHEMA = {
    **jobqueue.BASE_SCHEMA,
    **jobqueue.QUEUE_SCHEMA,
    "job_cpu": Field((int,), "--cpus-per-task, when it must differ from cores"),
    "job_mem": Field((str,), "--mem, when it must differ from memory"),
}

EXAMPLE = """
type: slurm
cores: 4                    # per job
memory: 16GB                # per job
processes: 1                # Dask workers per job
walltime: "01:00:00"
queue: batch                # the partition
adapt: {minimum: 1, maximum: 10}    # jobs; or a fixed number: jobs: 4
job_extra_directives: ["--qos=normal"]
scheduler: {host: 127.0.0.1}        # on a real site: the login node's address
"""

with_size = jobqueue.with_size
wanted_workers = jobqueue.wanted_workers


def check(config: ClusterConfig, validator: Validator) -> None:
    jobqueue.check_common(config, validator)


def job_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """SLURMCluster keyword arguments."""
    options = config.options
    kwargs = jobqueue.base_kwargs(config)
    directives = list(options["job_extra_directives"])
    if options["gpus"]:
        directives.append(f"--gres=gpu:{options['gpus']}")
    kwargs.update(walltime=as_walltime(options["walltime"]), job_extra_directives=directives)
    for key in ("queue", "account", "job_cpu", "job_mem"):
        if options[key] is not None:
            kwargs[key] = options[key]
    return kwargs


def create(config: ClusterConfig) -> Any:
    return jobqueue.start(config, "SLURMCluster", job_kwargs(config), SUBMIT_COMMAND)


def build(config: ClusterConfig) -> Any:
    return jobqueue.build(config, "SLURMCluster", job_kwargs(config))
