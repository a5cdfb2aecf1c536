"""``type: pbs``: Dask workers as PBS / Torque / OpenPBS jobs (dask-jobqueue's PBSCluster)."""

from __future__ import annotations

from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterConfig
from mlaas_dask.cluster.fields import Field, Validator, as_walltime
from mlaas_dask.cluster.jobqueue import BASE_SCHEMA, QUEUE_SCHEMA, JobQueueBackend


class PBSBackend(JobQueueBackend):
    """``type: pbs``: ``NAME:N`` is N jobs; jobs are listed by ``qstat -u $USER``."""

    name = "pbs"
    status_command = "qstat -u $USER"
    submit_command = "qsub"
    cluster_class = "PBSCluster"
    schema: ClassVar[dict[str, Field]] = {
        **BASE_SCHEMA,
        **QUEUE_SCHEMA,
        "resource_spec": Field((str,), "the '-l' line, e.g. 'select=1:ncpus=8:mem=32GB' "
                               "(default: built from cores, memory and gpus)"),
    }
    example = """
type: pbs
cores: 8
memory: 32GB
processes: 1
walltime: "02:00:00"
queue: workq
account: myproject
jobs: 4                     # or adapt: {minimum: 0, maximum: 20}
"""

    def check(self, config: ClusterConfig, validator: Validator) -> None:
        """The batch checks, and no ``gpus`` next to a hand-written ``resource_spec``."""
        super().check(config, validator)
        if config.options["gpus"] and config.options["resource_spec"]:
            raise validator.error(("resource_spec",), "with your own resource_spec, write "
                                  "the GPU into it (e.g. 'select=1:ncpus=8:ngpus=1:mem=32GB') "
                                  "and tag the worker with resources: {GPU: 1} instead of "
                                  "gpus.")

    def job_kwargs(self, config: ClusterConfig) -> dict[str, Any]:
        """PBSCluster keyword arguments (``gpus: 1`` goes into the resource spec)."""
        from dask.utils import parse_bytes

        options = config.options
        kwargs = super().job_kwargs(config)
        kwargs.update(walltime=as_walltime(options["walltime"]),
                      job_extra_directives=list(options["job_extra_directives"]))
        for key in ("queue", "account", "resource_spec"):
            if options[key] is not None:
                kwargs[key] = options[key]
        if options["gpus"]:
            memory_gb = -(-parse_bytes(options["memory"]) // 10**9)
            kwargs["resource_spec"] = (f"select=1:ncpus={options['cores']}:ngpus="
                                       f"{options['gpus']}:mem={memory_gb}GB")
        return kwargs
