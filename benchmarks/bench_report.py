"""What the evaluation report costs the quick start (README, first line): the wall time of
``mlaas train examples/sample.yaml`` on the 200k-event sample with the report (the
default) and without it (``MLAAS_REPORT=0``), as fresh processes taking turns in the same
run; medians of ``--repeat`` rounds each.

Figures: both medians, ``ratio_with_vs_without_report`` (target <= 1.10) and the
report's own seconds (metrics.json ``seconds.report``).

Usage: python benchmarks/bench_report.py [--repeat 3] [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit

ROOT = Path(__file__).resolve().parent.parent
MLAAS = [sys.executable, "-m", "mlaas_dask"]


def quick_start(folder: Path, events: int) -> Path:
    """The quick start's files in ``folder``: examples/sample.yaml and data/sample/."""
    (folder / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "sample.yaml", folder / "examples" / "sample.yaml")
    subprocess.run([*MLAAS, "sample", "--out", "data/sample", "--events", str(events),
                    "--overwrite"], cwd=folder, check=True, capture_output=True)
    return folder / "examples" / "sample.yaml"


def train_once(job: Path, report: bool) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``mlaas train`` and its metrics.json seconds."""
    env = {**os.environ, "MLAAS_REPORT": "1" if report else "0"}
    start = time.perf_counter()
    subprocess.run([*MLAAS, "train", str(job), "--overwrite", "--quiet"], cwd=job.parent.parent,
                   env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    bundle = job.parent.parent / "bundles" / "sample"
    metrics = json.loads((bundle / "metrics.json").read_text())
    if report != (bundle / "report.html").is_file():
        raise SystemExit(f"report.html {'missing' if report else 'written'} with "
                         f"MLAAS_REPORT={int(report)}")
    return wall, metrics["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        job = quick_start(Path(tmp), args.events)
        walls: dict[bool, list[float]] = {True: [], False: []}
        report_seconds = []
        for _ in range(args.repeat):
            for report in (False, True):
                wall, seconds = train_once(job, report)
                walls[report].append(wall)
                if report:
                    report_seconds.append(seconds.get("report", float("nan")))
    with_report, without = statistics.median(walls[True]), statistics.median(walls[False])
    emit("bench_report", {
        "events": args.events, "repeat": args.repeat,
        "wall_seconds_with_report": round(with_report, 2),
        "wall_seconds_without_report": round(without, 2),
        "ratio_with_vs_without_report": round(with_report / without, 3),
        "target_ratio": 1.10,
        "report_seconds_median": round(statistics.median(report_seconds), 2),
        "walls_with": [round(w, 2) for w in walls[True]],
        "walls_without": [round(w, 2) for w in walls[False]],
    })


if __name__ == "__main__":
    main()
