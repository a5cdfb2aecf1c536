"""What is in a ROOT file: trees, branches, jagged multiplicities, and a features block.

:func:`inspect_file` reads only metadata and the counter branches of the first events, so it
is fast on wide files (a real NanoAOD file has about 1000 branches) and on remote ones.
:func:`suggest_features` turns its report into a ``features:`` block for a job file, and
:func:`format_report` renders both for a terminal.
"""

from __future__ import annotations

import glob
import os
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlaas_dask.data.multiplicity import multiplicity_stats, objects_to_keep
from mlaas_dask.data.remote import ReadPolicy, open_root
from mlaas_dask.data.rootio import (
    TREE_CLASSES,
    find_tree,
    is_rntuple,
    object_classes,
    read_entries,
    rntuple_fields,
    tree_names,
)
from mlaas_dask.errors import DataError, MlaasError, did_you_mean, first_line
from mlaas_dask.outputs import short_size

DEFAULT_SAMPLE_EVENTS = 100_000
#: a shorter timeout than a training job's: inspecting is interactive
_POLICY = ReadPolicy(timeout=30.0)

#: ROOT compression algorithm codes (``fCompress // 100``) and block magic bytes
_ALGORITHM_CODES = {1: "zlib", 2: "lzma", 4: "lz4", 5: "zstd"}
_BLOCK_MAGIC = {b"ZL": "zlib", b"CS": "zlib", b"XZ": "lzma", b"L4": "lz4", b"ZS": "zstd"}
_KEY_HEADER = struct.Struct(">ihiIh")  # fNbytes, fVersion, fObjlen, fDatime, fKeylen
#: "root", fVersion, fBEGIN, fEND (32 bits, or 64 for fVersion >= 1000000)
_ROOT_HEADER = struct.Struct(">4siiq")
_MAGIC_PROBES = 5
_NAME_COLUMN = 36
_TYPE_COLUMN = 20

_NUMERIC_TYPES = {
    "float", "double", "Float16_t", "Double32_t", "int8_t", "uint8_t", "int16_t", "uint16_t",
    "int32_t", "uint32_t", "int64_t", "uint64_t", "char", "unsigned char", "short",
    "unsigned short", "int", "unsigned int", "long", "unsigned long", "long long",
    "unsigned long long",
}
#: event ids and bookkeeping, compared case-insensitively
_ID_BRANCHES = {
    "run", "event", "luminosityblock", "lumi", "lumiblock", "lumisection", "ls",
    "bunchcrossing", "orbitnumber", "runnumber", "eventnumber", "evt",
}
#: generator-level (truth) prefixes: not available in data, often a label leak
_TRUTH_PREFIXES = ("gen", "lhe", "mc", "htxs", "subgen", "pileup", "psweight", "pdf")
#: per-object fields that are indices, flags or truth labels rather than measurements
_SKIPPED_FIELD_PARTS = ("idx", "flav", "pdgid", "cleanmask", "genpart")


# -- the report ---------------------------------------------------------------------------


def inspect_file(path_or_url: str | os.PathLike[str], tree: str | None = None,
                 sample_events: int = DEFAULT_SAMPLE_EVENTS) -> dict[str, Any]:
    """Describe the TTrees of a ROOT file.

    Parameters
    ----------
    path_or_url
        A local path, or a ``root://`` / ``https://`` URL.
    tree
        Only describe this tree (a path inside the file, e.g. ``"Events"`` or
        ``"dir/tree"``); by default every TTree, subdirectories included.
    sample_events
        Multiplicities of jagged branches come from this many first entries.

    Returns
    -------
    dict
        ``{"path", "size_bytes", "trees": [...], "other_objects": {...}}``. Each tree has
        ``name``, ``title``, ``entries``, ``compression`` (``{"algorithm", "level"}``),
        ``sampled_events`` and ``branches``; each branch has ``name``, ``type``, ``title``,
        ``jagged``, ``counter`` (its counter branch or ``None``), ``is_counter`` and, for
        jagged branches, ``multiplicity`` (``mean``, ``p95``, ``p99``, ``max``).

    Raises
    ------
    DataError
        When the path does not exist, is not a ROOT file, is truncated or corrupt, or has
        no tree named ``tree``.
    """
    if sample_events < 1:
        raise MlaasError(f"sample_events must be at least 1, not {sample_events!r}.")
    location = _location(path_or_url)
    file = _open(location)
    try:
        return _guarded(location, lambda: _report(file, location, tree, int(sample_events)))
    finally:
        file.close()


def inspect_files(locations: Sequence[str | os.PathLike[str]], tree: str | None = None,
                  sample_events: int = DEFAULT_SAMPLE_EVENTS) -> dict[str, Any]:
    """:func:`inspect_file` over several files or globs (local or ``root://``): the
    first file's report, with entries summed and multiplicities merged over every file
    (mean weighted by the sampled events; p95, p99 and max the largest of any file), plus
    one line per file (``per_file``: path, entries, and per counter ``mean``, ``p95``,
    ``max``) to see a sample that differs from the others.

    Raises
    ------
    DataError
        For a glob that matches nothing, a file that cannot be read (naming it), or files
        whose chosen tree differs in branches.
    """
    from mlaas_dask.data.dataset import expand

    # globs are expanded; a plain path or URL goes to inspect_file, whose messages are
    # those of inspecting (a missing file names its nearby files)
    named = [os.fspath(location) for location in locations]
    paths = [p for location in named
             for p in (expand(location, "", _POLICY) if glob.has_magic(location)
                       else [location])]
    reports = [inspect_file(p, tree=tree, sample_events=sample_events) for p in paths]
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    if not first["trees"]:
        return {**first, "files": paths, "per_file": []}
    name = pick_tree(first, tree)["name"]
    chosen = [_tree_named(r, name) for r in reports]
    merged = {**chosen[0], "entries": sum(t["entries"] for t in chosen),
              "sampled_events": sum(t["sampled_events"] for t in chosen),
              "sampled_files": len(chosen),
              "branches": [_merged_branch(b, chosen) for b in chosen[0]["branches"]]}
    per_file = [{"path": r["path"], "entries": t["entries"],
                 "multiplicity": {b["counter"] or b["name"]: b["multiplicity"]
                                  for b in t["branches"] if b.get("multiplicity")}}
                for r, t in zip(reports, chosen, strict=True)]
    return {**first, "path": f"{len(paths)} files ({first['path']}, ...)",
            "size_bytes": sum(r.get("size_bytes") or 0 for r in reports),
            "trees": [merged], "files": paths, "per_file": per_file}


def _tree_named(report: dict[str, Any], name: str) -> dict[str, Any]:
    for info in report["trees"]:
        if info["name"] == name:
            return info
    raise DataError(f"{report['path']} has no tree {name!r}, which the first file has."
                    + did_you_mean(name, [t["name"] for t in report["trees"]], "trees")
                    + " Inspect files of one dataset together, or give --tree.",
                    file=str(report["path"]), tree=name)


def _merged_branch(branch: dict[str, Any], trees: list[dict[str, Any]]) -> dict[str, Any]:
    if not branch.get("multiplicity"):
        return branch
    found = []
    for info in trees:
        same = next((b for b in info["branches"] if b["name"] == branch["name"]), None)
        if same is None:
            raise DataError(f"Branch {branch['name']!r} is missing from a file of the "
                            f"set (tree {info['name']!r}); inspect files of one dataset "
                            "together.", branch=branch["name"])
        if same.get("multiplicity"):
            found.append((same["multiplicity"], info["sampled_events"]))
    events = sum(n for _, n in found) or 1
    stats = {"mean": sum(m["mean"] * n for m, n in found) / events}
    for key in ("p95", "p99", "max"):
        stats[key] = max(m[key] for m, _ in found)
    return {**branch, "multiplicity": stats}


def format_per_file(report: dict[str, Any]) -> list[str]:
    """The per-file lines of an :func:`inspect_files` report (empty for one file)."""
    rows = report.get("per_file") or []
    if not rows:
        return []
    counters = sorted({c for row in rows for c in row["multiplicity"]})
    width = max(len(str(row["path"])) for row in rows)
    head = "".join(f"  {c + ' mean/p95/max':>22}" for c in counters)
    lines = [f"Per file ({len(rows)} files):", f"  {'file':<{width}}  {'entries':>11}{head}"]
    for row in rows:
        cells = ""
        for counter in counters:
            m = row["multiplicity"].get(counter)
            text = f"{m['mean']:.2f}/{m['p95']:g}/{m['max']:g}" if m else "-"
            cells += f"  {text:>22}"
        lines.append(f"  {row['path']!s:<{width}}  {row['entries']:>11,}{cells}")
    return lines


def suggest_features(report: dict[str, Any], tree: str | None = None) -> dict[str, Any]:
    """A ``features:`` block for a job file, from an :func:`inspect_file` report.

    Flat features are the numeric one-value-per-event branches, without event ids
    (``run``, ``event``, ``luminosityBlock``...), weights, generator-level truth, trigger
    bits (booleans) and counters. Collections group the jagged branches that share a
    counter and a ``Prefix_`` (``Jet_pt``, ``Jet_eta`` -> ``Jet: {fields: [pt, eta]}``),
    keeping numeric fields that are measurements (not indices, flags or truth labels);
    ``n`` is the 95th percentile of the multiplicity rounded up, and objects are sorted by
    ``pt`` (computed as ``hypot(Px, Py)`` when only momentum components are stored).

    Parameters
    ----------
    report
        The result of :func:`inspect_file`.
    tree
        Tree to suggest for; by default the one with the most entries.

    Returns
    -------
    dict
        The block, in :meth:`FeatureSpec.from_dict` form: ``{"flat": [...],
        "collections": {...}}``.
    """
    return suggest(report, tree)[0]


def suggest(report: dict[str, Any], tree: str | None = None,
            keep: Callable[[str], bool] | None = None
            ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """:func:`suggest_features` plus, per reason, the branches it leaves out.

    ``keep`` restricts the candidate branches (e.g. to a user's selection); branches it
    rejects are listed under ``"not selected"``.
    """
    info = pick_tree(report, tree)
    if keep is None:
        return _suggest(info)
    kept = [b for b in info["branches"] if keep(b["name"]) or b["is_counter"]]
    block, skipped = _suggest({**info, "branches": kept})
    dropped = [b["name"] for b in info["branches"] if b not in kept]
    if dropped:
        skipped["not selected"] = dropped
    return block, skipped


def format_report(report: dict[str, Any], tree: str | None = None) -> str:
    """The report as text for a terminal, ending with the suggested features as YAML.

    Parameters
    ----------
    report
        The result of :func:`inspect_file`.
    tree
        Tree whose suggested features end the text; by default the one with the most
        entries.
    """
    size = report.get("size_bytes")
    lines = [f"{report['path']}" + (f"  ({short_size(size)})" if size is not None else "")]
    if not report["trees"]:
        lines.append("  no TTree or RNTuple in this file")
    for info in report["trees"]:
        lines.append("")
        lines.extend(_format_tree(info))
    if report.get("other_objects"):
        listing = ", ".join(f"{k} ({v})" for k, v in report["other_objects"].items())
        lines.extend(["", f"Other objects: {listing}"])
    if report.get("per_file"):
        lines.append("")
        lines.extend(format_per_file(report))
    if report["trees"]:
        lines.append("")
        lines.extend(_format_suggestion(pick_tree(report, tree)))
    return "\n".join(lines) + "\n"


# -- opening ------------------------------------------------------------------------------


def _location(path_or_url: str | os.PathLike[str]) -> str | Path:
    """A URL as a string, or an existing local path."""
    text = os.fspath(path_or_url)
    if "://" in text and not text.startswith("file://"):
        return text
    path = Path(text.removeprefix("file://")).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.root"))[:10]
        hint = f" ROOT files in it: {', '.join(inside)}." if inside else ""
        raise DataError(f"{path} is a directory; give one ROOT file inside it.{hint}",
                        file=str(path))
    if not path.exists():
        raise DataError(f"{path} does not exist. Check the path." + _nearby_files(path),
                        file=str(path))
    _check_header(path)
    return path


def _nearby_files(path: Path) -> str:
    if not path.parent.is_dir():
        return f" (Its directory {path.parent} does not exist either.)"
    names = [p.name for p in path.parent.iterdir() if p.is_file()]
    if not names:
        return f" Its directory {path.parent} is empty."
    alike = [n for n in names if Path(n).suffix == path.suffix]
    return did_you_mean(path.name, alike or names, f"files in {path.parent}")


def _check_header(path: Path) -> None:
    """Catch empty, non-ROOT and truncated local files from the 'root' header alone."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_ROOT_HEADER.size)
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror or err}.",
                        file=str(path)) from None
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes); it is not a usable ROOT file. Write or "
                        "copy it again.", file=str(path))
    if head[:4] != b"root":
        raise DataError(
            f"{path} is not a ROOT file (it does not start with the bytes 'root'). Give a "
            ".root file written by ROOT or uproot.", file=str(path))
    if len(head) < _ROOT_HEADER.size:
        raise DataError(f"{path} is truncated: it has only {size} bytes, less than a ROOT "
                        "file header. Copy it again from its source.", file=str(path))
    version = struct.unpack_from(">i", head, 4)[0]
    end = struct.unpack_from(">q" if version >= 1_000_000 else ">i", head, 12)[0]
    if size < end:
        raise DataError(
            f"{path} is truncated: it has {size:,} bytes but its header says {end:,}. An "
            "interrupted copy or write does this; copy it again from its source.",
            file=str(path))


def _open(location: str | Path) -> Any:
    """The file opened as every reader opens it (:func:`~mlaas_dask.data.remote.open_root`:
    timeouts, TLS, credentials), with inspect's messages for what goes wrong."""
    try:
        return open_root(str(location), _POLICY)
    except FileNotFoundError:
        raise DataError(f"{location} does not exist. Check the path or URL.",
                        file=str(location)) from None
    except PermissionError:
        raise DataError(f"{location} cannot be read: permission denied.",
                        file=str(location)) from None
    except ValueError as err:
        if "not a ROOT file" in str(err):
            raise DataError(
                f"{location} is not a ROOT file (it does not start with the bytes 'root'). "
                "Give a .root file written by ROOT or uproot.", file=str(location)
            ) from None
        raise _unreadable(location, err) from None
    except MlaasError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse the header means corrupt
        raise _unreadable(location, err) from None


def _guarded(location: str | Path, work: Any) -> Any:
    try:
        return work()
    except MlaasError:
        raise
    except Exception as err:  # noqa: BLE001 - reading metadata or baskets failed
        raise _unreadable(location, err) from None


def _unreadable(location: str | Path, err: BaseException) -> DataError:
    """A local file that fails to parse is corrupt; a URL may also be unreachable."""
    detail = first_line(err)[:200] or "no details"
    if isinstance(location, str):
        return DataError(
            f"Cannot read {location}: {_error_name(err)}: {detail}. Check the URL, "
            "that the server is reachable, your credentials (a grid proxy or token for "
            "root://), and that the file is complete.", file=location)
    return DataError(
        f"{location} could not be read as a ROOT file: it looks truncated or corrupt "
        f"({_error_name(err)}: {detail}). Check its size against the source, "
        "copy it again, or leave it out of the dataset.", file=str(location))


def _error_name(err: BaseException) -> str:
    kind = type(err)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


# -- building the report ------------------------------------------------------------------


def _report(file: Any, location: str | Path, tree: str | None,
            sample_events: int) -> dict[str, Any]:
    classes = object_classes(file)
    names = tree_names(classes)
    if tree is not None:
        names = [find_tree(classes, tree, str(location))]
    return {
        "path": str(location),
        "size_bytes": location.stat().st_size if isinstance(location, Path) else None,
        "trees": [_tree_report(file, name, sample_events) for name in names],
        "other_objects": {k: v for k, v in classes.items()
                          if k not in names and v not in (*TREE_CLASSES, "TDirectory")},
    }


def _tree_report(file: Any, name: str, sample_events: int) -> dict[str, Any]:
    tree = file[name]
    if is_rntuple(tree):
        return _rntuple_report(file, tree, name, sample_events)
    entries = int(tree.num_entries)
    sampled = min(entries, sample_events)
    branches = [_branch_info(tree, key, branch) for key, branch in
                tree.items(recursive=True, full_paths=True)]
    counters = {b["counter"] for b in branches if b["counter"] is not None}
    stats = _multiplicities(tree, branches, counters, sampled)
    for info in branches:
        info["is_counter"] = info["name"] in counters
        if info["jagged"]:
            info["multiplicity"] = stats.get(info["counter"] or info["name"])
    return {
        "name": name,
        "kind": "TTree",
        "title": str(tree.title),
        "entries": entries,
        "compression": _compression(file, tree),
        "sampled_events": sampled,
        "branches": branches,
    }


def _rntuple_report(file: Any, ntuple: Any, name: str, sample_events: int) -> dict[str, Any]:
    """:func:`_tree_report` of an RNTuple: its fields in NanoAOD naming (a collection
    ``Jet`` as ``nJet`` + ``Jet_pt``...), as datasets read them."""
    import awkward as ak

    entries = int(ntuple.num_entries)
    sampled = min(entries, sample_events)
    fields = rntuple_fields(ntuple)
    branches = [{"name": b, "type": f["type"], "title": "", "jagged": f["jagged"],
                 "counter": f["counter"], "is_counter": f.get("counts") is not None,
                 "multiplicity": None} for b, f in fields.items()]
    stats: dict[str, Any] = {}
    for info in branches:
        key = info["counter"] or info["name"]
        if info["jagged"] and key not in stats and sampled:
            values = read_entries(ntuple, [info["name"]], 0, sampled)[info["name"]]
            stats[key] = multiplicity_stats(ak.to_numpy(ak.num(values, axis=1)))
        if info["jagged"]:
            info["multiplicity"] = stats.get(key)
    code = int(file.file.fCompress)
    compression = ({"algorithm": "none", "level": 0} if code % 100 == 0 else
                   {"algorithm": _ALGORITHM_CODES.get(code // 100, "zlib"), "level": code % 100})
    return {"name": name, "kind": "RNTuple", "title": str(ntuple.description or ""),
            "entries": entries, "compression": compression, "sampled_events": sampled,
            "branches": branches}


def _branch_info(tree: Any, key: str, branch: Any) -> dict[str, Any]:
    import uproot

    try:
        interpretation = branch.interpretation
        typename = str(branch.typename)
    except Exception:  # noqa: BLE001 - a type uproot cannot read is still worth listing
        interpretation, typename = None, "unknown"
    jagged = isinstance(interpretation, uproot.AsJagged) or (
        isinstance(interpretation, uproot.AsObjects) and typename.startswith("std::vector<")
    )
    counter = _counter_name(tree, branch) if jagged else None
    return {
        "name": key,
        "type": typename,
        "title": str(branch.title),
        "jagged": jagged,
        "counter": counter,
        "is_counter": False,
        "multiplicity": None,
    }


def _counter_name(tree: Any, branch: Any) -> str | None:
    found = branch.count_branch
    if found is not None:
        return str(found.name)
    leaf = branch.count_leaf
    if leaf is None:
        return None
    name = str(leaf.member("fName"))
    return name if name in tree else None


def _multiplicities(tree: Any, branches: list[dict[str, Any]], counters: set[str],
                    sampled: int) -> dict[str, dict[str, float] | None]:
    """Per counter branch (or per jagged branch without one): multiplicity statistics."""
    if sampled == 0:
        return {}
    import awkward as ak

    out: dict[str, dict[str, float] | None] = {}
    for name in sorted(counters):
        counts = tree[name].array(library="np", entry_stop=sampled)
        out[name] = multiplicity_stats(counts)
    for info in branches:
        if info["jagged"] and info["counter"] is None and info["type"] != "unknown":
            values = tree[info["name"]].array(library="ak", entry_stop=sampled)
            out[info["name"]] = multiplicity_stats(ak.to_numpy(ak.num(values, axis=1)))
    return out


def _compression(file: Any, tree: Any) -> dict[str, Any]:
    """Algorithm and level: the level as declared (branch, else file setting), the
    algorithm from the first compressed basket when one is found (ROOT's code 0 means
    "the global default", and uproot leaves branch settings at 0)."""
    branches = list(tree.itervalues(recursive=True))
    codes = [int(b.member("fCompress")) for b in branches if int(b.member("fCompress")) > 0]
    code = Counter(codes).most_common(1)[0][0] if codes else int(file.file.fCompress)
    if code % 100 == 0:
        return {"algorithm": "none", "level": 0}
    algorithm = _basket_algorithm(file, branches) or _ALGORITHM_CODES.get(code // 100, "zlib")
    return {"algorithm": algorithm, "level": code % 100}


def _basket_algorithm(file: Any, branches: list[Any]) -> str | None:
    """The algorithm named by the first compressed block of a few branches' first basket."""
    probed = 0
    for branch in branches:
        seeks, sizes = branch.member("fBasketSeek"), branch.member("fBasketBytes")
        if len(seeks) == 0 or int(seeks[0]) <= 0 or int(sizes[0]) <= _KEY_HEADER.size:
            continue
        start = int(seeks[0])
        raw = bytes(file.file.source.chunk(start, start + min(int(sizes[0]), 1024)).raw_data)
        nbytes, _, objlen, _, keylen = _KEY_HEADER.unpack(raw[:_KEY_HEADER.size])
        if nbytes - keylen != objlen and len(raw) >= keylen + 2:
            return _BLOCK_MAGIC.get(raw[keylen:keylen + 2])
        probed += 1
        if probed >= _MAGIC_PROBES:
            break
    return None


# -- suggesting features ------------------------------------------------------------------


def pick_tree(report: dict[str, Any], tree: str | None = None) -> dict[str, Any]:
    """The report of tree ``tree`` (a path or a base name), by default the tree with the
    most entries (then the most branches): usually the event tree."""
    trees = report["trees"]
    if not trees:
        raise DataError(f"{report['path']} has no TTree or RNTuple to suggest features for.",
                        file=report["path"])
    if tree is None:
        return max(trees, key=lambda t: (t["entries"], len(t["branches"])))
    for info in trees:
        if tree in (info["name"], info["name"].rsplit("/", 1)[-1]):
            return info
    raise DataError(
        f"{report['path']} has no tree {tree!r} in this report."
        + did_you_mean(tree, [t["name"] for t in trees], "trees"), file=report["path"],
        tree=tree, key=tree, available=[t["name"] for t in trees])


def _suggest(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The features block and, per reason, the branches it leaves out."""
    skipped: dict[str, list[str]] = {}
    flat = [b["name"] for b in info["branches"] if _flat_choice(b, skipped)]
    collections = _collections(info["branches"], skipped)
    block: dict[str, Any] = {"flat": flat}
    if collections:
        block["collections"] = collections
    return block, skipped


def _flat_choice(branch: dict[str, Any], skipped: dict[str, list[str]]) -> bool:
    if branch["jagged"]:
        return False
    name, reason = branch["name"], None
    lowered = name.lower()
    if branch["is_counter"]:
        reason = "counters (use multiplicity: true)"
    elif branch["type"] not in _NUMERIC_TYPES:
        reason = "not one number per event" if branch["type"] != "bool" else \
            "booleans (trigger bits, filters)"
    elif lowered in _ID_BRANCHES:
        reason = "event ids"
    elif "weight" in lowered:
        reason = "weights (a per-event weight: dataset.weight_branch)"
    elif lowered.startswith(_TRUTH_PREFIXES):
        reason = "generator-level truth"
    if reason is not None:
        skipped.setdefault(reason, []).append(name)
    return reason is None


def _collections(branches: list[dict[str, Any]],
                 skipped: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for branch in branches:
        if not branch["jagged"]:
            continue
        prefix, sep, _ = branch["name"].partition("_")
        if not sep:
            skipped.setdefault("jagged without a Prefix_ name", []).append(branch["name"])
            continue
        groups.setdefault((branch["counter"], prefix), []).append(branch)
    out: dict[str, dict[str, Any]] = {}
    for (_, prefix), members in groups.items():
        if prefix.lower().startswith(_TRUTH_PREFIXES):
            skipped.setdefault("generator-level truth", []).extend(m["name"] for m in members)
            continue
        if prefix in out:
            skipped.setdefault("collections with mixed counters", []).extend(
                m["name"] for m in members)
            continue
        collection = _collection(prefix, members, skipped)
        if collection is not None:
            out[prefix] = collection
    return out


def _collection(prefix: str, members: list[dict[str, Any]],
                skipped: dict[str, list[str]]) -> dict[str, Any] | None:
    fields = []
    for member in members:
        field = member["name"][len(prefix) + 1:]
        element = member["type"].removesuffix("[]")
        if element.startswith("std::vector<"):
            element = element[len("std::vector<"):-1]
        if element not in _NUMERIC_TYPES:
            skipped.setdefault("object flags and non-numeric fields", []).append(member["name"])
        elif any(part in field.lower() for part in _SKIPPED_FIELD_PARTS):
            skipped.setdefault("object indices and truth labels", []).append(member["name"])
        else:
            fields.append(field)
    if not fields:
        return None
    stats = members[0]["multiplicity"]
    collection: dict[str, Any] = {"fields": fields}
    collection["n"] = objects_to_keep(stats["p95"]) if stats else "auto"
    px, py = _momentum_components(fields)
    if "pt" in fields:
        collection["sort_by"] = "pt"
    elif px and py:
        collection["fields"] = ["pt", *fields]
        collection["derived"] = {"pt": f"hypot({px}, {py})"}
        collection["sort_by"] = "pt"
    collection["multiplicity"] = True
    return collection


def _momentum_components(fields: list[str]) -> tuple[str | None, str | None]:
    for px, py in (("Px", "Py"), ("px", "py"), ("PX", "PY")):
        if px in fields and py in fields:
            return px, py
    return None, None


# -- text ---------------------------------------------------------------------------------


def _format_tree(info: dict[str, Any]) -> list[str]:
    compression = info["compression"]
    codec = compression["algorithm"] + (f":{compression['level']}"
                                        if compression["algorithm"] != "none" else "")
    n_jagged = sum(b["jagged"] for b in info["branches"])
    lines = [
        f"{info.get('kind', 'TTree')} {info['name']!r}: {info['entries']:,} entries, "
        f"{len(info['branches'])} branches ({n_jagged} jagged), compression {codec}",
    ]
    if n_jagged:
        if info.get("sampled_files"):
            lines.append(f"  multiplicities from {info['sampled_events']:,} entries of "
                         f"{info['sampled_files']} files (mean over all; p95, p99, max: "
                         "the largest of any file)")
        else:
            lines.append(f"  multiplicities from the first {info['sampled_events']:,} "
                         "entries")
    width = min(max([len(b["name"]) for b in info["branches"]] + [6]), _NAME_COLUMN)
    type_width = min(max([len(b["type"]) for b in info["branches"]] + [4]), _TYPE_COLUMN)
    kinds = [_jagged_column(b) for b in info["branches"]]
    kind_width = max([len(k) for k in kinds] + [7])
    lines.append(f"  {'branch':<{width}}  {'type':<{type_width}}  {'jagged':<{kind_width}}"
                 f"{'mean':>8}{'p95':>7}{'p99':>7}{'max':>6}")
    for branch, kind in zip(info["branches"], kinds, strict=True):
        lines.append(_format_branch(branch, kind, (width, type_width, kind_width)).rstrip())
    return lines


def _jagged_column(branch: dict[str, Any]) -> str:
    if branch["jagged"]:
        return f"[{branch['counter']}]" if branch["counter"] else "yes"
    return "counter" if branch["is_counter"] else ""


def _format_branch(branch: dict[str, Any], kind: str, widths: tuple[int, int, int]) -> str:
    width, type_width, kind_width = widths
    text = f"  {branch['name']:<{width}}  {branch['type']:<{type_width}}  {kind:<{kind_width}}"
    stats = branch.get("multiplicity")
    if stats:
        text += (f"{stats['mean']:>8.2f}{stats['p95']:>7.1f}{stats['p99']:>7.1f}"
                 f"{stats['max']:>6d}")
    return text


def _format_suggestion(info: dict[str, Any]) -> list[str]:
    import yaml

    block, skipped = _suggest(info)
    lines = [f"Suggested features for tree {info['name']!r} (review, then paste into your "
             "job file):"]
    for reason, names in skipped.items():
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6
                                         else "")
        lines.append(f"  left out, {reason}: {shown}")
    text = yaml.safe_dump({"features": block}, sort_keys=False, default_flow_style=None,
                          width=96)
    lines.extend(text.rstrip("\n").splitlines())
    return lines
