"""Deterministic train / validation / test assignment by event.

Each event's split comes from a 64-bit hash of its identity -- (run, luminosityBlock, event)
when the files have them, else (file, entry) -- and a seed, so it does not depend on how
the data are partitioned, on the cluster, or on the order of files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised, in place on ``x`` (a fresh uint64 array)."""
    with np.errstate(over="ignore"):
        x += _GOLDEN
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
        return x


def event_hash(ids: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """A uniform float in [0, 1) per event from its id columns and a seed."""
    if not ids:
        raise ValueError("at least one id column is needed")
    h = _mix(np.full(len(ids[0]), np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    for column in ids:
        h ^= np.asarray(column).astype(np.uint64, copy=False)
        h = _mix(h)  # a bijection: distinct ids stay distinct, and their bits are mixed
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def assign_split(
    ids: Sequence[np.ndarray], train: float, validation: float, seed: int
) -> np.ndarray:
    """The split (TRAIN, VALIDATION or TEST, as int8) of each event."""
    u = event_hash(ids, seed)
    split = np.full(u.shape, TEST, dtype=np.int8)
    split[u < train + validation] = VALIDATION
    split[u < train] = TRAIN
    return split


def file_key(path: str) -> int:
    """A stable 63-bit number for a file name (its base name: moving the dataset to
    another site does not change the split)."""
    import hashlib
    import os

    digest = hashlib.blake2b(os.path.basename(path).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
