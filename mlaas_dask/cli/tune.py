"""``mlaas tune JOB.yaml``: hyperparameter search on the Dask cluster."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
The job file needs a 'tune:' section, e.g.

  tune:
    trials: 12               # configurations to try, in parallel on the cluster
    method: random           # or grid (lists only)
    sample_size: 200000      # training events per trial (a bounded sample)
    space:
      max_depth: [3, 4, 6, 8]
      eta: {low: 0.02, high: 0.3, log: true}
      min_child_weight: {low: 1, high: 20, int: true}

examples:
  mlaas tune examples/sample.yaml --out bundles/tuned
  mlaas tune job.yaml --cluster tcp://scheduler:8786 --trials 32

The best configuration is trained on all the data and written as a normal bundle, with
the table of all trials in tune.md and tune.json.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune", help="search hyperparameters, then train the best model",
        description="Try parameter sets from the job's tune.space in parallel on the Dask "
                    "cluster, each on a bounded sample, and train the best one on all data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", help="the YAML job file (with a tune: section)")
    parser.add_argument("--cluster", default=None,
                        help="local, local:N, a cluster file's NAME[:N] or PATH, or "
                             "tcp://host:port (overrides the job; see 'mlaas cluster')")
    parser.add_argument("--out", default=None, help="bundle directory")
    parser.add_argument("--trials", type=int, default=None,
                        help="override tune.trials")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing bundle at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mlaas_dask.job import load_job
    from mlaas_dask.train.tune import tune

    job = load_job(args.job)
    if args.trials is not None and job.tune is not None:
        job.tune = dataclasses.replace(job.tune, trials=args.trials)
    result = tune(job, cluster=args.cluster, out=args.out, overwrite=args.overwrite,
                  progress=not args.quiet)
    if args.quiet:
        from mlaas_dask.train.tune import table_markdown

        print(table_markdown(result.trials), end="")
    print(f"Best trial: {result.best['params']}  validation AUC {result.best['auc']:.4f}")
    print(f"Test AUC of the final model: {result.metrics['auc']:.4f}")
    print(f"Model bundle written to {result.bundle} (trials in tune.md)")
    return 0
