"""``mlaas reference``: every key a job file may hold, from the validator's schema."""

from __future__ import annotations

import argparse

EPILOG = """\
The reference is generated from the schema that 'mlaas train' validates job files with,
so it lists exactly what is accepted: each key's type, default, allowed values and
meaning. docs/job-reference.md holds the same text.

examples:
  mlaas reference                  # the whole job file
  mlaas reference model            # only the model section
  mlaas reference dataset.groups   # the keys of each file group
  mlaas reference > job-reference.md
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "reference",
        help="list every key of a job file: type, default, meaning",
        description="Print the job-file reference (Markdown): every key with its type, "
        "default, allowed values and meaning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("section", nargs="?", metavar="KEY",
                        help="only this key and the keys below it, e.g. model or "
                        "dataset.groups")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.job import job_reference

    print(job_reference(args.section), end="")
    return 0
