"""``mlaas train JOB.yaml``: distributed XGBoost on a Dask cluster -> a model bundle."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  mlaas train examples/sample.yaml --out bundles/demo
  mlaas train examples/cms-hep-tutorial.yaml --cluster local:2
  mlaas train job.yaml --cluster tcp://scheduler:8786 --overwrite

The job file (YAML) has the sections dataset, features, model, split, output and cluster;
see examples/ and 'mlaas inspect FILE' for a features block. The bundle holds model.ubj,
features.json, metrics.json (test AUC, events per class, seconds per stage),
metadata.json, roc.png and scores.png. It appears only when complete: Ctrl-C leaves none.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train a classifier from a YAML job file",
        description="Read ROOT files lazily on a Dask cluster, build features with the "
                    "job's FeatureSpec, train distributed XGBoost with early stopping and "
                    "write a model bundle.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", help="the YAML job file")
    parser.add_argument("--cluster", default=None,
                        help="where Dask runs: local (default: one worker per core), "
                             "local:N, or a scheduler address tcp://host:port "
                             "(overrides the job's 'cluster')")
    parser.add_argument("--out", default=None,
                        help="bundle directory (overrides the job's output.dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing bundle at --out (never other data)")
    parser.add_argument("--archive", action="store_true",
                        help="also write the bundle as <out>.tar.gz (for upload to "
                             "'mlaas serve' or copying elsewhere)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.job import load_job
    from mlaas_dask.train import train

    job = load_job(args.job)
    log = (lambda *a, **k: None) if args.quiet else print
    result = train(job, cluster=args.cluster, out=args.out, overwrite=args.overwrite,
                   progress=not args.quiet, log=log)
    metrics = result.metrics
    seconds = metrics["seconds"]
    print(f"Test AUC: {metrics['auc']:.4f}  ({metrics['events']:,} test events; "
          f"best round {metrics['rounds']})")
    print(f"Time: read+features {seconds['read_features']:.1f} s, train "
          f"{seconds['train']:.1f} s, evaluate {seconds['evaluate']:.1f} s, total "
          f"{seconds['total']:.1f} s")
    print(f"Model bundle written to {result.bundle}")
    if args.archive:
        from mlaas_dask.bundle import export_archive

        archive = export_archive(result.bundle, f"{result.bundle}.tar.gz")
        print(f"Archive written to {archive}")
    return 0
