"""``mlaas bench``: the same job on several clusters, side by side.

For every cluster (``local:1``, ``local:2``, ``local-gpu``, ``slurm:4``, a file, an
address...) the job is trained from scratch and timed per stage -- cluster start-up,
read+features, training, prediction of the test split -- with events per second for each
stage and the test AUC. Writes ``bench.json`` (everything), ``bench.md`` (the table) and
``bench.png`` (bar charts of wall time and events/s per stage, and the AUC): the comparison
the MLaaS4HEP paper made by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlaas_dask.errors import MlaasError, first_line

if TYPE_CHECKING:
    from distributed import Client

    from mlaas_dask.cluster import ClusterSpec
    from mlaas_dask.contracts import BenchRow
    from mlaas_dask.job import Job

logger = logging.getLogger(__name__)

STAGES = (("read_features", "read+features"), ("train", "train"), ("predict", "predict"))


def bench_one(job: Job, cluster: ClusterSpec | Client, out: Path) -> BenchRow:
    """Train ``job`` on one cluster; a row of figures (or the error that stopped it)."""
    from mlaas_dask.cluster import describe
    from mlaas_dask.cluster.session import cluster_session
    from mlaas_dask.logs import quiet
    from mlaas_dask.train.pipeline import prepare, run

    row: dict[str, Any] = {"cluster": str(cluster)}
    start = time.perf_counter()
    try:
        with cluster_session(cluster) as client:
            row["startup_s"] = time.perf_counter() - start
            info = describe(client)
            with quiet():
                result = run(job, client, prepare(job), out, overwrite=True, progress=False)
    except (MlaasError, OSError, TimeoutError) as err:
        row["error"] = first_line(err)
        logger.info(f"  {cluster}: failed: {row['error']}")
        return cast("BenchRow", row)
    metrics, metadata = result.metrics, result.metadata
    seconds = metrics["seconds"]
    per_class = metrics["events_per_class"]
    events = {
        "read_features": metadata["data_summary"]["events_read"],
        "train": sum(per_class["train"]),
        "predict": sum(per_class["test"]),
    }
    row.update(
        workers=info["workers"],
        threads=info["threads"],
        gpu_workers=sum(1 for w in info["worker_list"] if w["resources"].get("GPU")),
        device=metadata["model"].get("device"),
        auc=metrics.get("auc"),
        rounds=metrics.get("rounds"),
        total_s=seconds["total"] + row["startup_s"],
        placement={stage: record.get("workers")
                   for stage, record in metadata.get("placement", {}).items()},
    )
    for stage, _ in STAGES:
        row[f"{stage}_s"] = seconds.get(stage)
        row[f"{stage}_events"] = events[stage]
        row[f"{stage}_events_per_s"] = (events[stage] / seconds[stage]
                                        if seconds.get(stage) else None)
    logger.info(f"  {cluster}: AUC {_num(row['auc'], 4)}, read+features "
        f"{_num(row['read_features_s'])} s, train {_num(row['train_s'])} s, predict "
        f"{_num(row['predict_s'])} s")
    return cast("BenchRow", row)


def run_bench(job: Job, clusters: list[ClusterSpec | Client], out: str | Path, *,
              keep_bundles: bool = False) -> dict[str, Any]:
    """Run ``job`` on every cluster in turn and write bench.json, bench.md, bench.png."""
    from importlib.metadata import version

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="mlaas-bench-") as scratch:
        for index, cluster in enumerate(clusters):
            logger.info(f"[{index + 1}/{len(clusters)}] {cluster}")
            slug = re.sub(r"[^\w.-]+", "_", str(cluster)).strip("_") or f"cluster{index}"
            bundle = (out / "bundles" / slug) if keep_bundles else Path(scratch) / slug
            rows.append(bench_one(job, cluster, bundle))
    if all("error" in row for row in rows):
        raise MlaasError("Every cluster failed: " + "; ".join(
            f"{row['cluster']}: {row['error']}" for row in rows))
    report: dict[str, Any] = {
        "job": str(job.source) if getattr(job, "source", None) else None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": {p: version(p) for p in ("mlaas_dask", "xgboost", "dask", "distributed")},
        "rows": rows,
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(rows))
    (out / "bench.png").write_bytes(chart(rows))
    report["files"] = [str(out / name) for name in ("bench.json", "bench.md", "bench.png")]
    return report


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _rate(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def markdown(rows: list[BenchRow]) -> str:
    """The comparison table (seconds and events/s per stage, AUC)."""
    head = ("| cluster | workers (GPU) | device | start-up s | read+features s | events/s | "
            "train s | events/s | predict s | events/s | total s | AUC |")
    columns = head.count("|") - 1
    lines = [head, "|" + "|".join(["---"] * columns) + "|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['cluster']} | failed: {row['error']} |" + " |" * (columns - 2))
            continue
        lines.append(
            f"| {row['cluster']} | {row['workers']} ({row['gpu_workers']}) | {row['device']} | "
            f"{_num(row['startup_s'])} | {_num(row['read_features_s'])} | "
            f"{_rate(row['read_features_events_per_s'])} | {_num(row['train_s'])} | "
            f"{_rate(row['train_events_per_s'])} | {_num(row['predict_s'], 2)} | "
            f"{_rate(row['predict_events_per_s'])} | {_num(row['total_s'])} | "
            f"{_num(row['auc'], 4)} |")
    note = ("\nevents/s: events read per second (read+features), training-split events per "
            "second of training (all rounds), test-split events scored per second (predict).\n")
    return "\n".join(lines) + "\n" + note


def chart(rows: list[BenchRow]) -> bytes:
    """PNG: wall time per stage, events/s per stage (log scale), AUC, per cluster."""
    import io

    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    done = [row for row in rows if "error" not in row]
    names = [row["cluster"] for row in done]
    x = np.arange(len(done))
    width = 0.8 / len(STAGES)
    fig = Figure(figsize=(15, 4.5), dpi=100)
    axes = fig.subplots(1, 3)
    for offset, (stage, label) in enumerate(STAGES):
        seconds = [row.get(f"{stage}_s") or 0 for row in done]
        rates = [row.get(f"{stage}_events_per_s") or 0 for row in done]
        axes[0].bar(x + (offset - 1) * width, seconds, width, label=label)
        axes[1].bar(x + (offset - 1) * width, rates, width, label=label)
    axes[0].set_ylabel("wall time [s]")
    axes[0].set_title("wall time per stage")
    axes[1].set_ylabel("events / s")
    axes[1].set_yscale("log")
    axes[1].set_title("throughput per stage")
    aucs = [row["auc"] or 0 for row in done]
    axes[2].bar(x, aucs, 0.5, color="tab:gray")
    low = min(aucs) if aucs else 0.5
    axes[2].set_ylim(max(0.0, low - 0.05), min(1.0, max(aucs or [1]) + 0.02))
    axes[2].set_title("test AUC")
    for index, value in enumerate(aucs):
        axes[2].text(index, value, f"{value:.4f}", ha="center", va="bottom", fontsize=9)
    for axis in axes:
        axis.set_xticks(x, names, rotation=20, ha="right")
    axes[0].legend()
    failed = [row["cluster"] for row in rows if "error" in row]
    if failed:
        fig.suptitle(f"failed to run: {', '.join(failed)} (see bench.md)", fontsize=9,
                     x=0.99, ha="right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
