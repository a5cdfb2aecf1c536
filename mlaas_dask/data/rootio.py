"""TTrees and RNTuples in ROOT files: finding one by name (one set of messages for every
reader), their branches under one naming, reading entry ranges, and writing them.

An RNTuple's fields are named as NanoAOD's TTree branches, so that one job reads both:
a collection field ``Jet`` with subfields ``pt``, ``eta`` offers ``Jet_pt``, ``Jet_eta``
(lists per event) and its multiplicity ``nJet``; a top-level field keeps its name
(``MET_pt``, or ``Muon_pt`` for a ``std::vector<float>`` field)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlaas_dask.errors import DataError, did_you_mean

#: the classes that are read as TTrees
TTREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")
#: RNTuples (the HL-LHC format), read through uproot's RNTuple reader
RNTUPLE_CLASSES = ("ROOT::RNTuple", "ROOT::Experimental::RNTuple")
#: every class whose entries are read as events
TREE_CLASSES = TTREE_CLASSES + RNTUPLE_CLASSES
#: RNTuple field types that hold a list per event
_LIST_TYPES = ("std::vector<", "ROOT::VecOps::RVec<", "ROOT::RVec<")
#: what to do about a tree name the file does not have, whoever gave it
TREE_ADVICE = ("Give one of them as the tree (dataset.tree in a job file, --tree for "
               "mlaas inspect).")


def object_classes(handle: Any) -> dict[str, str]:
    """Every object of an open uproot file, by path (subdirectories included, cycle numbers
    left out), with its class name."""
    return {str(k): str(v) for k, v in handle.classnames(recursive=True, cycle=False).items()}


def tree_names(classes: Mapping[str, str]) -> list[str]:
    """The paths of the TTrees and RNTuples among :func:`object_classes`."""
    return [name for name, kind in classes.items() if kind in TREE_CLASSES]


def find_tree(classes: Mapping[str, str], tree: str, where: str, *,
              by_base_name: bool = True) -> str:
    """The path of TTree ``tree`` among a file's :func:`object_classes`.

    Parameters
    ----------
    classes
        The file's objects and their classes.
    tree
        A path inside the file (``"Events"``, ``"dir/tree"``; a cycle number is ignored).
    where
        The file as messages name it.
    by_base_name
        Also accept the base name of a tree in a subdirectory when only one tree has it.

    Raises
    ------
    DataError
        Naming the file and the tree, with the closest spellings first and every tree the
        file has (``key``, ``available``), or saying that the file holds no TTree or
        RNTuple at all.
    """
    wanted = tree.strip("/").split(";")[0]
    names = tree_names(classes)
    if wanted in names:
        return wanted
    by_base = [name for name in names if name.rsplit("/", 1)[-1] == wanted]
    if by_base_name and len(by_base) == 1:
        return by_base[0]
    if not names:
        held = ", ".join(f"{k} ({v})" for k, v in classes.items()) or "nothing"
        message = (f"{where} has no TTree or RNTuple (it holds: {held}), so there is no "
                   f"tree {tree!r} to read.")
    else:
        message = (f"Tree {tree!r} is not in {where}." + did_you_mean(wanted, names, "trees")
                   + f" {TREE_ADVICE}")
    raise DataError(message, file=where, tree=tree, key=wanted, available=names)


def write_ttree(handle: Any, name: str, data: Mapping[str, Any], title: str = "") -> None:
    """Write ``data`` (numpy arrays, and awkward records of lists for collections, which
    become ``n<Name>`` + ``<Name>_<field>`` branches) as a TTree into an open uproot file."""
    import awkward as ak

    types = {key: value.type if isinstance(value, ak.Array) else np.asarray(value).dtype
             for key, value in data.items()}
    tree = handle.mktree(name, types, title=title)
    tree.extend(dict(data))


def write_rntuple(handle: Any, name: str, data: Mapping[str, Any], title: str = "") -> None:
    """Write ``data`` as an RNTuple (awkward records of lists become collection fields,
    read back as ``n<Name>`` + ``<Name>_<field>``) into an open uproot file."""
    handle.mkrntuple(name, dict(data), description=title)


# -- one view of TTrees and RNTuples ------------------------------------------------------


def is_rntuple(tree: Any) -> bool:
    """Whether an object read from a file is an RNTuple."""
    import uproot

    return isinstance(tree, uproot.behaviors.RNTuple.RNTuple)


def _plain_type(typename: Any) -> str:
    """An RNTuple type name as a TTree's (``std::int32_t`` -> ``int32_t``)."""
    return re.sub(r"std::(u?int\d+_t)", r"\1", str(typename))


def _is_collection(field: Any) -> bool:
    return bool(field.fields) and (field.typename == "" or
                                   str(field.typename).startswith(_LIST_TYPES))


def rntuple_fields(ntuple: Any) -> dict[str, dict[str, Any]]:
    """An RNTuple's branches in NanoAOD naming: name -> ``type``, ``jagged``, ``path``
    (the fields to read), ``counter`` (its multiplicity branch) and, for a multiplicity,
    ``counts`` (the collection it counts)."""
    out: dict[str, dict[str, Any]] = {}
    for field in ntuple.fields:
        name, typename = str(field.name), _plain_type(field.typename)
        if _is_collection(field):
            for sub in field.fields:
                out[f"{name}_{sub.name}"] = {
                    "type": f"std::vector<{_plain_type(sub.typename)}>", "jagged": True,
                    "path": f"{name}.{sub.name}", "counter": f"n{name}"}
            out.setdefault(f"n{name}", {"type": "int32_t", "jagged": False,
                                        "path": None, "counter": None, "counts": name})
        elif field.fields:  # a record per event: its fields are flat branches
            for sub in field.fields:
                out[f"{name}_{sub.name}"] = {"type": _plain_type(sub.typename), "jagged": False,
                                             "path": f"{name}.{sub.name}", "counter": None}
        else:
            out[name] = {"type": typename, "jagged": typename.startswith(_LIST_TYPES),
                         "path": name, "counter": None}
    return out


def branch_names(tree: Any) -> list[str]:
    """Every branch of a TTree (subbranches included), or of an RNTuple as
    :func:`rntuple_fields` names them."""
    if is_rntuple(tree):
        return list(rntuple_fields(tree))
    return [str(k) for k in tree.keys(recursive=True)]


def branch_types(tree: Any, branches: Sequence[str]) -> tuple[dict[str, str], dict[str, bool]]:
    """Type names and whether each is a list per event, for the ``branches`` that the
    TTree or RNTuple has."""
    import uproot

    types: dict[str, str] = {}
    jagged: dict[str, bool] = {}
    fields = rntuple_fields(tree) if is_rntuple(tree) else None
    available = set(fields if fields is not None else branch_names(tree))
    for branch in (b for b in branches if b in available):
        if fields is not None:
            types[branch], jagged[branch] = fields[branch]["type"], fields[branch]["jagged"]
        else:
            interpretation = tree[branch].interpretation
            types[branch] = tree[branch].typename
            jagged[branch] = isinstance(interpretation, uproot.interpretation.jagged.AsJagged
                                        | uproot.AsObjects)
    return types, jagged


def read_entries(tree: Any, branches: Sequence[str], start: int, stop: int) -> Any:
    """Entries ``[start, stop)`` of ``branches`` as one awkward record array with those
    fields, from a TTree or an RNTuple (collections' subfields and multiplicities under
    their NanoAOD names)."""
    if not is_rntuple(tree):
        return tree.arrays(list(branches), entry_start=start, entry_stop=stop, library="ak")
    import awkward as ak

    fields = rntuple_fields(tree)
    paths = {b: fields[b]["path"] for b in branches if b in fields}
    for branch in branches:  # a multiplicity: the offsets of one field of its collection
        counts = fields.get(branch, {}).get("counts")
        if counts is not None:
            paths[branch] = next(f["path"] for f in fields.values()
                                 if f["counter"] == branch)
    unknown = [b for b in branches if b not in paths]
    if unknown:
        raise KeyError(f"no field {unknown[0]!r} in RNTuple {tree.name!r}")
    read = tree.arrays(sorted(set(paths.values())), entry_start=start, entry_stop=stop)
    columns = {}
    for branch in branches:
        value = read
        for part in paths[branch].split("."):
            value = value[part]
        if fields[branch].get("counts") is not None:
            value = ak.values_astype(ak.num(value, axis=1), np.int32)  # as uproot's TTrees
        columns[branch] = value
    return ak.zip(columns, depth_limit=1)
