"""``mlaas train JOB.yaml``: distributed XGBoost on a Dask cluster -> a model bundle."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlaas_dask.contracts import Metrics

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
    parser.add_argument("job", nargs="?", help="the YAML job file")
    parser.add_argument("--cluster", default=None,
                        help="where Dask runs: local (default: one worker per core), "
                             "local:N, a cluster file's NAME (clusters/NAME.yaml: local-gpu, "
                             "slurm, htcondor, pbs...; NAME:N for N workers or jobs) or "
                             "PATH, or a scheduler address tcp://host:port (overrides the "
                             "job's 'cluster'; see 'mlaas cluster')")
    parser.add_argument("--out", default=None,
                        help="bundle directory (overrides the job's output.dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing bundle at --out (never other data)")
    parser.add_argument("--archive", action="store_true",
                        help="also write the bundle as <out>.tar.gz (for upload to "
                             "'mlaas serve' or copying elsewhere)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    mlaas4hep = parser.add_argument_group(
        "MLaaS4HEP jobs", "run an MLaaS4HEP job (params.json, files.txt, labels.txt) "
        "instead of a job file; --print-job shows the equivalent YAML")
    mlaas4hep.add_argument("--from-mlaas4hep", metavar="PARAMS_JSON",
                           help="MLaaS4HEP params.json")
    mlaas4hep.add_argument("--files", help="files.txt (one ROOT file per line)")
    mlaas4hep.add_argument("--labels", help="labels.txt (one label per file), a comma "
                                           "list, or the name of a label branch")
    mlaas4hep.add_argument("--model", help="MLaaS4HEP model file defining model()")
    mlaas4hep.add_argument("--preproc", help="MLaaS4HEP preproc.json")
    mlaas4hep.add_argument("--print-job", action="store_true",
                           help="print the equivalent job YAML and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.train import train

    job = _job(args)
    if job is None:
        return 0
    result = train(job, cluster=args.cluster, out=args.out, overwrite=args.overwrite,
                   progress=not args.quiet)
    metrics = result.metrics
    seconds = metrics["seconds"]
    print(f"Test AUC: {metrics['auc']:.4f}  ({metrics['events']:,} test events; "
          f"{_how_fitted(metrics)})")
    print("Time: " + ", ".join(f"{label} {seconds[key]:.1f} s" for key, label in (
        ("read_features", "read+features"), ("train", "train"), ("predict", "predict"),
        ("evaluate", "evaluate"),
        ("total", "total")) if key in seconds))
    print(f"Model bundle written to {result.bundle}")
    if args.archive:
        from mlaas_dask.bundle import export_archive

        archive = export_archive(result.bundle, f"{result.bundle}.tar.gz")
        print(f"Archive written to {archive}")
    return 0


def _job(args: argparse.Namespace) -> Any:
    from mlaas_dask.errors import ConfigError
    from mlaas_dask.job import load_job

    if not args.from_mlaas4hep:
        if not args.job:
            raise ConfigError("give a job file (mlaas train JOB.yaml) or an MLaaS4HEP job "
                              "(--from-mlaas4hep params.json --files files.txt --labels "
                              "labels.txt); see mlaas train --help.")
        return load_job(args.job)
    if args.job:
        raise ConfigError("give either a job file or --from-mlaas4hep, not both.")
    if not args.files or not args.labels:
        raise ConfigError("--from-mlaas4hep needs --files and --labels, as MLaaS4HEP's "
                          "workflow does.")
    from pathlib import Path

    import yaml

    from mlaas_dask.config import Validator
    from mlaas_dask.job import job_from_dict
    from mlaas_dask.mlaas4hep import import_job

    imported = import_job(args.from_mlaas4hep, args.files, args.labels, args.model,
                          args.preproc)
    for key, why in imported.unmapped.items():
        print(f"MLaaS4HEP {key}: no equivalent ({why})")
    for note in imported.notes:
        print(f"note: {note}")
    if args.print_job:
        print(yaml.safe_dump(imported.job, sort_keys=False), end="")
        return None
    return job_from_dict(imported.job, Validator(f"MLaaS4HEP job {args.from_mlaas4hep}"),
                         base=Path.cwd())


def _how_fitted(metrics: Metrics) -> str:
    """XGBoost's best round, or how a scikit-learn model was fitted."""
    if "rounds" in metrics:
        return f"best round {metrics['rounds']}"
    if "best_epoch" in metrics:  # a neural network
        return f"best epoch {metrics.get('best_epoch')} of {metrics.get('epochs')}"
    if metrics.get("fit") == "incremental":
        return f"{metrics.get('epochs')} epochs of partial_fit over {metrics.get('blocks')} blocks"
    if metrics.get("fit") == "sample":
        return f"fitted on a sample of {metrics.get('sample_events'):,} events"
    return f"fit: {metrics.get('fit', 'unknown')}"
