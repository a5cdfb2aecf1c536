"""Which workers run each stage: heterogeneous placement through Dask worker resources.

Workers carry resource tags (``GPU`` for a worker that owns a GPU, or any user tag such as
``IO`` or ``highmem``). A cluster file's ``placement`` block says where the stages go::

    placement:
      read: auto     # reading + features: the untagged (CPU) workers when GPU workers exist
      train: auto    # training: the GPU-tagged workers when XGBoost trains on cuda

A rule is ``auto``, ``any`` (no restriction), ``cpu`` (workers without a GPU tag), ``gpu``
(workers tagged GPU) or any other resource tag. Restrictions are worker lists taken when the
stage starts; a stage that may run anywhere gets no restriction at all, so adaptive
clusters keep scaling freely.

Reading scales with processes (uproot and numpy hold the GIL between decompressions),
XGBoost on CPU with threads: processes must exchange histograms every tree level. So with
``train: auto`` on CPU, when a machine runs several workers, the training splits are
gathered on one worker per machine, which trains with the threads of all that machine's
workers -- unless the data would take more than :data:`PACK_MEMORY_FRACTION` of that
worker's memory limit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlaas_dask.errors import ConfigError

logger = logging.getLogger(__name__)

GPU = "GPU"
#: the most of a worker's memory limit that training data gathered on it may take
PACK_MEMORY_FRACTION = 0.4
KEYWORDS = ("auto", "any", "cpu", "gpu")
STAGES = ("read", "train")


@dataclass(frozen=True)
class Placement:
    """Placement rules of the read+features and the training stage."""

    read: str = "auto"
    train: str = "auto"

    @classmethod
    def from_value(cls, value: Any) -> Placement:
        """A Placement from a Placement, a mapping ``{read:, train:}``, or None."""
        if value is None:
            return cls()
        if isinstance(value, Placement):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(STAGES)
            if unknown:
                raise ConfigError(f"Unknown placement stage(s) {sorted(unknown)}; use "
                                  "'read' and 'train', e.g. {'read': 'cpu', 'train': 'gpu'}.")
            return cls(**{k: str(v) for k, v in value.items() if v is not None})
        raise ConfigError(f"placement must be a mapping such as {{'train': 'gpu'}}, "
                          f"not {value!r}.")

    def as_dict(self) -> dict[str, str]:
        return {"read": self.read, "train": self.train}


def is_gpu_worker(info: Mapping[str, Any]) -> bool:
    return (info.get("resources") or {}).get(GPU, 0) > 0


def _label(address: str, info: Mapping[str, Any]) -> str:
    tags = ", ".join(f"{k}={v:g}" for k, v in sorted((info.get("resources") or {}).items()))
    return f"{info.get('name', address)} ({tags or 'no tags'})"


def select_workers(
    workers: Mapping[str, Mapping[str, Any]], rule: str, stage: str, device: str = "cpu"
) -> list[str] | None:
    """Addresses of the workers allowed to run ``stage`` under ``rule``.

    ``workers`` is the scheduler's worker table (``client.scheduler_info()["workers"]``).
    Returns None when the stage may run on any worker (no restriction needed).

    Raises
    ------
    ConfigError
        When an explicit rule matches no worker.
    """
    gpu = [a for a, w in workers.items() if is_gpu_worker(w)]
    cpu = [a for a, w in workers.items() if not is_gpu_worker(w)]
    if rule == "any" or not workers:
        return None
    if rule == "auto":
        if not (gpu and cpu):
            return None  # homogeneous: nothing to separate
        if stage == "read":
            return sorted(cpu)
        return sorted(gpu) if device == "cuda" else None
    if rule == "cpu":
        chosen, wanted = cpu, "worker without a GPU tag"
    elif rule == "gpu":
        chosen, wanted = gpu, "GPU-tagged worker"
    else:
        chosen = [a for a, w in workers.items() if (w.get("resources") or {}).get(rule, 0) > 0]
        wanted = f"worker with the resource {rule!r}"
    if not chosen:
        listing = "; ".join(_label(a, w) for a, w in sorted(workers.items()))
        raise ConfigError(
            f"placement.{stage} is {rule!r} but the cluster has no {wanted}. Workers: "
            f"{listing}. Tag workers with Dask resources (gpu_workers: 1 or resources: "
            f"{{{rule if rule not in KEYWORDS else GPU}: 1}} in the cluster file, or "
            "'dask worker --resources GPU=1'), or use placement "
            f"{stage}: auto."
        )
    return None if len(chosen) == len(workers) else sorted(chosen)


def one_per_host(workers: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], int] | None:
    """One worker per machine, and the threads all workers of a machine have together (the
    fewest over machines), when some machine runs several workers; else None."""
    hosts: dict[str, list[str]] = {}
    for address, info in workers.items():
        hosts.setdefault(str(info.get("host") or address.rsplit(":", 1)[0]), []).append(address)
    if all(len(addresses) == 1 for addresses in hosts.values()):
        return None
    chosen = sorted(min(addresses) for addresses in hosts.values())
    threads = min(sum(int(workers[a].get("nthreads") or 1) for a in addresses)
                  for addresses in hosts.values())
    return chosen, threads


def worker_names(workers: Mapping[str, Mapping[str, Any]], addresses: Iterable[str]) -> list[str]:
    """Worker names (as the scheduler knows them) for addresses, in address order."""
    return [str(workers.get(a, {}).get("name", a)) for a in sorted(set(addresses))]


def stage_record(client: Any, rule: str, restricted: list[str] | None,
                 ran_on: Iterable[str]) -> dict[str, Any]:
    """What the bundle's metadata says about one stage: its rule, the workers it was
    allowed on, and the workers it actually ran on (names, addresses, resource tags)."""
    workers = client.scheduler_info().get("workers", {})
    ran = sorted(set(ran_on))
    return {
        "rule": rule,
        "restricted_to": worker_names(workers, restricted) if restricted else None,
        "workers": worker_names(workers, ran),
        "addresses": ran,
        "resources": sorted({r for a in ran for r in (workers.get(a, {}).get("resources")
                                                         or {})}),
    }


def _wait(futures: list[Any], workers: list[str]) -> None:
    from distributed import wait

    wait(futures)


def carry_block(block: Any) -> Any:
    """Identity: the task that carries a block to the worker it is restricted to."""
    return block


def holders(client: Any, futures: Iterable[Any]) -> list[str]:
    """Addresses of the workers holding the results of ``futures`` (where they ran)."""
    futures = list(futures)
    if not futures:
        return []
    return sorted({w for ws in client.who_has(futures).values() for w in ws})


@dataclass
class StagePlan:
    """Placement of one training run: the workers each stage may use, and where each
    stage then ran (for the bundle's metadata)."""

    client: Any
    placement: Placement
    read_workers: list[str] | None
    train_workers: list[str] | None = None
    #: XGBoost threads per training worker, when training was gathered on fewer workers
    train_threads: int | None = None
    ran_on: dict[str, list[str]] | None = None

    @classmethod
    def for_client(cls, client: Any, override: Any = None) -> StagePlan:
        """Rules from ``override`` (a Placement or ``{read:, train:}``), else from the
        cluster file the client was started from, else ``auto``."""
        from mlaas_dask.cluster import config_of

        config = config_of(client)
        placement = (Placement.from_value(override) if override is not None
                     else config.placement if config is not None else Placement())
        workers = client.scheduler_info().get("workers", {})
        return cls(client, placement, select_workers(workers, placement.read, "read"),
                   ran_on={})

    def move_for_training(self, device: str, X: dict[str, Any], y: dict[str, Any],
                          w: dict[str, Any],
                          wait: Callable[[list[Any], list[str]], None] | None = None,
                          ) -> tuple[dict, dict, dict]:
        """Persist the train and validation splits on the training workers (when the
        rule restricts training), so that ``xgboost.dask`` -- which trains where the data
        is -- trains there.

        Called again after a lost worker, it places them on the workers that are left.
        ``wait(futures, workers)`` waits for the moved blocks (it should give up when
        one of those workers dies); by default :func:`distributed.wait`.
        """
        workers = self.client.scheduler_info().get("workers", {})
        self.train_workers = select_workers(workers, self.placement.train, "train", device)
        self.train_threads = None
        splits = ("train", "validation")
        if not self.train_workers and self.placement.train == "auto" and device == "cpu":
            size = sum(d[s].nbytes for s in splits for d in (X, y, w))
            self._pack(workers, size)
        if not self.train_workers:
            return X, y, w
        if not self.train_threads:
            logger.info(f"Moving the training data to "
                        f"{', '.join(worker_names(workers, self.train_workers))}")
        # the blocks first where they are, unrestricted: a restriction applies to every
        # task of a graph that the scheduler does not know yet, and lasts while it knows
        # it -- so after a lost worker, blocks to recompute would wait for the dead one
        sources = self.client.persist([d[s] for s in splits for d in (X, y, w)])
        # then new keys (an identity per block, unique per move) that only these workers
        # may compute: the originals may be held elsewhere, and strict (loose ones let
        # idle workers steal blocks). A dead worker leaves these waiting for it: training
        # stops when it notices the loss, and moves the splits again (see
        # mlaas_dask.train.xgb.train_resumable)
        arrays = [a.map_blocks(carry_block, dtype=a.dtype,
                               name=f"carry_block-{uuid.uuid4().hex}") for a in sources]
        moved = self.client.persist(arrays, workers=self.train_workers,
                                    allow_other_workers=False)
        (wait or _wait)(moved, self.train_workers)
        out: tuple[dict, dict, dict] = (dict(X), dict(y), dict(w))
        for index, split in enumerate(splits):
            for which in range(3):
                out[which][split] = moved[index * 3 + which]
        return out

    def _pack(self, workers: Mapping[str, Mapping[str, Any]], size: int) -> None:
        """Train on one worker per machine with all the machine's threads, if it fits."""
        packed = one_per_host(workers)
        if packed is None:
            return
        chosen, threads = packed
        per_machine = size / len(chosen)
        limits = [int(workers[a].get("memory_limit") or 0) for a in chosen]
        if any(limit and per_machine > PACK_MEMORY_FRACTION * limit for limit in limits):
            return
        self.train_workers, self.train_threads = chosen, threads
        names = ", ".join(worker_names(workers, chosen))
        logger.info(f"XGBoost trains with {threads} threads on one worker per machine "
                    f"(worker {names}); moving the training and validation splits there.")

    def ran(self, stage: str, addresses: Iterable[str]) -> None:
        assert self.ran_on is not None
        self.ran_on[stage] = sorted(set(addresses))

    def record(self) -> dict[str, Any]:
        """``metadata["placement"]``: per stage, its rule, the allowed and the actual
        workers."""
        assert self.ran_on is not None
        rules = {"read_features": (self.placement.read, self.read_workers),
                 "train": (self.placement.train, self.train_workers),
                 "predict": ("any", None)}
        record = {stage: stage_record(self.client, rule, allowed, self.ran_on.get(stage, []))
                  for stage, (rule, allowed) in rules.items()}
        if self.train_threads:
            record["train"]["threads_per_worker"] = self.train_threads
        return record
