"""TTrees in ROOT files: finding one by name (one set of messages for every reader), and
writing them with uproot (which writes RNTuples for ``file[name] = data``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlaas_dask.errors import DataError, did_you_mean

#: the classes that are read as TTrees
TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")
#: what to do about a tree name the file does not have, whoever gave it
TREE_ADVICE = ("Give one of them as the tree (dataset.tree in a job file, --tree for "
               "mlaas inspect).")


def object_classes(handle: Any) -> dict[str, str]:
    """Every object of an open uproot file, by path (subdirectories included, cycle numbers
    left out), with its class name."""
    return {str(k): str(v) for k, v in handle.classnames(recursive=True, cycle=False).items()}


def tree_names(classes: Mapping[str, str]) -> list[str]:
    """The paths of the TTrees among :func:`object_classes`."""
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
        file has (``key``, ``available``), or saying that the object is an RNTuple or that
        the file holds no TTree at all.
    """
    wanted = tree.strip("/").split(";")[0]
    names = tree_names(classes)
    if wanted in names:
        return wanted
    by_base = [name for name in names if name.rsplit("/", 1)[-1] == wanted]
    if by_base_name and len(by_base) == 1:
        return by_base[0]
    if "RNTuple" in classes.get(wanted, ""):
        message = (f"In {where}, {wanted!r} is an RNTuple, not a TTree; mlaas_dask reads "
                   "TTrees. Convert it, or write the data as a TTree (uproot: "
                   "file.mktree(...)).")
    elif not names:
        held = ", ".join(f"{k} ({v})" for k, v in classes.items()) or "nothing"
        message = (f"{where} has no TTree (it holds: {held}), so there is no tree {tree!r} "
                   "to read.")
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
