"""``mlaas report BUNDLE``: draw a bundle's evaluation report (report.html) again."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  mlaas report bundles/sample          # rewrites bundles/sample/report.html and report_*.png

Every training writes the report into its bundle: the overtraining check (train vs test
scores per class, Kolmogorov-Smirnov p-values), the ROC as background rejection, working
points, input distributions and correlations per class, feature importance, the learning
curve, the confusion matrix and a bootstrap AUC uncertainty. This command draws it again
from the bundle's report_data.npz (e.g. after an upgrade of mlaas_dask), atomically: the
bundle is never left half-rewritten. Open report.html in any browser; it is one file.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="draw a bundle's evaluation report (report.html) again",
        description="Draw a model bundle's evaluation report again from the data it keeps.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.report import REPORT_FILE, rewrite

    out = rewrite(args.bundle)
    print(f"Report written to {out / REPORT_FILE}")
    return 0
