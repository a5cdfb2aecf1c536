"""``type: local``: worker processes on this machine, optionally one per GPU.

Without GPU workers this is a plain :class:`distributed.LocalCluster` (the embedded
default: one single-threaded worker process per core, everything on 127.0.0.1). With
``gpu_workers`` it is a :class:`distributed.SpecCluster` of CPU workers ``cpu-0, cpu-1...``
plus GPU workers ``gpu-0, gpu-1...``, each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``
and tagged with the worker resource ``GPU=1`` -- the layout of dask-cuda's
LocalCUDACluster, next to CPU workers that do the reading.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import subprocess
from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterBackend, ClusterConfig, common_schema
from mlaas_dask.cluster.fields import (
    ADAPT_FIELD,
    Field,
    Validator,
    byte_size,
    non_negative_or_auto,
    positive,
    positive_or_auto,
    scheduler_field,
    tags,
)
from mlaas_dask.cluster.placement import GPU
from mlaas_dask.errors import ConfigError


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the GPUs that
    ``nvidia-smi -L`` lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return [] if ids in (["-1"], ["NoDevFiles"]) else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    listed = [line for line in out.splitlines() if line.startswith("GPU ")]
    return [str(i) for i in range(len(listed))]


def gpu_ids(config: ClusterConfig) -> list[str]:
    """The GPUs the GPU workers get, one each."""
    wanted = config.options["gpu_workers"]
    if wanted == "auto":
        found = visible_gpus()
        if not found:
            raise ConfigError(
                f"Cluster {config.name!r} asks for one worker per GPU (gpu_workers: auto) "
                "but this machine shows none (no CUDA_VISIBLE_DEVICES, nvidia-smi lists no "
                "GPU). Use --cluster local here, or set gpu_workers to a number to tag "
                "workers as GPU workers anyway."
            )
        return found
    found = visible_gpus()
    # more GPU workers than GPUs: the extra ones are tags only (tests, simulations)
    return [found[i] if i < len(found) else str(i) for i in range(wanted)]


class LocalBackend(ClusterBackend):
    """``type: local``: worker processes on this machine (``local``, ``local-gpu``)."""

    name = "local"
    status_command = None
    takes_options = True
    schema: ClassVar[dict[str, Field]] = {
        **common_schema(wait_timeout=60),
        "workers": Field((int, str), "CPU worker processes; auto: one per core (less the "
                         "GPU workers)", default="auto", check=positive_or_auto),
        "threads_per_worker": Field((int,), "threads per worker process", default=1,
                                    check=positive),
        "memory_limit": Field((str,), "memory per worker, e.g. '4GiB'; auto shares the "
                              "machine's memory", default="auto", check=byte_size),
        "gpu_workers": Field((int, str), "extra workers, one per GPU, tagged GPU=1: a "
                             "number, or auto (one per visible GPU)", default=0,
                             check=non_negative_or_auto),
        "resources": tags("resource tags of the CPU workers, e.g. {IO: 1}"),
        "trim_memory": Field((bool,), "return freed memory to the system at once (Dask's "
                             "MALLOC_TRIM_THRESHOLD_), at a cost in speed", default=False),
        "adapt": ADAPT_FIELD,
        "scheduler": scheduler_field("127.0.0.1", "address the scheduler listens on "
                                     "(127.0.0.1: this machine only)", "default: HOST:0"),
    }
    example = """
type: local
workers: 2                  # CPU worker processes, or auto (one per core)
threads_per_worker: 1
memory_limit: auto          # or e.g. 4GiB per worker
gpu_workers: 0              # or auto: one worker per GPU, tagged GPU=1
scheduler: {host: 127.0.0.1, dashboard_address: "127.0.0.1:0"}
"""

    def check(self, config: ClusterConfig, validator: Validator) -> None:
        """Impossible combinations: adaptive scaling with GPU workers or a fixed number
        of workers, a hand-made GPU tag, a GPU placement without GPU workers, waiting for
        more workers than adapt.maximum."""
        options = config.options
        adapt = options["adapt"]
        if adapt and adapt["minimum"] > adapt["maximum"]:
            raise validator.error(("adapt",), f"adapt.minimum ({adapt['minimum']}) is above "
                                  f"adapt.maximum ({adapt['maximum']}).")
        if adapt and options["gpu_workers"] not in (0, None):
            raise validator.error(
                ("adapt",), "adaptive scaling adds and removes CPU workers only; with "
                "gpu_workers it could retire the GPU workers. Remove 'adapt' or set "
                "gpu_workers: 0.")
        if adapt and options["workers"] != "auto":
            raise validator.error(("workers",), "give either a fixed number of workers or "
                                  "'adapt: {minimum, maximum}', not both.")
        if GPU in options["resources"]:
            raise validator.error(("resources", GPU), "the GPU tag belongs to GPU workers; "
                                  "use gpu_workers: N (or auto) to start them.")
        placement = config.placement
        for stage in ("read", "train"):
            if getattr(placement, stage) == "gpu" and options["gpu_workers"] == 0:
                raise validator.error(("placement", stage), f"placement.{stage} is 'gpu' "
                                      "but this cluster has no GPU workers (gpu_workers: 0).")
        wait = options["wait"] or {}
        if wait.get("workers") and adapt and wait["workers"] > adapt["maximum"]:
            raise validator.error(("wait", "workers"), f"waiting for {wait['workers']} "
                                  f"workers can never end: adapt.maximum is "
                                  f"{adapt['maximum']}.")

    def size(self, config: ClusterConfig, count: int) -> ClusterConfig:
        """``local:N``: N CPU worker processes, no adaptive scaling."""
        return dataclasses.replace(config, name=f"{config.name}:{count}",
                                   options={**config.options, "workers": count,
                                            "adapt": None})

    def start(self, config: ClusterConfig, **options: Any) -> Any:
        """A started LocalCluster, or a SpecCluster of CPU and GPU workers."""
        ids = gpu_ids(config) if config.options["gpu_workers"] else []
        if not ids:
            return _local_cluster(config, options)
        return _cpu_and_gpu_cluster(config, ids, options)

    def wanted_workers(self, config: ClusterConfig) -> int:
        """adapt.minimum; otherwise 0: a LocalCluster starts its workers before it
        returns."""
        adapt = config.options["adapt"]
        return int(adapt["minimum"]) if adapt else 0

    def hint(self, config: ClusterConfig, cluster: Any) -> str:
        return "The machine may be short of memory; try fewer workers."


def _cpu_workers(options: dict[str, Any], n_gpu: int) -> int:
    if options["workers"] != "auto":
        return int(options["workers"])
    if options["adapt"]:
        return int(options["adapt"]["minimum"])
    return max(1, cores() // options["threads_per_worker"] - n_gpu)


def _nanny(options: dict[str, Any]) -> type:
    from distributed import Nanny

    return Nanny if options["trim_memory"] else worker_nanny()


def _local_cluster(config: ClusterConfig, extra: dict[str, Any]) -> Any:
    from distributed import LocalCluster

    options = config.options
    scheduler = config.block("scheduler")
    host = scheduler["host"]
    cluster = LocalCluster(
        n_workers=_cpu_workers(options, 0),
        threads_per_worker=options["threads_per_worker"],
        processes=True,
        host=host,
        scheduler_port=scheduler["port"],
        dashboard_address=scheduler["dashboard_address"] or f"{host}:0",
        memory_limit=options["memory_limit"],
        **({"resources": dict(options["resources"])} if options["resources"] else {}),
        worker_class=_nanny(options),
        **extra,
    )
    if options["adapt"]:
        cluster.adapt(minimum=options["adapt"]["minimum"],
                      maximum=options["adapt"]["maximum"])
    return cluster


def _cpu_and_gpu_cluster(config: ClusterConfig, ids: list[str], extra: dict[str, Any]) -> Any:
    """CPU workers cpu-0, cpu-1... and GPU workers gpu-0, gpu-1..., one per GPU."""
    from distributed import Scheduler, SpecCluster

    options = config.options
    scheduler = config.block("scheduler")
    host = scheduler["host"]
    nanny = _nanny(options)
    common = {"host": host, "memory_limit": options["memory_limit"],
              "silence_logs": extra.pop("silence_logs", None) or 30}
    cpu = {"cls": nanny, "options": {**common, "nthreads": options["threads_per_worker"],
                                     "resources": dict(options["resources"]) or None}}
    workers = {f"cpu-{i}": cpu for i in range(_cpu_workers(options, len(ids)))}
    for index, gpu in enumerate(ids):
        workers[f"gpu-{index}"] = {"cls": nanny, "options": {
            **common, "nthreads": 1, "resources": {GPU: 1},
            "env": {"CUDA_VISIBLE_DEVICES": gpu}}}
    if extra:
        raise ConfigError(f"Options {sorted(extra)} are not supported with GPU workers.")
    return SpecCluster(
        workers=workers,
        scheduler={"cls": Scheduler, "options": {
            "host": host, "port": scheduler["port"],
            "dashboard_address": scheduler["dashboard_address"] or f"{host}:0"}},
        worker=cpu,
        name=config.name,
        silence_logs=logging.WARNING,
    )


_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@functools.cache
def worker_nanny() -> type:
    """A :class:`distributed.Nanny` whose worker keeps glibc's own memory tuning.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory goes
    back to the system sooner. Setting it also turns off glibc's adaptive mmap threshold,
    so every array larger than 128 KiB is a fresh mmap that must be page-faulted in:
    reading + features on one partition took 25-40% longer that way (measured with
    ``benchmarks/bench_read_features.py``). ``trim_memory: true`` restores Dask's default.
    """
    import dask
    from distributed import Nanny

    dask_default = str(dask.config.get(_TRIM, default=65536))

    class WorkerNanny(Nanny):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # read from the config when the Nanny is made (also by adaptive scaling)
            with dask.config.set({_TRIM: None}):
                super().__init__(*args, **kwargs)
            # a plain Nanny started earlier in this process left Dask's value in our
            # environment, which the worker process would inherit
            if os.environ.get("MALLOC_TRIM_THRESHOLD_") == dask_default:
                del os.environ["MALLOC_TRIM_THRESHOLD_"]

    return WorkerNanny
