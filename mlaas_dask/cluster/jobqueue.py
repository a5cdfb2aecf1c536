"""What the batch-system clusters (SLURM, HTCondor, PBS) share: dask-jobqueue keyword
arguments, job counts and adaptive scaling, the worker resource tags, the checks.

Keys keep dask-jobqueue's names (``cores``, ``memory``, ``processes``,
``job_extra_directives``, ``job_script_prologue``, ...) with underscores, so its
documentation applies; mlaas adds ``jobs`` / ``adapt`` (how many jobs), ``gpus`` (a GPU per
job, tagged ``GPU``), ``resources`` (any other worker tags) and ``scheduler``.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from mlaas_dask.cluster.config import (
    ADAPT_FIELD,
    SCHEDULER_FIELD,
    ClusterConfig,
    byte_size,
    non_negative,
    positive,
    tags,
    walltime,
)
from mlaas_dask.cluster.placement import GPU
from mlaas_dask.config import Field, Validator
from mlaas_dask.errors import ConfigError

_STRINGS = Field((str,), "a line")

BASE_SCHEMA = {
    "cores": Field((int,), "cores per job (threads of its workers together)", required=True,
                   check=positive),
    "memory": Field((str,), "memory per job, e.g. '16GB'", required=True, check=byte_size),
    "processes": Field((int,), "Dask worker processes per job (cores are shared among "
                       "them)", default=1, check=positive),
    "jobs": Field((int,), "a fixed number of jobs (default 1 unless adapt is given)",
                  check=positive),
    "adapt": ADAPT_FIELD,
    "gpus": Field((int,), "GPUs per job: 0, or 1 to get one and tag the worker GPU",
                  default=0, check=non_negative),
    "resources": tags("extra resource tags of the workers, e.g. {highmem: 1}"),
    "job_name": Field((str,), "the batch job name", default="mlaas-worker"),
    "job_script_prologue": Field((list,), "shell lines run before the worker starts, e.g. "
                                 "'source /cvmfs/.../setup.sh'", default=[], items=_STRINGS),
    "job_directives_skip": Field((list,), "generated header lines to drop", default=[],
                                 items=_STRINGS),
    "log_directory": Field((str,), "where the jobs' stdout/stderr go"),
    "local_directory": Field((str,), "fast local scratch for the workers, e.g. $TMPDIR"),
    "python": Field((str,), "the Python that runs the workers (default: this one)"),
    "interface": Field((str,), "network interface of the workers (and scheduler), e.g. "
                       "ib0"),
    "death_timeout": Field((int, float), "seconds a worker waits for the scheduler",
                           default=60, check=positive),
    "worker_extra_args": Field((list,), "extra 'dask worker' arguments", default=[],
                               items=_STRINGS),
    "scheduler": SCHEDULER_FIELD,
}

QUEUE_SCHEMA = {
    "queue": Field((str,), "partition / queue to submit to"),
    "account": Field((str,), "account (project) to charge"),
    "walltime": Field((str, int), "time limit per job, e.g. '01:00:00'", default="01:00:00",
                      check=walltime),
    "job_extra_directives": Field((list,), "extra header lines, e.g. '--qos=short'",
                                  default=[], items=_STRINGS),
}


def check_common(config: ClusterConfig, validator: Validator) -> None:
    """Impossible combinations shared by every batch system."""
    options = config.options
    adapt = options["adapt"]
    if adapt and options["jobs"]:
        raise validator.error(("jobs",), "give either 'jobs' (a fixed number) or 'adapt: "
                              "{minimum, maximum}' (adaptive scaling), not both.")
    if adapt and adapt["minimum"] > adapt["maximum"]:
        raise validator.error(("adapt",), f"adapt.minimum ({adapt['minimum']}) is above "
                              f"adapt.maximum ({adapt['maximum']}).")
    if options["cores"] % options["processes"]:
        raise validator.error(("processes",), f"{options['cores']} cores cannot be shared "
                              f"evenly among {options['processes']} worker processes.")
    if options["gpus"] > 1:
        raise validator.error(("gpus",), "a Dask worker uses one GPU: ask for gpus: 1 per "
                              "job and more jobs instead.")
    if options["gpus"] and options["processes"] > 1:
        raise validator.error(("processes",), "with gpus: 1 each job runs one worker "
                              "process (the GPU's owner): set processes: 1.")
    has_gpu = options["gpus"] or GPU in options["resources"]
    for stage in ("read", "train"):
        if getattr(config.placement, stage) == "gpu" and not has_gpu:
            raise validator.error(("placement", stage), f"placement.{stage} is 'gpu' but "
                                  "these jobs have no GPU: set gpus: 1.")
    wait = options["wait"] or {}
    most = (adapt["maximum"] if adapt else options["jobs"] or 1) * options["processes"]
    if wait.get("workers") and wait["workers"] > most:
        raise validator.error(("wait", "workers"), f"waiting for {wait['workers']} workers "
                              f"can never end: at most {most} can start.")


def with_size(config: ClusterConfig, count: int) -> ClusterConfig:
    options = {**config.options, "jobs": count, "adapt": None}
    return ClusterConfig(config.type, f"{config.name}:{count}", options, config.source)


def worker_resources(options: dict[str, Any]) -> dict[str, float]:
    found = dict(options["resources"])
    if options["gpus"]:
        found[GPU] = 1
    return found


def base_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """dask-jobqueue keyword arguments common to all batch systems."""
    options = config.options
    extra_args = list(options["worker_extra_args"])
    found = worker_resources(options)
    if found:
        extra_args += ["--resources", ",".join(f"{k}={v:g}" for k, v in found.items())]
    scheduler = dict(options["scheduler"] or {})
    scheduler_options = {k: v for k, v in scheduler.items() if v is not None}
    if "host" in scheduler_options and "dashboard_address" not in scheduler_options:
        scheduler_options["dashboard_address"] = f"{scheduler_options['host']}:0"
    kwargs: dict[str, Any] = {
        "cores": options["cores"],
        "memory": options["memory"],
        "processes": options["processes"],
        "job_name": options["job_name"],
        "python": options["python"] or sys.executable,
        "death_timeout": options["death_timeout"],
        "worker_extra_args": extra_args,
        "job_script_prologue": list(options["job_script_prologue"]),
        "job_directives_skip": list(options["job_directives_skip"]),
        "scheduler_options": scheduler_options,
    }
    for key in ("log_directory", "local_directory", "interface"):
        if options[key] is not None:
            kwargs[key] = options[key]
    return kwargs


def jobs_wanted(config: ClusterConfig) -> int:
    options = config.options
    if options["adapt"]:
        return int(options["adapt"]["minimum"])
    return int(options["jobs"] or 1)


def wanted_workers(config: ClusterConfig) -> int:
    return jobs_wanted(config) * int(config.options["processes"])


def build(config: ClusterConfig, class_name: str, kwargs: dict[str, Any]) -> Any:
    """The dask-jobqueue cluster object (its scheduler started, no job submitted yet)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"{config.type} clusters need dask-jobqueue: pip install 'mlaas_dask[jobqueue]'."
        ) from None
    try:
        return getattr(dask_jobqueue, class_name)(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"Cluster {config.name!r}: dask-jobqueue refused the settings: "
                          f"{err}") from None


def start(config: ClusterConfig, class_name: str, kwargs: dict[str, Any],
          submit_command: str) -> Any:
    """Build the cluster, then submit jobs (a fixed number, or adaptively)."""
    if shutil.which(submit_command) is None:
        raise ConfigError(
            f"'{submit_command}' is not on PATH: this machine cannot submit {config.type} "
            f"jobs. Run mlaas on a login node of the batch system, or choose another "
            "--cluster."
        )
    cluster = build(config, class_name, kwargs)
    adapt = config.options["adapt"]
    if adapt:
        cluster.adapt(minimum_jobs=adapt["minimum"], maximum_jobs=adapt["maximum"])
    else:
        cluster.scale(jobs=jobs_wanted(config))
    return cluster
