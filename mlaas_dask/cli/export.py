"""``mlaas export BUNDLE --format onnx|triton OUT``: a bundle for ONNX Runtime or Triton."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  mlaas export bundles/demo --format onnx exported/demo        # model.onnx + features.json
  mlaas export bundles/demo --format triton triton-repo/       # a Triton model repository

onnx: model.onnx (XGBoost converted with onnxmltools, or a network's graph), the
FeatureSpec as features.json beside it (and preprocess.json for networks), export.json.
triton: <name>/config.pbtxt (FIL backend for XGBoost, onnxruntime for networks) and
<name>/1/<model file>. Exported scores are checked against the bundle's (1e-5) with
onnxruntime before anything is written.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="export a bundle to ONNX or a Triton model repository",
        description="Export a model bundle for production: ONNX with its FeatureSpec beside "
                    "it, or a Triton model repository.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("out", help="output folder (the repository, for triton)")
    parser.add_argument("--format", required=True, choices=["onnx", "triton"], dest="fmt")
    parser.add_argument("--name", default=None,
                        help="the model's name in the Triton repository (default: the "
                             "bundle's folder name)")
    parser.add_argument("--max-batch-size", type=int, default=1024,
                        help="Triton's max_batch_size (default: 1024)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in OUT (never other folders)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.export import export_bundle

    out = export_bundle(args.bundle, args.fmt, args.out, name=args.name,
                        max_batch_size=args.max_batch_size, overwrite=args.overwrite)
    print(f"Exported {args.bundle} as {args.fmt} -> {out}")
    return 0
