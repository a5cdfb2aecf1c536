"""The train / validation / test split: deterministic, by event, with the asked fractions."""

from __future__ import annotations

import numpy as np

from mlaas_dask.train.split import TEST, TRAIN, VALIDATION, assign_split, event_hash


def _ids(n: int, start: int = 0) -> list[np.ndarray]:
    event = np.arange(start, start + n, dtype=np.uint64)
    return [np.full(n, 1, np.uint32), event // np.uint64(1000), event]


def test_fractions_follow_the_request() -> None:
    split = assign_split(_ids(200_000), 0.6, 0.2, seed=7)
    counts = np.bincount(split, minlength=3) / split.size
    # binomial standard deviation at n = 200k is about 0.001
    np.testing.assert_allclose(counts[[TRAIN, VALIDATION, TEST]], [0.6, 0.2, 0.2], atol=0.005)


def test_same_event_same_split_whatever_the_partitioning() -> None:
    whole = assign_split(_ids(10_000), 0.7, 0.15, seed=3)
    parts = np.concatenate([assign_split(_ids(2_500, start), 0.7, 0.15, seed=3)
                            for start in range(0, 10_000, 2_500)])
    np.testing.assert_array_equal(whole, parts)
    shuffled = np.random.default_rng(0).permutation(10_000)
    ids = [column[shuffled] for column in _ids(10_000)]
    np.testing.assert_array_equal(assign_split(ids, 0.7, 0.15, seed=3), whole[shuffled])


def test_seed_changes_the_split_and_hash_is_uniform() -> None:
    a = assign_split(_ids(10_000), 0.5, 0.25, seed=1)
    b = assign_split(_ids(10_000), 0.5, 0.25, seed=2)
    assert 0.3 < np.mean(a != b) < 0.8  # independent splits disagree on about 5/8
    u = event_hash(_ids(100_000), seed=0)
    assert u.min() >= 0 and u.max() < 1
    histogram = np.histogram(u, bins=10, range=(0, 1))[0]
    assert histogram.min() > 9_500 and histogram.max() < 10_500


def test_consecutive_events_do_not_cluster() -> None:
    # sequential event numbers (as in real runs) must not give runs of one split
    split = assign_split(_ids(50_000), 0.5, 0.25, seed=0)
    same_as_next = np.mean(split[1:] == split[:-1])
    assert abs(same_as_next - (0.5**2 + 0.25**2 + 0.25**2)) < 0.01
