"""Distributed scoring of ROOT files with a model bundle.

Every partition is scored on the cluster through the bundle's FeatureSpec (the training
code); the per-event scores come back with the event ids and are written as

- ``scores.parquet``: file, entry, the id branches, one score column per output;
- ``<file stem>.scores.root``: one per input file, a tree of the same name with the score
  branches, entry for entry -- usable as a friend tree (``tree.AddFriend``).

The job's selection cut is not applied: a friend tree must line up with every entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.data.rootio import write_ttree
from mlaas_dask.errors import MlaasError

SCORES_FILE = "scores.parquet"


@dataclass
class PredictResult:
    """What :func:`predict_files` wrote."""

    out: Path
    parquet: Path
    friends: list[Path]
    events: int


def predict_files(
    bundle: str | os.PathLike[str] | ModelBundle,
    files: list[str],
    out: str | os.PathLike[str],
    *,
    tree: str | None = None,
    cluster: Any = "local",
    step_size: int = 500_000,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
    policy: Any = None,
) -> PredictResult:
    """Score ROOT files with a bundle on a Dask cluster and write the scores.

    Parameters
    ----------
    bundle
        Bundle directory, ``.tar.gz``, or a loaded :class:`ModelBundle`.
    files
        Paths, globs or URLs.
    out
        Output directory (refused if it exists and is not empty, unless ``overwrite``;
        then only the files this function writes are replaced).
    tree
        Tree name; defaults to the tree the model was trained on.
    policy
        A :class:`~mlaas_dask.data.remote.ReadPolicy` (redirectors for /store/ names,
        timeout, retries). Every event must be scored, so ``on_error`` is always ``fail``.
    """
    from mlaas_dask.cluster import connect
    from mlaas_dask.data.dataset import Dataset, Group

    model = bundle if isinstance(bundle, ModelBundle) else ModelBundle.load(bundle)
    out = Path(out)
    _check_out(out, overwrite)
    trained_on = model.metadata.get("dataset", {})
    tree = tree or trained_on.get("tree") or "Events"
    ids = list(trained_on.get("id_branches") or ["run", "luminosityBlock", "event"])
    from dataclasses import replace

    from mlaas_dask.data.credentials import worker_credentials
    from mlaas_dask.data.remote import ReadPolicy

    policy = replace(policy or ReadPolicy(), on_error="fail")
    dataset = Dataset([Group("input", tuple(files))], tree, model.spec.branches(), step_size,
                      optional_branches=ids, policy=policy)
    model.spec.check_schema(dataset.jagged, where=f"tree {tree!r} of {dataset.files[0].path}")
    log(f"Scoring {dataset.entries:,} events in {len(dataset.files)} files "
        f"({len(dataset.partitions)} partitions) with {model.path}")
    with connect(cluster) as client, worker_credentials(client):
        log(f"Dask dashboard: {client.dashboard_link}")
        results = _score(client, dataset, model, progress)
    return _write(out, dataset, model, results, overwrite)


def _score_partition(events: Any, model: ModelBundle, ids: list[str]) -> dict[str, np.ndarray]:
    scores = model.predict_events(events)
    result = {name: np.asarray(events[name]) for name in ids}
    if scores.ndim == 1:
        result["score"] = scores.astype(np.float32)
    else:
        for index, name in enumerate(model.output_names):
            result[name] = scores[:, index].astype(np.float32)
    return result


def _read_and_score(partition: Any, source: Any, model: ModelBundle,
                    ids: list[str]) -> dict[str, np.ndarray]:
    events, _ = source.read(partition.start, partition.stop)
    return _score_partition(events, model, ids)


def _score(client: Any, dataset: Any, model: ModelBundle, progress: bool) -> list[dict[str, Any]]:
    from dask import delayed
    from distributed import progress as progress_bar

    model.share_code(client)
    shared = client.scatter(model, broadcast=True)
    # each task reads its partition itself: timeouts, retries, redirector fallback, and
    # credentials from the worker's environment (never in the task graph)
    sources = dataset.sources()
    task = delayed(_read_and_score, pure=True)
    futures = client.compute([task(p, sources[p.file], shared, dataset.optional_present)
                              for p in dataset.partitions])
    if progress:
        progress_bar(futures)
        print()
    return client.gather(futures)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MlaasError(
            f"Output {out} already exists and is not empty. Choose another --out, or pass "
            "--overwrite to replace the score files in it."
        )
    if out.exists() and not out.is_dir():
        raise MlaasError(f"Output {out} is a file; --out must be a directory.")


def _write(out: Path, dataset: Any, model: ModelBundle, results: list[dict[str, Any]],
           overwrite: bool) -> PredictResult:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import uproot

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        columns: dict[str, list[np.ndarray]] = {"file": [], "entry": []}
        per_file: dict[int, list[dict[str, np.ndarray]]] = {}
        for partition, result in zip(dataset.partitions, results, strict=True):
            per_file.setdefault(partition.file, []).append(result)
            columns["file"].append(np.full(partition.entries, partition.file, np.int32))
            columns["entry"].append(np.arange(partition.start, partition.stop, dtype=np.int64))
            for name, values in result.items():
                columns.setdefault(name, []).append(values)
        table = pa.table({name: np.concatenate(parts) for name, parts in columns.items()})
        paths = [info.path for info in dataset.files]
        table = table.replace_schema_metadata({"files": "\n".join(paths),
                                               "bundle": str(model.path)})
        pq.write_table(table, tmp / SCORES_FILE)
        friends = []
        stems = [Path(p).name.removesuffix(".root") for p in paths]
        for index, parts in sorted(per_file.items()):
            stem = stems[index] if stems.count(stems[index]) == 1 else f"{stems[index]}-{index}"
            name = f"{stem}.scores.root"
            with uproot.recreate(tmp / name) as handle:
                write_ttree(handle, dataset.tree, {
                    key: np.concatenate([p[key] for p in parts])
                    for key in model.output_names
                }, title=f"scores of {paths[index]}")
            friends.append(out / name)
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PredictResult(out, out / SCORES_FILE, friends, sum(len(r[model.output_names[0]])
                                                               for r in results))
