"""Read+features throughput vs raw uproot, and the jagged kernel vs ak.pad_none.

Figures (one JSON line). The four kinds of run (uproot with zlib, uproot with ISA-L, ours on
one worker, ours on two) take turns, ``--repeat`` rounds after a warm-up round that is not
counted, so that the noise of this shared machine hits them alike; each time is a median.
- ``ratio_1worker_vs_uproot``: mlaas_dask read+features on one worker with one thread,
  events/s, over raw ``TTree.arrays`` of the same branches into memory, as uproot reads
  by default (standard-library zlib) (target >= 0.8);
- ``ratio_1worker_vs_uproot_same_decoder``: the same, with the baseline inflating ZLIB
  baskets with ISA-L as mlaas_dask does (what the features and Dask cost on top of the
  read itself);
- ``ratio_2workers_vs_1``: two worker processes over one (target >= 1.7), next to
  ``uproot_2processes_vs_1``: the same files read by raw uproot (ISA-L) in two processes
  over one -- what this machine allows two processes at all;
- ``transform_speedup_vs_pad_none``: FeatureSpec.transform (its numpy path, the default)
  over ak.pad_none + ak.fill_none + ak.to_numpy per field on the same in-memory events;
  ``numba_kernel_speedup_vs_numpy_path``: the opt-in compiled kernels
  (``MLAAS_KERNELS=numba``, mlaas_dask.features.kernels) over the numpy path, which
  writes the same matrix. The benchmark's workers take the path ``MLAAS_KERNELS`` says.

Usage: python benchmarks/bench_read_features.py [--events 2000000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import emit, sample_files, sample_job


def load(events: int, step: int):  # noqa: ANN201
    from mlaas_dask.job import job_from_text

    return job_from_text(sample_job(sample_files(events), step))


def _paths_and_branches(job) -> tuple[list[str], list[str]]:  # noqa: ANN001
    from mlaas_dask.train import prepare

    branches = list(prepare(job).dataset.branches)  # the same ones we read
    return [str(p) for group in job.dataset.groups for p in group.files], branches


def _uproot_files(paths: list[str], branches: list[str], decoder: str) -> int:
    """Raw ``TTree.arrays`` of ``branches`` of every file, into memory; the events read."""
    import uproot

    from mlaas_dask.data.decompression import set_zlib_decoder

    set_zlib_decoder(decoder)
    n = 0
    for path in paths:
        with uproot.open(path) as handle:
            n += len(handle["Events"].arrays(branches))
    return n


def uproot_baseline(job, decoder: str) -> tuple[float, int]:  # noqa: ANN001
    paths, branches = _paths_and_branches(job)
    start = time.perf_counter()
    n = _uproot_files(paths, branches, decoder)
    return time.perf_counter() - start, n


def uproot_processes(pool, job, processes: int) -> tuple[float, int]:  # noqa: ANN001
    """Raw uproot (ISA-L) over the same files, split between ``processes`` processes."""
    paths, branches = _paths_and_branches(job)
    shares = [paths[i::processes] for i in range(processes)]
    start = time.perf_counter()
    n = sum(pool.map(_uproot_files, shares, [branches] * processes, ["isal"] * processes))
    return time.perf_counter() - start, n


def _import_reader() -> None:
    """Imports a worker needs before its first partition (the baseline's are done too)."""
    import mlaas_dask.train.matrix  # noqa: F401  (uproot, awkward, numpy)


def ours(client, job) -> tuple[float, int]:  # noqa: ANN001
    """The read+features stage of ``mlaas train`` on the cluster of ``client``."""
    from distributed import wait

    from mlaas_dask.train import prepare
    from mlaas_dask.train.matrix import build_matrices

    prepared = prepare(job)
    dataset, plan = prepared.dataset, prepared.plan
    start = time.perf_counter()
    matrices = build_matrices(client, dataset, plan, progress=False)
    wait(matrices.futures)
    seconds = time.perf_counter() - start
    client.cancel(matrices.futures)
    return seconds, matrices.stats["events_read"]


def kernel_vs_pad_none(job) -> dict[str, float]:  # noqa: ANN001
    import awkward as ak
    import uproot

    spec = job.features
    with uproot.open(job.dataset.groups[0].files[0]) as handle:
        events = handle["Events"].arrays(spec.branches(), entry_stop=500_000)
    import os

    before = os.environ.get("MLAAS_KERNELS")
    os.environ["MLAAS_KERNELS"] = "numba"  # the compiled kernels (opt-in)
    spec.transform(events[:20_000])  # compiles (or loads) them, not counted
    start = time.perf_counter()
    kernel_matrix = spec.transform(events)
    t_kernel = time.perf_counter() - start
    os.environ["MLAAS_KERNELS"] = "numpy"
    start = time.perf_counter()
    ours_matrix = spec.transform(events)
    t_ours = time.perf_counter() - start
    if before is None:
        del os.environ["MLAAS_KERNELS"]
    else:
        os.environ["MLAAS_KERNELS"] = before
    np.testing.assert_array_equal(ours_matrix, kernel_matrix)
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
    return {"transform_seconds": round(t_ours, 3), "numba_kernel_seconds": round(t_kernel, 3),
            "pad_none_seconds": round(t_pad, 3),
            "transform_speedup_vs_pad_none": round(t_pad / t_ours, 2),
            "numba_kernel_speedup_vs_numpy_path": round(t_ours / t_kernel, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--step-size", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from mlaas_dask.cluster import connect
    from mlaas_dask.data.decompression import zlib_decoder

    job = load(args.events, args.step_size)
    times: dict[str, list[float]] = {}
    counts = set()
    from concurrent.futures import ProcessPoolExecutor

    with connect("local:1") as one, connect("local:2") as two, \
            ProcessPoolExecutor(2) as pool:
        for client in (one, two):
            client.run(_import_reader)
        runs = {"uproot_zlib": lambda: uproot_baseline(job, "zlib"),
                "uproot_isal": lambda: uproot_baseline(job, "isal"),
                "ours_1": lambda: ours(one, job), "ours_2": lambda: ours(two, job),
                "uproot_isal_1process": lambda: uproot_processes(pool, job, 1),
                "uproot_isal_2processes": lambda: uproot_processes(pool, job, 2)}
        for round_ in range(args.repeat + 1):
            for kind, run in runs.items():
                seconds, n = run()
                counts.add(n)
                if round_:  # round 0 warms the page cache, imports and first calls
                    times.setdefault(kind, []).append(seconds)
        decoder = sorted(set(one.run(zlib_decoder).values()))[0]
    assert len(counts) == 1, counts
    n = counts.pop()
    t = {kind: statistics.median(values) for kind, values in times.items()}
    figures = {
        "events": n,
        "repeat": args.repeat,
        "our_zlib_decoder": decoder,
        "uproot_arrays_events_per_s": round(n / t["uproot_zlib"]),
        "uproot_arrays_isal_events_per_s": round(n / t["uproot_isal"]),
        "ours_1worker_events_per_s": round(n / t["ours_1"]),
        "ours_2workers_events_per_s": round(n / t["ours_2"]),
        "ratio_1worker_vs_uproot": round(t["uproot_zlib"] / t["ours_1"], 3),
        "ratio_1worker_vs_uproot_same_decoder": round(t["uproot_isal"] / t["ours_1"], 3),
        "ratio_2workers_vs_1": round(t["ours_1"] / t["ours_2"], 3),
        "uproot_2processes_vs_1": round(t["uproot_isal_1process"]
                                        / t["uproot_isal_2processes"], 3),
        "seconds": {kind: [round(v, 2) for v in values] for kind, values in times.items()},
        **kernel_vs_pad_none(job),
    }
    emit("read_features", figures)


if __name__ == "__main__":
    main()
