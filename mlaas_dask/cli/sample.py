"""``mlaas sample``: write a generated NanoAOD-style signal / background sample."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from mlaas_dask.errors import MlaasError

EPILOG = """\
The files hold one TTree 'Events' each (or an RNTuple: --format rntuple), with NanoAOD
branch names: run, luminosityBlock,
event; nJet + Jet_pt/eta/phi/mass/btagDeepB (jets sorted by falling pt); nMuon + Muon_*,
nElectron + Electron_* (pt/eta/phi/charge); MET_pt, MET_phi, PV_npvs, genWeight.
Signal is ttH/ttbar-like (more jets, more b-tags, harder jets and MET), background is
W+jets/QCD-like; they overlap, as real samples do. The same arguments give the same events.

examples:
  mlaas sample --out data/sample --events 200k
      signal.root and background.root, 100,000 events each (a few seconds)
  mlaas sample --out data/bench --events 2M --compression lz4:1 --files-per-class 4
      benchmark input: 8 files, fast to read
  mlaas sample --out data/sample --events 200k --seed 7 --overwrite
      other random events, replacing the files already there
  mlaas sample --out data/rntuple --events 200k --format rntuple
      the same events as RNTuples (fields Jet.pt, ...; jobs read them as nJet, Jet_pt)
"""

_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample",
        help="write a generated signal/background sample as NanoAOD-style ROOT files",
        description="Write a generated signal and background sample as NanoAOD-style ROOT "
        "files, for examples, tests and benchmarks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for the files (created if needed)")
    parser.add_argument("--events", required=True, metavar="N",
                        help="total number of events, both classes: 200000, 200k, 2M, 1e6")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed (default: %(default)s)")
    parser.add_argument("--compression", default="zlib:4", metavar="ALGO:LEVEL",
                        help="none, zlib:1-9, lzma:1-9, lz4:1-12 or zstd:1-22 "
                        "(default: %(default)s)")
    parser.add_argument("--files-per-class", type=int, default=1, metavar="K",
                        help="split each class into K files: signal_000.root ... "
                        "(default: %(default)s)")
    parser.add_argument("--signal-fraction", type=float, default=0.5, metavar="F",
                        help="fraction of the events that are signal (default: %(default)s)")
    parser.add_argument("--format", choices=["ttree", "rntuple"], default="ttree",
                        help="store the events as a TTree or as an RNTuple, the HL-LHC "
                        "format (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files that already exist (otherwise refuse)")
    parser.set_defaults(run=run)
    return parser


def parse_event_count(text: str) -> int:
    """``"200000"``, ``"200k"``, ``"2M"``, ``"1e6"`` or ``"2_000_000"`` as an integer."""
    cleaned = str(text).strip().replace("_", "").replace(",", "").lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)([kmg]?)", cleaned)
    if match is None:
        raise MlaasError(
            f"--events {text!r} is not a number of events; write e.g. 200000, 200k or 2M."
        )
    value = float(match.group(1)) * _SUFFIXES.get(match.group(2), 1)
    if value != int(value) or value < 1:
        raise MlaasError(f"--events {text!r} must be a positive whole number of events.")
    return int(value)


def run(args: argparse.Namespace) -> int:
    from mlaas_dask.data.sample import event_counts, generate_sample, parse_compression

    events = parse_event_count(args.events)
    counts = event_counts(events, args.signal_fraction, args.files_per_class)
    parse_compression(args.compression)
    print(f"Writing {events:,} events to {args.out} (compression {args.compression}) ...",
          flush=True)
    start = time.perf_counter()
    paths = generate_sample(
        args.out, events, seed=args.seed, compression=args.compression,
        files_per_class=args.files_per_class, signal_fraction=args.signal_fraction,
        overwrite=args.overwrite, format=args.format,
    )
    seconds = time.perf_counter() - start
    print(f"Wrote {events:,} events in {seconds:.1f} s ({events / seconds:,.0f} events/s):")
    rows = [(str(path), n, path.stat().st_size)
            for name in paths for path, n in zip(paths[name], counts[name], strict=True)]
    width = max(len(row[0]) for row in rows)
    for path, n, size in rows:
        print(f"  {path:<{width}}  {n:>12,} events  {size / 1e6:>9.1f} MB")
    print(f"Next: mlaas inspect {Path(rows[0][0])}")
    return 0
