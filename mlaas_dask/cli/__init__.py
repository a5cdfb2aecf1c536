"""The ``mlaas`` command line: a thin layer over the Python API.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``. User errors (:class:`~mlaas_dask.errors.MlaasError`) are printed as
one paragraph without a traceback and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mlaas_dask import __version__
from mlaas_dask.errors import MlaasError

#: sub-command name -> module under mlaas_dask.cli (imported lazily, keeps --help fast)
COMMANDS = {
    "sample": "sample",
    "inspect": "inspect",
    "train": "train",
    "tune": "tune",
    "predict": "predict",
    "export": "export",
    "report": "report",
    "serve": "serve",
    "bench": "bench",
    "cluster": "cluster",
    "reference": "reference",
}

DESCRIPTION = """\
Machine Learning as a Service for HEP, on Dask.

Typical session:
  mlaas sample --out data/sample --events 200000      # or use your own ROOT files
  mlaas inspect data/sample/signal.root               # branches, multiplicities, a features block
  mlaas train examples/sample.yaml --out bundles/demo # distributed XGBoost -> model bundle
  mlaas predict bundles/demo data/sample/*.root --out scores/
  mlaas serve --models repo/                          # HTTP predictions (Open Inference Protocol)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlaas",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlaas_dask {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"mlaas_dask.cli.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"mlaas_dask.cli.{module}":
                raise
            continue
        mod.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlaas`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from mlaas_dask.logs import native_lines_dropped, quiet

    silent = bool(getattr(args, "quiet", False))
    try:
        with quiet(silent), native_lines_dropped(enabled=silent):
            return int(args.run(args) or 0)
    except MlaasError as err:
        print(f"mlaas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `mlaas inspect FILE --json | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"mlaas {args.command}: interrupted; nothing was left half-written.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
