"""Training: a job's dataset on a Dask cluster -> distributed XGBoost -> a model bundle."""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """
    from mlaas_dask.bundle import _check_target
    from mlaas_dask.cluster import connect, describe

    out = Path(out or job.output)
    _check_target(out, overwrite)  # fail before any work, not after
    t0 = time.perf_counter()
    dataset, spec, plan = _prepare(job, log)
    with connect(cluster if cluster is not None else job.cluster) as client:
        log(f"Dask dashboard: {client.dashboard_link}")
        cluster_info = describe(client)
        return _run(job, client, dataset, spec, plan, out, overwrite, progress, log, t0,
                    cluster_info)


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
    dataset = Dataset(groups, config.tree, list(dict.fromkeys(needed)), config.step_size,
                      optional_branches=config.id_branches)
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
    )
    log(f"Dataset: {len(dataset.files)} files, {dataset.entries:,} events, "
        f"{len(dataset.partitions)} partitions; reading {len(dataset.branches)} branches; "
        f"{spec.n_features} features.")
    return dataset, spec, plan


def _run(job: Any, client: Any, dataset: Any, spec: Any, plan: Any, out: Path,
         overwrite: bool, progress: bool, log: Any, t0: float,
         cluster_info: dict[str, Any]) -> TrainResult:
    from mlaas_dask.bundle import write_bundle
    from mlaas_dask.train import metrics as metrics_module
    from mlaas_dask.train.matrix import build_matrices
    from mlaas_dask.train.xgb import (
        balanced_weights,
        predict,
        resolve_device,
        train_booster,
        xgboost_params,
    )

    classes = job.dataset.classes
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log("Reading events and computing features:")
    matrices = build_matrices(client, dataset, plan, progress=progress)
    # keep the partition results in memory before xgboost asks for them
    timings["read_features"] = time.perf_counter() - start
    stats = matrices.stats
    w_train = matrices.w["train"]
    if job.model.balance_classes:
        w_train = balanced_weights(matrices.y["train"], w_train,
                                   stats["weight_per_class"]["train"])
    device = resolve_device(client, job.model.device)
    params = xgboost_params(len(classes), device, job.model.params)
    log(f"Training XGBoost on {stats['events_per_class']['train']} events per class "
        f"(device={device}, up to {job.model.num_boost_round} rounds):")
    start = time.perf_counter()
    booster, history = train_booster(
        client, matrices.X, matrices.y, {**matrices.w, "train": w_train}, params,
        job.model.num_boost_round, job.model.early_stopping_rounds,
        progress=log if progress else None,
    )
    timings["train"] = time.perf_counter() - start
    start = time.perf_counter()
    scores, y_test, w_test = client.compute(
        [predict(client, booster, matrices.X["test"]), matrices.y["test"],
         matrices.w["test"]], sync=True)
    del matrices
    test = metrics_module.evaluate(y_test, scores, w_test, classes)
    plots = {
        "roc.png": metrics_module.roc_png(y_test, scores, classes, test.get("auc")),
        "scores.png": metrics_module.scores_png(y_test, scores, w_test, classes),
    }
    timings["evaluate"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0
    metrics = {
        "auc": test.get("auc"),
        **{k: v for k, v in test.items() if k != "auc"},
        "classes": classes,
        "events_per_class": stats["events_per_class"],
        "best_iteration": history["best_iteration"],
        "rounds": history["rounds"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "events_per_second_read_features": round(stats["events_read"]
                                                 / max(timings["read_features"], 1e-9)),
        "feature_importance": metrics_module.importance(booster, spec.feature_names),
        "history": history["history"],
    }
    metadata = _metadata(job, dataset, plan, stats, classes, params, cluster_info, device)
    bundle = write_bundle(out, model=bytes(booster.save_raw("ubj")), spec=spec,
                          metadata=metadata, metrics=metrics, extra_files=plots,
                          overwrite=overwrite)
    return TrainResult(bundle, metrics, metadata)


def _metadata(job: Any, dataset: Any, plan: Any, stats: dict[str, Any], classes: list[str],
              params: dict[str, Any], cluster_info: dict[str, Any], device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("mlaas_dask", "xgboost", "uproot", "awkward", "dask", "distributed",
                    "dask-awkward", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "classes": classes,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": {"kind": "xgboost", "file": "model.ubj", "params": params,
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
        },
        "split": {"train": job.split.train, "validation": job.split.validation,
                  "test": job.split.test, "seed": job.split.seed,
                  "by": list(plan.id_branches) or ["file", "entry"]},
        "cluster": cluster_info,
        "versions": versions,
    }


__all__ = ["MlaasError", "TrainResult", "train"]
