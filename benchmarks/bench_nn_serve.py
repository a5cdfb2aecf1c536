"""Serving a neural network: ``mlaas serve`` (binary OIP tensors, 1000 rows per request)
vs in-process onnxruntime, same run, on 127.0.0.1.

1. trains examples/torch_mlp.py (3 x 128) on the generated sample (one epoch: the
   weights do not change the cost of scoring) into a model repository;
2. the in-process ceiling: ``ModelBundle.predict_matrix`` (preprocessing + the ONNX
   session) on 1000-row matrices with the real missing values, one thread and one thread
   per core (bench_serve.ceiling); also the bare onnxruntime session on preprocessed rows;
3. ``mlaas serve`` in its own process, driven by bench_serve's load generator (a separate
   process, keep-alive HTTP/1.1, closed loop) with binary OIP requests of 1000 rows at
   concurrency 4.

Target: served rows/s >= 0.5 of the in-process ceiling.

Usage: python benchmarks/bench_nn_serve.py [--events 200000] [--duration 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import emit, sample_files, sample_job

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def session_rows_per_s(bundle, rows: np.ndarray, seconds: float = 3.0) -> float:  # noqa: ANN001
    """The bare ONNX session on preprocessed rows, one thread."""
    ready = bundle.preprocess.apply(rows)
    model = bundle.model
    model.predict(ready)
    count, stop_at = 0, time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        model.predict(ready)
        count += 1
    return round(count * len(rows) / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    import bench_serve
    import uproot

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    files = sample_files(args.events)
    model = (f"\nmodel: {{file: {REPO / 'examples' / 'torch_mlp.py'}, epochs: 1, "
             "batch_size: 512, early_stopping_rounds: 0}\n")
    job = job_from_text(sample_job(files, step=250_000, rest=model))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = train(job, cluster="local:2", out=tmp / "b", progress=False)
        repo = tmp / "repo"
        shutil.copytree(result.bundle, repo / "net" / "1")
        bundle = ModelBundle.load(result.bundle)
        with uproot.open(files["signal"][0]) as handle:
            events = handle["Events"].arrays(bundle.spec.branches(), entry_stop=20_000)
        matrix = bundle.spec.transform(events)
        rows = bench_serve._tile(matrix, 1000)
        ceiling = bench_serve.ceiling(result.bundle, matrix)["nan"]
        bare = session_rows_per_s(bundle, rows)
        port = bench_serve.free_port()
        server = bench_serve.start_mlaas(repo, port, tmp / "serve.log",
                                         grpc_port=bench_serve.free_port())
        try:
            bench_serve.wait_ready(port, server)
            bodies = [bench_serve.oip_binary(bench_serve._tile(matrix[i * 1000:], 1000))
                      for i in range(4)]
            served = bench_serve.run_scenario(tmp, "binary_1000", port, "/v2/models/net/infer",
                                              bodies, 1000, args.concurrency, args)
        finally:
            bench_serve.stop(server)
    served_rows = served["rows_per_s"]
    emit("nn_serve", {
        "features": int(matrix.shape[1]), "rows_per_request": 1000,
        "concurrency": args.concurrency,
        "served": served,
        "in_process_rows_per_s": ceiling,
        "bare_session_rows_per_s_1_thread": bare,
        "ratio_served_vs_in_process": (round(served_rows / ceiling["rows_per_s"], 3)
                                       if served_rows else None),
        "target_ratio": 0.5,
    })


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
