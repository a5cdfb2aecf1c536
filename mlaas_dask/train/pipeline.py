"""The one training pipeline, whatever the model:

1. :func:`prepare` -- the job's dataset opened, its FeatureSpec resolved, the partition
   plan (cut, weights, labels, split) made; no cluster needed yet;
2. the feature matrices computed on the cluster (:func:`~mlaas_dask.train.matrix.build_matrices`),
   held on the workers -- or, when they are estimated not to fit in the cluster's memory
   or the job asks for it (:func:`choose_streaming`), read once for their statistics
   and streamed (:func:`~mlaas_dask.train.matrix.stream_matrices`): every later use
   reads the partitions again;
3. the model kind's *fitter*, ``fitter(FitContext) -> Fitted`` (XGBoost, scikit-learn,
   neural networks: see :func:`register_fitter`), which trains and gives lazy test scores;
4. :func:`~mlaas_dask.train.finish.evaluate_and_write` -- the test split scored once,
   metrics and plots, the bundle written atomically.

``train``, ``tune`` and ``bench`` all run through :func:`run` inside one
:func:`~mlaas_dask.cluster.session.cluster_session`.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlaas_dask.errors import ConfigError, FeatureError

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.cluster.placement import StagePlan
    from mlaas_dask.contracts import MatrixStats, Metrics
    from mlaas_dask.data.collections import CollectionDataset
    from mlaas_dask.data.dataset import Dataset, Group
    from mlaas_dask.features import FeatureSpec
    from mlaas_dask.job import Job
    from mlaas_dask.train.fitted import Fitted
    from mlaas_dask.train.matrix import Matrices, PartitionPlan

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the bundle went and what it scored."""

    bundle: Path
    metrics: Metrics
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A job ready to be read on a cluster: its dataset (files opened, branches checked),
    the resolved FeatureSpec and the plan every partition task follows."""

    dataset: Dataset | CollectionDataset
    spec: FeatureSpec
    plan: PartitionPlan
    #: files for the bundle made before training (the reweighting's table and plot)
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class FitContext:
    """What a fitter gets: the job, the cluster, the feature matrices on the workers.

    Attributes
    ----------
    matrices
        Lazy dask arrays per split (``train``, ``validation``, ``test``): ``X`` (float32,
        raw features, NaN for missing objects), ``y`` (int32 labels), ``w`` (float32
        event weights), and their ``stats``.
    stages
        Which workers read and which train (:class:`~mlaas_dask.cluster.placement.StagePlan`).
    out
        The bundle's path: checkpoints go next to it (:func:`checkpoint_folder`).
    """

    job: Job
    client: Client
    matrices: Matrices
    classes: list[str]
    stages: StagePlan
    out: Path
    progress: bool
    spec: FeatureSpec


Fitter = Callable[[FitContext], "Fitted"]

#: model kind -> its fitter, or "module:function" imported when first used (so that a
#: job imports the libraries of its own model only)
_FITTERS: dict[str, Fitter | str] = {
    "xgboost": "mlaas_dask.train.xgb:fit_xgboost",
    "sklearn": "mlaas_dask.train.sklearn:fit_sklearn",
    "torch": "mlaas_dask.train.network:fit_network",
    "keras": "mlaas_dask.train.network:fit_network",
}


def register_fitter(kind: str, fitter: Fitter | str) -> None:
    """Train models of ``kind`` with ``fitter`` (a callable or ``"module:function"``)."""
    _FITTERS[kind] = fitter


def fitter_for(kind: str) -> Fitter:
    """The fitter of a model kind.

    Raises
    ------
    ConfigError
        For a kind no fitter is registered for.
    """
    try:
        fitter = _FITTERS[kind]
    except KeyError:
        raise ConfigError(f"No trainer for model kind {kind!r}; the kinds are "
                          f"{', '.join(sorted(_FITTERS))}. Check model.kind in the job."
                          ) from None
    if isinstance(fitter, str):
        module, _, name = fitter.partition(":")
        fitter = getattr(importlib.import_module(module), name)
        _FITTERS[kind] = fitter
    return fitter


def prepare(job: Job) -> Prepared:
    """Open the job's dataset, check its branches and resolve its FeatureSpec.

    Reads the file headers (and, for ``n: auto`` collections, a sample of events); runs
    in the calling process, before any cluster is started.
    """
    from mlaas_dask.data.dataset import Dataset

    config = job.dataset
    groups = _groups(job)
    dataset = Dataset(groups, config.tree, _needed(job), config.step_size,
                      optional_branches=config.id_branches, policy=config.policy,
                      cache=config.feature_cache)
    for item in dataset.unopened:
        logger.info("Skipping %s (dataset.on_error: skip): %s", item["file"], item["error"])
    prepared = _prepared(job, dataset, f"tree {config.tree!r} of {dataset.files[0].path}")
    logger.info("Dataset: %d files, %s events, %d partitions; reading %d branches; "
                "%d features.", len(dataset.files), f"{dataset.entries:,}",
                len(dataset.partitions), len(dataset.branches), prepared.spec.n_features)
    return prepared


def prepare_events(job: Job, events: Mapping[str, Any]) -> Prepared:
    """:func:`prepare` for the user's dask-awkward collections, one per group of the job
    (whose groups then list no files): see :mod:`mlaas_dask.data.collections`.

    Only the collections' types are looked at (for ``n: auto``, a sample of events is
    computed); nothing else is read before the cluster reads the partitions.
    """
    from mlaas_dask.data.collections import CollectionDataset

    config = job.dataset
    names = [g.name for g in config.groups]
    unknown = [k for k in events if k not in names]
    if unknown or len(events) != len(names):
        missing = [n for n in names if n not in events]
        raise ConfigError(
            f"train(job, events=...) needs one collection per group of the job, by name: "
            f"the groups are {', '.join(map(repr, names))}"
            + (f"; no group is named {unknown[0]!r}" if unknown else "")
            + (f"; group {missing[0]!r} has no collection" if missing else "") + ".")
    with_files = [g.name for g in config.groups if g.files]
    if with_files:
        raise ConfigError(f"Group {with_files[0]!r} lists files, and train(job, events=...) "
                          "gives its events too: load the job with load_job(path, "
                          "events=True), whose groups list no files.")
    dataset = CollectionDataset(_groups(job), [events[n] for n in names], _needed(job),
                                optional_branches=config.id_branches)
    prepared = _prepared(job, dataset, f"the events of group {names[0]!r}")
    logger.info("Dataset: %d dask-awkward collections, %d partitions; reading %d branches; "
                "%d features.", len(names), len(dataset.partitions), len(dataset.branches),
                prepared.spec.n_features)
    return prepared


def _groups(job: Job) -> list[Group]:
    from mlaas_dask.data.dataset import Group

    config = job.dataset
    return [Group(g.name, tuple(g.files), config.label_index(g), g.weight)
            for g in config.groups]


def _needed(job: Job) -> list[str]:
    """The branches a job reads: its features', its cut's, its weight and label."""
    from mlaas_dask.train.matrix import cut_branches

    config = job.dataset
    needed = [*job.features.branches(), *cut_branches(config.cut)]
    needed += [b for b in (config.weight_branch, config.label_branch) if b]
    return list(dict.fromkeys(needed))


#: events per group on which a selection cut is tried before any worker runs it
CUT_SAMPLE_EVENTS = 100


def check_cut(dataset: Any, cut: str) -> None:
    """Evaluate the selection cut on the first events of each group here, so that a cut
    that cannot work (a list per event, a value that is not true/false) is one message
    before the cluster reads anything, not a traceback in every worker's log first."""
    from mlaas_dask.train.matrix import _cut_mask, cut_branches

    for events in dataset.sample(cut_branches(cut), CUT_SAMPLE_EVENTS):
        _cut_mask(events, cut)


def _prepared(job: Job, dataset: Any, where: str) -> Prepared:
    """The checks, the sizing of ``n: auto`` and the plan, whatever the dataset."""
    from mlaas_dask.train.matrix import PartitionPlan, sample_multiplicities

    config = job.dataset
    spec = job.features
    spec.check_schema(dataset.jagged, where=where)
    if config.weight_branch and dataset.jagged[config.weight_branch]:
        raise FeatureError(f"The weight branch {config.weight_branch!r} is a list per event; "
                           "dataset.weight_branch needs one number per event.",
                           branch=config.weight_branch)
    if config.cut:
        check_cut(dataset, config.cut)
    if not spec.is_resolved:
        spec = spec.resolve(sample_multiplicities(dataset, spec))
        sized = {n: c.n for n, c in spec.collections.items()}
        logger.info("Estimated objects per event from a sample: %s", sized)
    ids = tuple(dataset.optional_present) if set(dataset.optional_present) == set(
        config.id_branches) else ()
    plan = PartitionPlan(
        spec=spec, cut=config.cut, weight_branch=config.weight_branch, id_branches=ids,
        fractions=(job.split.train, job.split.validation), seed=job.split.seed,
        group_weights=tuple(g.weight for g in dataset.groups),
        labels=tuple(g.label for g in dataset.groups),
        n_classes=len(config.classes), label_branch=config.label_branch,
        negative_weights=config.negative_weights,
    )
    if job.reweight:
        return _reweighted(job, dataset, plan)
    return Prepared(dataset, spec, plan)


def _reweighted(job: Job, dataset: Any, plan: PartitionPlan) -> Prepared:
    """The plan with the job's kinematic reweighting fitted on a sample (see
    :mod:`mlaas_dask.train.reweight`), and the bundle's reweight.json and .png."""
    from mlaas_dask.train.reweight import (
        REWEIGHT_FILE,
        REWEIGHT_PLOT,
        fit_reweighting,
        reweight_png,
        sample_matrix,
    )

    settings = job.reweight or {}
    classes = list(job.dataset.classes)
    x, y, w = sample_matrix(dataset, plan, settings["sample_events"])
    reweighting = fit_reweighting(x, y, w, plan.spec.feature_names, classes, settings)
    logger.info("Reweighting %s to %s from %s sample events.",
                ", ".join(reweighting.variables), reweighting.target, f"{len(y):,}")
    files = {REWEIGHT_FILE: (json.dumps(reweighting.to_dict(classes), indent=2) + "\n").encode(),
             REWEIGHT_PLOT: reweight_png(x, y, w, reweighting, classes)}
    return Prepared(dataset, plan.spec, replace(plan, reweight=reweighting), files)


#: model kinds that can train on streamed matrices, and the job key that forces it
STREAMING_KINDS = {"torch": "model.stream", "keras": "model.stream"}


def choose_streaming(job: Job, client: Client, prepared: Prepared,
                     stages: StagePlan) -> tuple[bool, Any]:
    """Whether the job's matrices are streamed, and the memory estimate it was decided
    on (:func:`~mlaas_dask.train.matrix.estimate_memory`, before reading; logged as one
    line): streamed when the job's key says so (``model.stream: true``), or when it is
    left out and the matrix does not fit; ``false`` always holds them."""
    from mlaas_dask.train.matrix import estimate_memory

    key = STREAMING_KINDS.get(job.model.kind)
    if key is None:
        return False, None
    asked = job.model.stream
    estimate = estimate_memory(client, prepared.dataset, prepared.plan, stages.read_workers)
    if estimate is None:
        return bool(asked), None
    stream = bool(asked) if asked is not None else not estimate.fits
    why = (f"{key}: {str(asked).lower()}" if asked is not None
           else "does not fit" if stream else "fits")
    logger.info("%s: %s (%s).", estimate.describe(),
                "streamed, the partitions read again every epoch" if stream
                else "held on the workers", why)
    return stream, estimate


def read_matrices(client: Client, prepared: Prepared, stages: StagePlan,
                  progress: bool, stream: bool = False) -> Matrices:
    """Stage 2: every partition read and turned into features on the (reading) workers,
    the results held there (or, with ``stream``, only their statistics kept); the read
    report logged."""
    from mlaas_dask.cluster.placement import holders
    from mlaas_dask.train.matrix import build_matrices, format_report, stream_matrices

    logger.info("Reading events and computing features:")
    build = stream_matrices if stream else build_matrices
    matrices = build(client, prepared.dataset, prepared.plan,  # type: ignore[arg-type]
                     progress=progress, workers=stages.read_workers)
    stages.ran("read_features", holders(client, matrices.futures) if matrices.futures
               else list(stages.read_workers or client.scheduler_info()["workers"]))
    for line in format_report(matrices.stats["read_report"]):
        logger.info(line)
    return matrices


def run(job: Job, client: Client, prepared: Prepared, out: Path, *, overwrite: bool = False,
        progress: bool = True, placement: dict[str, str] | None = None,
        t0: float | None = None,
        matrices: tuple[Matrices, float] | None = None) -> TrainResult:
    """Stages 2 to 4 on a connected client (inside a
    :func:`~mlaas_dask.cluster.session.cluster_session`).

    ``matrices``: the feature matrices already read (and the seconds that took), e.g. by
    ``tune``, instead of reading them again.
    """
    from mlaas_dask.cluster import describe
    from mlaas_dask.cluster.placement import StagePlan
    from mlaas_dask.train.finish import evaluate_and_write

    t0 = time.perf_counter() if t0 is None else t0
    cluster_info = describe(client)
    fitter = fitter_for(job.model.kind)
    start = time.perf_counter()
    stages = StagePlan.for_client(client, placement)
    if matrices is None:
        stream, estimate = choose_streaming(job, client, prepared, stages)
        read = read_matrices(client, prepared, stages, progress, stream)
        read.estimate = estimate
        timings = {"read_features": time.perf_counter() - start}
    else:
        from mlaas_dask.cluster.placement import holders

        read, timings = matrices[0], {"read_features": matrices[1]}
        stages.ran("read_features", holders(client, read.futures))
    context = FitContext(job, client, read, list(job.dataset.classes), stages, out,
                         progress, prepared.spec)
    fitted = fitter(context)
    timings.update(fitted.timings)
    metadata = describe_job(job, prepared, read.stats, cluster_info)
    metadata["placement"] = stages.record()
    fitted.files.update(prepared.files)
    bundle, metrics = evaluate_and_write(client, fitted, read, context.classes, timings,
                                         t0, out, overwrite, prepared.spec, metadata)
    return TrainResult(bundle, metrics, {**metadata, "model": fitted.model_metadata})


def score_matrix(client: Client, model: ModelBundle, X: Any) -> Any:
    """Lazy scores of a dask feature matrix (raw features) by an in-memory bundle: the
    one way a model is applied to the cluster's matrices (test scores of every kind,
    through :meth:`ModelBundle.predict_matrix` and its preprocessing, as ``mlaas
    predict`` and the server apply it).

    The bundle goes to the workers as the result of a task, not as scattered data: if
    the worker holding it dies, Dask makes it again (scattered data would be lost).
    """
    from distributed import wait

    shared = client.submit(_same, model, pure=False)
    wait(shared)
    columns = len(model.classes)
    if model.is_binary:
        return X.map_blocks(_predict_block, shared, drop_axis=1, dtype=np.float32)
    return X.map_blocks(_predict_block, shared, chunks=(X.chunks[0], (columns,)),
                        dtype=np.float32)


def _same(value: Any) -> Any:
    return value


def _predict_block(block: np.ndarray, model: ModelBundle) -> np.ndarray:
    return np.asarray(model.predict_matrix(block), dtype=np.float32)


def persist_scores(client: Client, model: ModelBundle, X: Any,
                   stages: StagePlan | None = None) -> tuple[Any, float]:
    """:func:`score_matrix`, computed and held on the workers: the scores and the
    seconds it took (the ``predict`` stage of metrics.json)."""
    from distributed import futures_of, wait

    from mlaas_dask.cluster.placement import holders

    start = time.perf_counter()
    scores = client.persist(score_matrix(client, model, X))
    wait(futures_of(scores))
    if stages is not None:
        stages.ran("predict", holders(client, futures_of(scores)))
    return scores, time.perf_counter() - start


def checkpoint_folder(out: Path) -> Path:
    """Where a job writing the bundle ``out`` keeps its training checkpoints: a hidden
    folder of its own next to the bundle (like the bundle's own staging folder)."""
    return out.parent / f".{out.name}.checkpoint-{uuid.uuid4().hex[:12]}"


def describe_job(job: Job, prepared: Prepared, stats: MatrixStats,
                 cluster_info: dict[str, Any]) -> dict[str, Any]:
    """metadata.json's entries that do not depend on the model kind (the fitter gives
    ``model``)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("mlaas_dask", "xgboost", "uproot", "awkward", "dask", "distributed",
                    "dask-awkward", "numpy", "isal", "scikit-learn", "torch", "onnx",
                    "onnxruntime", "keras"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    plan, dataset = prepared.plan, prepared.dataset
    return {
        "classes": list(job.dataset.classes),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "features": {"names": plan.spec.feature_names, "count": plan.spec.n_features},
        "dataset": {**dataset.summary(), "cut": job.dataset.cut,
                    "weight_branch": job.dataset.weight_branch,
                    "id_branches": list(plan.id_branches)},
        "data_summary": {
            "events_read": stats["events_read"],
            "events_selected": stats["events_selected"],
            "events_per_class": stats["events_per_class"],
            "nonfinite_inputs": stats["nonfinite_inputs"],
            "weights": stats.get("weights"),
            "read_report": stats.get("read_report"),
        },
        "split": {"train": job.split.train, "validation": job.split.validation,
                  "test": job.split.test, "seed": job.split.seed,
                  "by": list(plan.id_branches) or ["file", "entry"]},
        "reweight": job.reweight,
        "cluster": cluster_info,
        "versions": versions,
    }
