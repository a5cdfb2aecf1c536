"""``type: slurm``: Dask workers as SLURM batch jobs (dask-jobqueue's SLURMCluster)."""

from __future__ import annotations

from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterConfig
from mlaas_dask.cluster.fields import Field, as_walltime
from mlaas_dask.cluster.jobqueue import BASE_SCHEMA, QUEUE_SCHEMA, JobQueueBackend


class SlurmBackend(JobQueueBackend):
    """``type: slurm``: ``NAME:N`` is N jobs; jobs are listed by ``squeue --me``."""

    name = "slurm"
    status_command = "squeue --me"
    submit_command = "sbatch"
    cluster_class = "SLURMCluster"
    schema: ClassVar[dict[str, Field]] = {
        **BASE_SCHEMA,
        **QUEUE_SCHEMA,
        "job_cpu": Field((int,), "--cpus-per-task, when it must differ from cores"),
        "job_mem": Field((str,), "--mem, when it must differ from memory"),
    }
    example = """
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

    def job_kwargs(self, config: ClusterConfig) -> dict[str, Any]:
        """SLURMCluster keyword arguments (``gpus: 1`` becomes ``--gres=gpu:1``)."""
        options = config.options
        kwargs = super().job_kwargs(config)
        directives = list(options["job_extra_directives"])
        if options["gpus"]:
            directives.append(f"--gres=gpu:{options['gpus']}")
        kwargs.update(walltime=as_walltime(options["walltime"]),
                      job_extra_directives=directives)
        for key in ("queue", "account", "job_cpu", "job_mem"):
            if options[key] is not None:
                kwargs[key] = options[key]
        return kwargs
