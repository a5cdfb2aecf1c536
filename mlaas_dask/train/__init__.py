"""Training: a job's dataset on a Dask cluster -> distributed XGBoost -> a model bundle."""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask

from mlaas_dask.bundle import MODEL_FILE
from mlaas_dask.errors import FeatureError, MlaasError


@dataclass
class TrainResult:
    """Where the bundle went and what it scored."""

    bundle: Path
    metrics: dict[str, Any]
    metadata: dict[str, Any]


def train(
    job: Any,
    *,
    cluster: Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
    placement: Any = None,
) -> TrainResult:
    """Train the job's classifier on a Dask cluster and write its model bundle.

    Parameters
    ----------
    job
        A :class:`mlaas_dask.job.Job` (see :func:`mlaas_dask.job.load_job`).
    cluster
        ``"local"``, ``"local:N"``, a scheduler address, or a connected
        :class:`distributed.Client`; defaults to the job's ``cluster``.
    out
        Bundle directory; defaults to the job's ``output.dir``.
    overwrite
        Replace an existing bundle there (never anything that is not a bundle).
    progress
        Show progress bars and boosting rounds.
    log
        Where progress lines go (``print`` by default; ``lambda *a: None`` to silence).
    placement
        Which workers read and which train, overriding the cluster file's ``placement``:
        ``{"read": "cpu", "train": "gpu"}`` (rules: auto, any, cpu, gpu, a resource tag).
    """
    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster import connect, describe

    out = Path(out or job.output)
    _check_target(out, overwrite)  # fail before any work, not after
    t0 = time.perf_counter()
    dataset, spec, plan = _prepare(job, log)
    from mlaas_dask.data.credentials import worker_credentials

    # as_current: xgboost.dask waits on futures through the *default* client; with two
    # clients in one process (a notebook, the tests) that is another one, and it deadlocks
    # no low-level fusion: xgboost and dask-ml submit the same arrays several times, and
    # differently fused graphs under one key make the scheduler warn of deadlocks
    with connect(cluster if cluster is not None else job.cluster) as client, \
            client.as_current(), worker_credentials(client), \
            dask.config.set({"optimization.fuse.active": False}):
        log(f"Dask dashboard: {client.dashboard_link}")
        cluster_info = describe(client)
        return _run(job, client, dataset, spec, plan, out, overwrite, progress, log, t0,
                    cluster_info, placement=placement)


def _prepare(job: Any, log: Any) -> tuple[Any, Any, Any]:
    from mlaas_dask.data.dataset import Dataset, Group
    from mlaas_dask.train.matrix import PartitionPlan, cut_branches, sample_multiplicities

    config = job.dataset
    spec = job.features
    groups = [Group(g.name, tuple(g.files), config.label_index(g), g.weight)
              for g in config.groups]
    needed = [*spec.branches(), *cut_branches(config.cut)]
    if config.weight_branch:
        needed.append(config.weight_branch)
    if config.label_branch:
        needed.append(config.label_branch)
    dataset = Dataset(groups, config.tree, list(dict.fromkeys(needed)), config.step_size,
                      optional_branches=config.id_branches, policy=config.policy,
                      cache=config.feature_cache)
    for item in dataset.unopened:
        log(f"Skipping {item['file']} (dataset.on_error: skip): {item['error']}")
    spec.check_schema(dataset.jagged, where=f"tree {config.tree!r} of {dataset.files[0].path}")
    if config.weight_branch and dataset.jagged[config.weight_branch]:
        raise FeatureError(f"The weight branch {config.weight_branch!r} is a list per event; "
                           "dataset.weight_branch needs one number per event.")
    if not spec.is_resolved:
        spec = spec.resolve(sample_multiplicities(dataset, spec))
        sized = {n: c.n for n, c in spec.collections.items()}
        log(f"Estimated objects per event from a sample: {sized}")
    ids = tuple(dataset.optional_present) if set(dataset.optional_present) == set(
        config.id_branches) else ()
    plan = PartitionPlan(
        spec=spec, cut=config.cut, weight_branch=config.weight_branch, id_branches=ids,
        fractions=(job.split.train, job.split.validation), seed=job.split.seed,
        group_weights=tuple(g.weight for g in groups), labels=tuple(g.label for g in groups),
        n_classes=len(config.classes), label_branch=config.label_branch,
    )
    log(f"Dataset: {len(dataset.files)} files, {dataset.entries:,} events, "
        f"{len(dataset.partitions)} partitions; reading {len(dataset.branches)} branches; "
        f"{spec.n_features} features.")
    return dataset, spec, plan


def _run(job: Any, client: Any, dataset: Any, spec: Any, plan: Any, out: Path,
         overwrite: bool, progress: bool, log: Any, t0: float,
         cluster_info: dict[str, Any], placement: Any = None) -> TrainResult:
    from distributed import futures_of, wait

    from mlaas_dask.cluster.placement import StagePlan, holders
    from mlaas_dask.train import metrics as metrics_module
    from mlaas_dask.train.finish import evaluate_and_write
    from mlaas_dask.train.fitted import Fitted
    from mlaas_dask.train.matrix import build_matrices
    from mlaas_dask.train.xgb import balanced_weights, predict, resolve_device, xgboost_params

    classes = job.dataset.classes
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log("Reading events and computing features:")
    stages = StagePlan.for_client(client, placement)
    matrices = build_matrices(client, dataset, plan, progress=progress,
                              workers=stages.read_workers)
    stages.ran("read_features", holders(client, matrices.futures))
    from mlaas_dask.train.matrix import format_report

    for line in format_report(matrices.stats["read_report"]):
        log(line)
    # keep the partition results in memory before xgboost asks for them
    timings["read_features"] = time.perf_counter() - start
    stats = matrices.stats
    if job.model.kind == "sklearn":
        return _run_sklearn(job, client, dataset, plan, matrices, out, overwrite, log, t0,
                            timings, cluster_info)
    w_train = matrices.w["train"]
    if job.model.balance_classes:
        w_train = balanced_weights(matrices.y["train"], w_train,
                                   stats["weight_per_class"]["train"])
    device = resolve_device(client, job.model.device)
    params = xgboost_params(len(classes), device, job.model.params)
    log(f"Training XGBoost on {stats['events_per_class']['train']} events per class "
        f"(device={device}, up to {job.model.num_boost_round} rounds):")
    start = time.perf_counter()
    booster, history, params = _train_xgboost(
        job, client, stages, device, matrices, {**matrices.w, "train": w_train}, params, out,
        log if progress else None, log)
    timings["train"] = time.perf_counter() - start
    stages.ran("train", history.get("workers", []))
    if stages.train_threads:  # predict on every worker again, with the worker's threads
        threads = [w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()]
        booster.set_param({"nthread": max(1, min(threads))})
    start = time.perf_counter()
    test_scores = client.persist(predict(client, booster, matrices.X["test"]))
    wait(futures_of(test_scores))
    stages.ran("predict", holders(client, futures_of(test_scores)))
    scores, y_test, w_test = client.compute(
        [test_scores, matrices.y["test"], matrices.w["test"]], sync=True)
    timings["predict"] = time.perf_counter() - start
    metadata = _metadata(job, dataset, plan, stats, classes, params, cluster_info, device)
    metadata["placement"] = stages.record()
    fitted = Fitted(
        model_file=MODEL_FILE, model_bytes=bytes(booster.save_raw("ubj")),
        test_scores=test_scores, model_metadata=metadata.pop("model"),
        metrics={"best_iteration": history["best_iteration"], "rounds": history["rounds"],
                 "feature_importance": metrics_module.importance(booster,
                                                                 spec.feature_names),
                 "history": history["history"], "resumes": history["resumes"]},
    )
    bundle, metrics = evaluate_and_write(client, fitted, matrices, classes, timings, t0, out,
                                         overwrite, spec, metadata)
    return TrainResult(bundle, metrics, {**metadata, "model": fitted.model_metadata})


def _train_xgboost(job: Any, client: Any, stages: Any, device: str, matrices: Any,
                   w: dict[str, Any], params: dict[str, Any], out: Path, progress: Any,
                   log: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """XGBoost with checkpoints in a hidden folder next to the bundle (removed at the
    end, whatever happens), resumed after lost workers up to ``model.max_retries``."""
    from mlaas_dask.train.faults import Retries
    from mlaas_dask.train.xgb import Boosting, CheckpointStore, train_resumable

    model = job.model
    boosting = Boosting(params, model.num_boost_round, model.early_stopping_rounds,
                        checkpoint_every=model.checkpoint_every,
                        collective_timeout=model.collective_timeout, progress=progress)
    store = CheckpointStore(checkpoint_folder(out))
    retries = Retries(client, "XGBoost training", model.max_retries, log)
    try:
        return train_resumable(client, stages, device, matrices.X, matrices.y, w, boosting,
                               store, retries, log)
    finally:
        store.remove()


def checkpoint_folder(out: Path) -> Path:
    """Where a job writing the bundle ``out`` keeps its training checkpoints: a hidden
    folder of its own next to the bundle (like the bundle's own staging folder)."""
    import uuid

    return out.parent / f".{out.name}.checkpoint-{uuid.uuid4().hex[:12]}"


def _run_sklearn(job: Any, client: Any, dataset: Any, plan: Any, matrices: Any, out: Path,
                 overwrite: bool, log: Any, t0: float, timings: dict[str, float],
                 cluster_info: dict[str, Any]) -> TrainResult:
    from mlaas_dask.train.finish import evaluate_and_write
    from mlaas_dask.train.sklearn import fit_sklearn

    classes = job.dataset.classes
    log(f"Training {job.model.estimator_class or job.model.file} on "
        f"{matrices.stats['events_per_class']['train']} events per class:")
    start = time.perf_counter()
    fitted = fit_sklearn(client, job, matrices, classes, log)
    timings["train"] = time.perf_counter() - start
    metadata = _metadata(job, dataset, plan, matrices.stats, classes, {}, cluster_info, "cpu")
    bundle, metrics = evaluate_and_write(client, fitted, matrices, classes, timings, t0, out,
                                         overwrite, plan.spec, metadata)
    return TrainResult(bundle, metrics, {**metadata, "model": fitted.model_metadata})


def _metadata(job: Any, dataset: Any, plan: Any, stats: dict[str, Any], classes: list[str],
              params: dict[str, Any], cluster_info: dict[str, Any], device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("mlaas_dask", "xgboost", "uproot", "awkward", "dask", "distributed",
                    "dask-awkward", "numpy", "isal"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "classes": classes,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": {"kind": "xgboost", "file": MODEL_FILE, "params": params,
                  "device": device},
        "features": {"names": plan.spec.feature_names, "count": plan.spec.n_features},
        "dataset": {**dataset.summary(), "cut": job.dataset.cut,
                    "weight_branch": job.dataset.weight_branch,
                    "id_branches": list(plan.id_branches)},
        "data_summary": {
            "events_read": stats["events_read"],
            "events_selected": stats["events_selected"],
            "events_per_class": stats["events_per_class"],
            "nonfinite_inputs": stats["nonfinite_inputs"],
            "read_report": stats.get("read_report"),
        },
        "split": {"train": job.split.train, "validation": job.split.validation,
                  "test": job.split.test, "seed": job.split.seed,
                  "by": list(plan.id_branches) or ["file", "entry"]},
        "cluster": cluster_info,
        "versions": versions,
    }


__all__ = ["MlaasError", "TrainResult", "train"]
