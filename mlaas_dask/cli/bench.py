"""``mlaas bench JOB.yaml --clusters A,B,...``: the same job on several clusters, compared."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  mlaas bench examples/sample.yaml --clusters local:1,local:2 --out bench/
  mlaas bench job.yaml --clusters local:2,local-gpu,slurm:4 --out bench/

Each cluster trains the job from scratch. Writes bench.md (table), bench.json (all figures)
and bench.png (wall time and events/s per stage: read+features, train, predict; and the
test AUC). A cluster that cannot start (e.g. local-gpu without a GPU) gets a 'failed' row.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="train one job on several clusters and compare them",
        description="Run the same job on several resource configurations and write a "
                    "comparison table (Markdown, JSON) and bar charts (PNG).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", help="the YAML job file")
    parser.add_argument("--clusters", required=True,
                        help="comma-separated clusters: NAME, NAME:N, PATH or tcp://host:port "
                             "(e.g. local:1,local:2,local-gpu)")
    parser.add_argument("--out", default="bench", help="output folder (default: bench)")
    parser.add_argument("--keep-bundles", action="store_true",
                        help="keep each cluster's model bundle under OUT/bundles/")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.bench import run_bench
    from mlaas_dask.errors import ConfigError
    from mlaas_dask.job import load_job

    clusters = [c.strip() for c in args.clusters.split(",") if c.strip()]
    if not clusters:
        raise ConfigError("--clusters is empty; name at least one, e.g. --clusters local:1,local:2")
    job = load_job(args.job)
    report = run_bench(job, clusters, args.out, keep_bundles=args.keep_bundles)
    from pathlib import Path

    print(Path(report["files"][1]).read_text(), end="")
    print("Written: " + ", ".join(report["files"]))
    return 0
