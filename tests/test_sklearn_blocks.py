"""The scikit-learn path's scaling fit and class-mixed training blocks, on worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dask.array as da
import numpy as np
import pytest
from dask import delayed

from mlaas_dask.features import Preprocess
from mlaas_dask.train.sklearn import MIX_WIDTH, fit_preprocess, mixed_blocks


@pytest.fixture
def on_workers(client: Any) -> Iterator[Callable[[list[np.ndarray]], Any]]:
    """Dask arrays whose blocks live on the workers, as build_matrices leaves them (the
    futures are held until the test ends)."""
    held: list[Any] = []

    def make(blocks: list[np.ndarray]) -> Any:
        futures = client.scatter(blocks)
        held.append(futures)
        return da.concatenate([da.from_delayed(delayed(f), shape=b.shape, dtype=b.dtype)
                              for f, b in zip(futures, blocks, strict=True)])

    yield make
    client.cancel([f for futures in held for f in futures])


def test_scaling_equals_dask_ml_standard_scaler(client: Any, on_workers: Any) -> None:
    from dask_ml.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    # a large offset (stability), NaN to fill, blocks of different sizes, an empty one
    blocks = [np.asfortranarray(rng.normal(1e4, 3, (rows, 5)).astype(np.float32))
              for rows in (3_000, 0, 1_234, 5_000)]
    for block in blocks:
        block[rng.random(block.shape) < 0.2] = np.nan
    x = on_workers(blocks)
    ours = fit_preprocess(client, x, fill_value=1e4, scale=True)
    filled = Preprocess(1e4).apply(np.concatenate(blocks))
    exact = filled.astype(np.float64)
    np.testing.assert_allclose(ours.mean, exact.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ours.scale, exact.std(axis=0), rtol=1e-6)
    # dask-ml works in float32 here: equal to its precision
    reference = StandardScaler().fit(da.from_array(filled, chunks=(2_000, 5)))
    np.testing.assert_allclose(ours.mean, reference.mean_, rtol=1e-6)
    np.testing.assert_allclose(ours.scale, reference.scale_, rtol=1e-3)
    assert fit_preprocess(client, x, fill_value=0.0, scale=False) == Preprocess(0.0)


@pytest.mark.parametrize("n_blocks", [4, 3 * MIX_WIDTH])
def test_every_block_mixes_partitions_and_no_row_is_lost(client: Any, on_workers: Any,
                                                        n_blocks: int) -> None:
    rng = np.random.default_rng(n_blocks)
    # one class per partition, as with one file per partition: half signal, then background
    sizes = rng.integers(50, 300, n_blocks)
    labels = [np.full(rows, int(i >= n_blocks // 2), np.int32) for i, rows in enumerate(sizes)]
    rows = [np.asfortranarray(rng.normal(size=(n, 3)).astype(np.float32)) for n in sizes]
    pre = Preprocess(0.0, (0.5, 0.0, -1.0), (2.0, 1.0, 4.0))
    x, y = mixed_blocks(on_workers(rows), on_workers(labels), pre)
    assert len(x.chunks[0]) == n_blocks and x.chunks == (x.chunks[0], (3,))
    # n * width slices of x and of y, not n**2
    slices = [key for key in dict(x.__dask_graph__()) if str(key).startswith("_rows")]
    assert len(slices) == 2 * n_blocks * min(n_blocks, MIX_WIDTH)
    xs, ys = client.compute([x, y], sync=True)
    expected = pre.apply(np.concatenate(rows))
    order, expected_order = np.lexsort(xs.T), np.lexsort(expected.T)
    np.testing.assert_array_equal(xs[order], expected[expected_order])
    np.testing.assert_array_equal(ys[order], np.concatenate(labels)[expected_order])
    for block in y.blocks:
        assert set(block.compute()) == {0, 1}, "a training block holds one class only"
