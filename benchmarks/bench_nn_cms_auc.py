"""Network accuracy on the real CMS files: mlaas_dask vs a plain torch script, same split.

The data and features are examples/cms-hep-tutorial.yaml's (single top vs WW+WZ+ZZ, CMS
2012 Open Data from ../shared/data); its model block is replaced by examples/torch_mlp.py
(3 x 128), Adam 1e-3, batch 256, a fixed number of epochs (no early stopping, so both
train as long). The baseline reads the same files with uproot in one process, uses the
bundle's FeatureSpec, the same split (file + entry hash), NaN fill and standard scaling
fitted on the training rows, event weights with class balancing, and the same network,
seed, optimizer and batches; it scores the test rows with torch. Target: |AUC
difference| <= 0.01.

Usage: python benchmarks/bench_nn_cms_auc.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_nn_loader import example_network

from common import emit, job_arrays

REPO = Path(__file__).resolve().parents[1]


def plain_torch_auc(job, spec, epochs: int, batch_size: int) -> float:  # noqa: ANN001
    import torch
    from sklearn.metrics import roc_auc_score

    X, y, w, split = job_arrays(job, spec)
    X = np.where(np.isnan(X), 0.0, X).astype(np.float32)
    train = split == 0
    mean, std = X[train].mean(0), X[train].std(0)
    std[std == 0] = 1
    X = ((X - mean) / std).astype(np.float32)
    totals = np.array([w[train & (y == c)].sum() for c in (0, 1)])
    w = (w * (totals.sum() / (2 * totals))[y]).astype(np.float32)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    network = example_network(X.shape[1])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    xt, yt, wt = (torch.from_numpy(X[train]), torch.from_numpy(y[train].astype(np.float32)),
                  torch.from_numpy(w[train]))
    for _ in range(epochs):
        network.train()
        order = torch.randperm(len(yt))
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            optimizer.zero_grad()
            values = loss_fn(network(xt[index])[:, 0], yt[index])
            ((values * wt[index]).sum() / wt[index].sum()).backward()
            optimizer.step()
    with torch.no_grad():
        scores = torch.sigmoid(network.eval()(torch.from_numpy(X[split == 2])))[:, 0].numpy()
    return float(roc_auc_score(y[split == 2], scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    from mlaas_dask.bundle import ModelBundle
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    source = REPO / "examples" / "cms-hep-tutorial.yaml"
    text = source.read_text().split("\nmodel:")[0] + (
        f"\nmodel: {{file: {REPO / 'examples' / 'torch_mlp.py'}, epochs: {args.epochs}, "
        f"batch_size: {args.batch_size}, early_stopping_rounds: 0}}\n"
        "split: {train: 0.6, validation: 0.2, test: 0.2, seed: 42}\n")
    job = job_from_text(text, base=source.parent)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(job, cluster="local:2", out=f"{tmp}/b", progress=False)
        seconds = time.perf_counter() - start
        spec = ModelBundle.load(result.bundle).spec
    start = time.perf_counter()
    reference = plain_torch_auc(job, spec, args.epochs, args.batch_size)
    reference_seconds = time.perf_counter() - start
    emit("nn_cms_auc", {
        "events": result.metadata["data_summary"]["events_read"],
        "epochs": args.epochs, "batch_size": args.batch_size,
        "ours_auc": round(result.metrics["auc"], 5),
        "plain_torch_auc": round(reference, 5),
        "abs_difference": round(abs(result.metrics["auc"] - reference), 5),
        "target_abs_difference": 0.01,
        "ours_seconds": round(seconds, 2), "plain_torch_seconds": round(reference_seconds, 2),
    })


if __name__ == "__main__":
    main()
