"""``type: pbs``: Dask workers as PBS / Torque / OpenPBS jobs (dask-jobqueue's PBSCluster)."""

from __future__ import annotations

from typing import Any

from mlaas_dask.cluster import jobqueue
from mlaas_dask.cluster.config import ClusterConfig, as_walltime
from mlaas_dask.config import Field, Validator

SUBMIT_COMMAND = "qsub"

SCHEMA = {
    **jobqueue.BASE_SCHEMA,
    **jobqueue.QUEUE_SCHEMA,
    "resource_spec": Field((str,), "the '-l' line, e.g. 'select=1:ncpus=8:mem=32GB' "
                           "(default: built from cores, memory and gpus)"),
}

EXAMPLE = """
type: pbs
cores: 8
memory: 32GB
processes: 1
walltime: "02:00:00"
queue: workq
account: myproject
jobs: 4                     # or adapt: {minimum: 0, maximum: 20}
"""

with_size = jobqueue.with_size
wanted_workers = jobqueue.wanted_workers


def check(config: ClusterConfig, validator: Validator) -> None:
    jobqueue.check_common(config, validator)
    if config.options["gpus"] and config.options["resource_spec"]:
        raise validator.error(("resource_spec",), "with your own resource_spec, write the "
                              "GPU into it (e.g. 'select=1:ncpus=8:ngpus=1:mem=32GB') and "
                              "tag the worker with resources: {GPU: 1} instead of gpus.")


def job_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """PBSCluster keyword arguments."""
    from dask.utils import parse_bytes

    options = config.options
    kwargs = jobqueue.base_kwargs(config)
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


def create(config: ClusterConfig) -> Any:
    return jobqueue.start(config, "PBSCluster", job_kwargs(config), SUBMIT_COMMAND)


def build(config: ClusterConfig) -> Any:
    return jobqueue.build(config, "PBSCluster", job_kwargs(config))
