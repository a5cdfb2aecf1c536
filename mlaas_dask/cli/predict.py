"""``mlaas predict BUNDLE FILES... --out DIR``: distributed scoring of ROOT files."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  mlaas predict bundles/demo data/sample/*.root --out scores/
  mlaas predict bundles/demo.tar.gz 'root://eos.example//store/x.root' --out scores/
  mlaas predict bundles/demo /store/mc/x.root --out scores/ \
      --redirector root://xrootd-cms.infn.it/ --redirector root://cms-xrd-global.cern.ch/

Writes scores.parquet (file, entry, run/luminosityBlock/event when present, score) and
one <stem>.scores.root per input file whose tree lines up entry for entry with the input:
  events->AddFriend("Events", "scores/signal.scores.root")
The training cut is not applied, so every entry has a score. predict.json lists what was
written: --overwrite replaces those files and removes an earlier run's that this run does
not write (never other files). Free disk space is checked before any work.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict", help="score ROOT files with a model bundle",
        description="Score every event of ROOT files with a bundle on a Dask cluster, "
                    "using the bundle's FeatureSpec (the same code as training).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("files", nargs="+", help="ROOT files, globs or URLs")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tree", default=None,
                        help="tree name (default: the tree the model was trained on)")
    parser.add_argument("--cluster", default="local",
                        help="local, local:N, a cluster file's NAME[:N] or PATH, or "
                             "tcp://host:port (default: local; see 'mlaas cluster')")
    parser.add_argument("--step-size", type=int, default=500_000,
                        help="events per partition (default: 500000)")
    parser.add_argument("--redirector", action="append", default=[], metavar="URL",
                        help="XRootD or HTTPS redirector for CMS logical file names "
                             "(/store/...), tried in the order given; repeat for several")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds one open or read may take (default: 60)")
    parser.add_argument("--retries", type=int, default=3, metavar="N",
                        help="retries of a transient error at one place before the next "
                             "is tried (default: 3)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the score files of an earlier run in --out (other "
                             "files in it are kept)")
    parser.add_argument("--trust", action="append", default=[], metavar="TYPE",
                        help="trust this type in a skops model (a class from your own model "
                             "file); repeat for several. Only for bundles you made")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load a pickle-only model (model.pkl). Only for bundles you "
                             "made: unpickling runs arbitrary code")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.data.remote import ReadPolicy
    from mlaas_dask.predict import predict_files

    bundle = ModelBundle.load(args.bundle, trusted_types=args.trust,
                              allow_pickle=args.allow_pickle)
    result = predict_files(bundle, args.files, args.out, tree=args.tree,
                           cluster=args.cluster, step_size=args.step_size,
                           overwrite=args.overwrite, progress=not args.quiet,
                           policy=ReadPolicy(redirectors=tuple(args.redirector),
                                             timeout=args.timeout, retries=args.retries))
    print(f"Scored {result.events:,} events -> {result.parquet}")
    for friend in result.friends:
        print(f"  friend tree: {friend}")
    return 0
