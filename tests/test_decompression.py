"""ZLIB baskets inflated by ISA-L: the same arrays as the standard library's zlib."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import pytest
import uproot
import uproot.compression

from mlaas_dask.data.decompression import use_fastest_zlib, zlib_decoder
from mlaas_dask.data.remote import ReadPolicy, read_range
from mlaas_dask.data.sample import generate_sample


@pytest.fixture
def stock_zlib() -> Iterator[None]:
    decompressor = uproot.compression._decompress_ZLIB
    before = vars(decompressor).pop("library", None)
    try:
        yield
    finally:
        vars(decompressor).pop("library", None)
        if before is not None:
            decompressor.library = before


def test_reads_use_isal_and_give_the_same_arrays(tmp_path: Path, stock_zlib: None) -> None:
    files = generate_sample(tmp_path, 4_000, seed=3, compression="zlib:4", files_per_class=1)
    path = str(files["signal"][0])
    branches = ["MET_pt", "Jet_pt", "Jet_eta", "event"]
    assert zlib_decoder() == "zlib"
    with uproot.open(path) as handle:
        assert type(handle.file.compression).__name__ == "ZLIB"
        expected = handle["Events"].arrays(branches)
    events, _ = read_range([path], "Events", branches, 0, 2_000, 2_000, ReadPolicy(), "test")
    assert zlib_decoder() == "isal"  # set by the read itself, in this process
    assert ak.array_equal(events, expected)
    assert uproot.ZLIB(1).library == "zlib"  # writing is untouched
    assert use_fastest_zlib() == "isal"
