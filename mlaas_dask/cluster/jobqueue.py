"""What the batch-system clusters (SLURM, HTCondor, PBS) share: dask-jobqueue keyword
arguments, job counts and adaptive scaling, the worker resource tags, the checks.

Keys keep dask-jobqueue's names (``cores``, ``memory``, ``processes``,
``job_extra_directives``, ``job_script_prologue``, ...) with underscores, so its
documentation applies; mlaas adds ``jobs`` / ``adapt`` (how many jobs), ``gpus`` (a GPU per
job, tagged ``GPU``), ``resources`` (any other worker tags) and ``scheduler``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterBackend, ClusterConfig, common_schema
from mlaas_dask.cluster.fields import (
    ADAPT_FIELD,
    Field,
    Validator,
    byte_size,
    non_negative,
    positive,
    scheduler_field,
    tags,
    walltime,
)
from mlaas_dask.cluster.placement import GPU
from mlaas_dask.errors import ConfigError

_STRINGS = Field((str,), "a line")

BASE_SCHEMA = {
    **common_schema(wait_timeout=300),
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
    "log_directory": Field((str,), "where the jobs' stdout/stderr go (when not set: "
                           "~/.cache/mlaas_dask/logs/<cluster name>, never the folder "
                           "mlaas runs in)"),
    "local_directory": Field((str,), "fast local scratch for the workers, e.g. $TMPDIR"),
    "python": Field((str,), "the Python that runs the workers (default: this one)"),
    "interface": Field((str,), "network interface of the workers (and scheduler), e.g. "
                       "ib0"),
    "death_timeout": Field((int, float), "seconds a worker waits for the scheduler",
                           default=60, check=positive),
    "worker_extra_args": Field((list,), "extra 'dask worker' arguments", default=[],
                               items=_STRINGS),
    "scheduler": scheduler_field(None, "address the scheduler listens on (default: "
                                 "chosen by dask-jobqueue)",
                                 "default: HOST:0 when host is given, else dask-jobqueue's "
                                 "':8787'"),
}

QUEUE_SCHEMA = {
    "queue": Field((str,), "partition / queue to submit to"),
    "account": Field((str,), "account (project) to charge"),
    "walltime": Field((str, int), "time limit per job, e.g. '01:00:00'", default="01:00:00",
                      check=walltime),
    "job_extra_directives": Field((list,), "extra header lines, e.g. '--qos=short'",
                                  default=[], items=_STRINGS),
}


class JobQueueBackend(ClusterBackend):
    """What the dask-jobqueue backends share: jobs or adaptive scaling, the checks, the
    keyword arguments, submitting. A subclass names its dask-jobqueue class and submit
    command and adds its own keyword arguments in :meth:`job_kwargs`."""

    #: the dask-jobqueue class, e.g. "SLURMCluster"
    cluster_class: ClassVar[str]
    #: the program that submits jobs, e.g. "sbatch" (checked to be on PATH)
    submit_command: ClassVar[str]

    def check(self, config: ClusterConfig, validator: Validator) -> None:
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
            raise validator.error(("processes",), f"{options['cores']} cores cannot be "
                                  f"shared evenly among {options['processes']} worker "
                                  "processes.")
        if options["gpus"] > 1:
            raise validator.error(("gpus",), "a Dask worker uses one GPU: ask for gpus: 1 "
                                  "per job and more jobs instead.")
        if options["gpus"] and options["processes"] > 1:
            raise validator.error(("processes",), "with gpus: 1 each job runs one worker "
                                  "process (the GPU's owner): set processes: 1.")
        has_gpu = options["gpus"] or GPU in options["resources"]
        for stage in ("read", "train"):
            if getattr(config.placement, stage) == "gpu" and not has_gpu:
                raise validator.error(("placement", stage), f"placement.{stage} is 'gpu' "
                                      "but these jobs have no GPU: set gpus: 1.")
        wait = options["wait"] or {}
        most = (adapt["maximum"] if adapt else options["jobs"] or 1) * options["processes"]
        if wait.get("workers") and wait["workers"] > most:
            raise validator.error(("wait", "workers"), f"waiting for {wait['workers']} "
                                  f"workers can never end: at most {most} can start.")

    def size(self, config: ClusterConfig, count: int) -> ClusterConfig:
        """``NAME:N``: N jobs, no adaptive scaling."""
        return dataclasses.replace(config, name=f"{config.name}:{count}",
                                   options={**config.options, "jobs": count, "adapt": None})

    def wanted_workers(self, config: ClusterConfig) -> int:
        """The workers of the jobs submitted at the start (adapt.minimum or jobs)."""
        return jobs_wanted(config) * int(config.options["processes"])

    def job_kwargs(self, config: ClusterConfig) -> dict[str, Any]:
        """The dask-jobqueue keyword arguments (subclasses add their own)."""
        return base_kwargs(config)

    def build(self, config: ClusterConfig) -> Any:
        """The dask-jobqueue cluster object (its scheduler started, no job submitted)."""
        from mlaas_dask.extras import require

        dask_jobqueue = require("dask_jobqueue", f"{config.type} clusters")
        kwargs = self.job_kwargs(config)
        try:
            return getattr(dask_jobqueue, self.cluster_class)(**kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"Cluster {config.name!r}: dask-jobqueue refused the "
                              f"settings: {err}") from None

    def start(self, config: ClusterConfig, **options: Any) -> Any:
        """Build the cluster, then submit jobs (a fixed number, or adaptively)."""
        if shutil.which(self.submit_command) is None:
            raise ConfigError(
                f"'{self.submit_command}' is not on PATH: this machine cannot submit "
                f"{config.type} jobs. Run mlaas on a login node of the batch system, or "
                "choose another --cluster."
            )
        cluster = self.build(config)
        adapt = config.options["adapt"]
        if adapt:
            cluster.adapt(minimum_jobs=adapt["minimum"], maximum_jobs=adapt["maximum"])
        else:
            cluster.scale(jobs=jobs_wanted(config))
        return cluster

    def job_script(self, config: ClusterConfig) -> str:
        """The script each job runs (nothing is submitted)."""
        cluster = self.build(config)
        try:
            return str(cluster.job_script())
        finally:
            cluster.close()

    def hint(self, config: ClusterConfig, cluster: Any) -> str:
        jobs = [str(getattr(job, "job_id", None))
                for job in getattr(cluster, "workers", {}).values()]
        return (f"Submitted jobs: {', '.join(jobs) or 'none'}. They may still be queued or "
                f"have failed: check '{self.status_command}' and the logs in "
                f"{log_directory(config)}; raise wait.timeout for busy queues.")


def worker_resources(options: dict[str, Any]) -> dict[str, float]:
    """The workers' resource tags: ``resources``, plus GPU with ``gpus: 1``."""
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
    kwargs["log_directory"] = log_directory(config)
    for key in ("local_directory", "interface"):
        if options[key] is not None:
            kwargs[key] = options[key]
    return kwargs


def log_directory(config: ClusterConfig) -> str:
    """Where the jobs write their output: ``log_directory``, else
    ``~/.cache/mlaas_dask/logs/<cluster name>``. Without one, SLURM and PBS write
    ``slurm-*.out`` / ``NAME.o*`` into the folder mlaas was started from (often a source
    tree); home folders are usually shared with the compute nodes."""
    chosen = config.options.get("log_directory")
    if chosen:
        return str(chosen)
    name = re.sub(r"[^\w.-]+", "_", str(config.name)).strip("_") or config.type
    return str(Path("~/.cache/mlaas_dask/logs").expanduser() / name)


def jobs_wanted(config: ClusterConfig) -> int:
    """The jobs submitted at the start: adapt.minimum, else ``jobs`` (default 1)."""
    options = config.options
    if options["adapt"]:
        return int(options["adapt"]["minimum"])
    return int(options["jobs"] or 1)
