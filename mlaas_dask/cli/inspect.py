"""``mlaas inspect``: trees, branches, multiplicities and a features block for ROOT files."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
For every TTree or RNTuple (subdirectories included): entries, compression, and per branch its type,
whether it is jagged (a list per event) and its counter branch. For jagged branches, the
number of objects per event over the first entries: mean, 95th / 99th percentile, maximum.
The output ends with a suggested 'features:' block: numeric flat branches (without event
ids, weights, truth and trigger bits) and one collection per Prefix_ group of jagged
branches, padded to the 95th percentile of its multiplicity. Review it and paste it into
your job file. With several files (or a glob), the first file's trees are shown with
entries summed and multiplicities merged over all files, then one line per file.

examples:
  mlaas inspect data/sample/signal.root
  mlaas inspect 'data/sample/*.root'       several files: merged, then one line per file
  mlaas inspect nanoaod.root --tree Events --sample-events 10000
  mlaas inspect root://eospublic.cern.ch//eos/opendata/cms/.../file.root --json > schema.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="show a ROOT file's trees, branches and multiplicities, and suggest features",
        description="Show what is in a ROOT file (local path, root:// or https:// URL) and "
        "suggest a features block for a job file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE_OR_URL",
                        help="ROOT file paths, globs or URLs (several: merged multiplicities "
                        "and one line per file)")
    parser.add_argument("--tree", metavar="NAME",
                        help="only this tree (default: every TTree in the file)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON (with the suggested features)")
    parser.add_argument("--sample-events", type=int, default=100_000, metavar="N",
                        help="multiplicities from the first N entries (default: %(default)s)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.data.inspect import (
        format_report,
        inspect_files,
        pick_tree,
        suggest_features,
    )

    report = inspect_files(args.files, tree=args.tree, sample_events=args.sample_events)
    if not args.json:
        print(format_report(report, tree=args.tree), end="")
        return 0
    suggestion = None
    if report["trees"]:
        chosen = pick_tree(report, args.tree)["name"]
        suggestion = {"tree": chosen, "features": suggest_features(report, chosen)}
    print(json.dumps({**report, "suggested_features": suggestion}, indent=2))
    return 0
