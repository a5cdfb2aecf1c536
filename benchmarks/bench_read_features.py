"""Read+features throughput vs raw uproot, and the jagged kernel vs ak.pad_none.

Figures (one JSON line):
- ``ratio_1worker_vs_uproot``: mlaas_dask read+features on one worker with one thread,
  events/s, over raw ``TTree.arrays`` of the same branches into memory (target >= 0.8);
- ``ratio_2workers_vs_1``: two worker processes over one (target >= 1.7);
- ``kernel_speedup_vs_pad_none``: FeatureSpec.transform over ak.pad_none + ak.fill_none +
  ak.to_numpy per field on the same in-memory events.

Usage: python benchmarks/bench_read_features.py [--events 2000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import emit, sample_files, sample_job



def load(events: int, step: int):  # noqa: ANN201
    from mlaas_dask.job import job_from_text

    return job_from_text(sample_job(sample_files(events), step))


def uproot_baseline(job) -> tuple[float, int]:  # noqa: ANN001
    import uproot

    from mlaas_dask.train import _prepare

    branches = _prepare(job, lambda *a: None)[0].branches  # the same ones we read
    start = time.perf_counter()
    n = 0
    for group in job.dataset.groups:
        for path in group.files:
            with uproot.open(path) as handle:
                arrays = handle["Events"].arrays(branches)
            n += len(arrays)
            del arrays
    return time.perf_counter() - start, n


def ours(job, n_workers: int) -> tuple[float, int]:  # noqa: ANN001
    from distributed import Client, LocalCluster, wait

    from mlaas_dask.train import _prepare
    from mlaas_dask.train.matrix import build_matrices

    dataset, spec, plan = _prepare(job, lambda *a: None)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: None)
        start = time.perf_counter()
        matrices = build_matrices(client, dataset, plan, progress=False)
        wait(matrices.futures)
        seconds = time.perf_counter() - start
    return seconds, matrices.stats["events_read"]


def kernel_vs_pad_none(job) -> dict[str, float]:  # noqa: ANN001
    import awkward as ak
    import uproot

    spec = job.features
    with uproot.open(job.dataset.groups[0].files[0]) as handle:
        events = handle["Events"].arrays(spec.branches(), entry_stop=500_000)
    start = time.perf_counter()
    ours_matrix = spec.transform(events)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    columns = [np.asarray(events[b], dtype=np.float32)[:, None] for b in spec.flat]
    for collection in spec.collections.values():
        columns.append(np.asarray(ak.num(events[f"{collection.name}_{collection.fields[0]}"]),
                                  dtype=np.float32)[:, None])
        for field in collection.fields:  # stored by falling pt already: no sort needed
            values = events[f"{collection.name}_{field}"]
            padded = ak.fill_none(ak.pad_none(values, collection.n, clip=True), np.nan)
            columns.append(ak.to_numpy(padded).astype(np.float32))
    reference = np.hstack(columns)
    t_pad = time.perf_counter() - start
    np.testing.assert_array_equal(ours_matrix, reference)
    return {"kernel_seconds": round(t_ours, 3), "pad_none_seconds": round(t_pad, 3),
            "kernel_speedup_vs_pad_none": round(t_pad / t_ours, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--step-size", type=int, default=500_000)
    args = parser.parse_args()
    job = load(args.events, args.step_size)
    uproot_baseline(job)  # warm the page cache so that both read from memory
    t_base, n = uproot_baseline(job)
    t1, n1 = ours(job, 1)
    t2, n2 = ours(job, 2)
    assert n == n1 == n2
    figures = {
        "events": n,
        "uproot_arrays_events_per_s": round(n / t_base),
        "ours_1worker_events_per_s": round(n / t1),
        "ours_2workers_events_per_s": round(n / t2),
        "ratio_1worker_vs_uproot": round(t_base / t1, 3),
        "ratio_2workers_vs_1": round(t1 / t2, 3),
        **kernel_vs_pad_none(job),
    }
    emit("read_features", figures)


if __name__ == "__main__":
    main()
