"""Dynamic batching of raw events: merged requests give exactly their own results, and a
bad request in a batch fails alone."""

from __future__ import annotations

import asyncio

import awkward as ak
import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import FeatureError
from mlaas_dask.serve.batching import Batcher, PredictionPool
from mlaas_dask.serve.events import parse_events
from mlaas_dask.serve.runtime import ModelRuntime

from .conftest import Trained


@pytest.fixture
def runtime(trained: Trained):
    pool = PredictionPool(threads=2, max_queue_rows=10_000)
    yield ModelRuntime(ModelBundle.load(trained.path), pool, max_batch_size=256)
    pool.shutdown()


def parts_of(runtime: ModelRuntime, events: list[dict]) -> list:
    return [parse_events({"events": [e]}, runtime.branches, 10) for e in events]


def test_merged_events_equal_one_by_one(runtime: ModelRuntime, trained: Trained):
    rows = ak.to_list(trained.events[:40])
    rows[3]["MET_px"] = 12  # a whole number: an int64 column, kept out of the float merge
    parts = parts_of(runtime, rows)
    merged = runtime.score_events(parts)
    alone = [runtime.score_events([p])[0] for p in parts]
    expected = runtime.bundle.predict_events(trained.events[:40])
    for i, (a, b) in enumerate(zip(merged, alone, strict=True)):
        np.testing.assert_array_equal(a, b)
        if i != 3:
            np.testing.assert_allclose(a, expected[i:i + 1], atol=1e-6)


def test_a_bad_request_fails_alone(runtime: ModelRuntime, trained: Trained):
    rows = ak.to_list(trained.events[:5])
    rows[2]["Jet_E"] = rows[2]["Jet_E"] + [1.0]  # one object more than Jet_Px
    results = runtime.score_events(parts_of(runtime, rows))
    assert isinstance(results[2], FeatureError)
    assert "different numbers of objects" in str(results[2])
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, np.ndarray) and r.shape == (1,) for r in good)


def test_batcher_merges_concurrent_requests():
    calls: list[int] = []

    def run(payloads):
        calls.append(len(payloads))
        return [p * 2 for p in payloads]

    async def main():
        pool = PredictionPool(threads=1, max_queue_rows=100)
        batcher = Batcher(run, pool, max_batch_size=8)
        try:
            return await asyncio.gather(*(batcher.submit(i, 1) for i in range(20)))
        finally:
            pool.shutdown()

    assert asyncio.run(main()) == [i * 2 for i in range(20)]
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) < 20
