"""Writing TTrees with uproot (which writes RNTuples for ``file[name] = data``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def write_ttree(handle: Any, name: str, data: Mapping[str, Any], title: str = "") -> None:
    """Write ``data`` (numpy arrays, and awkward records of lists for collections, which
    become ``n<Name>`` + ``<Name>_<field>`` branches) as a TTree into an open uproot file."""
    import awkward as ak

    types = {key: value.type if isinstance(value, ak.Array) else np.asarray(value).dtype
             for key, value in data.items()}
    tree = handle.mktree(name, types, title=title)
    tree.extend(dict(data))
