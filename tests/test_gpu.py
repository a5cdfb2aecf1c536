"""GPU training through xgboost.dask on a GPU-tagged worker (device=cuda).

These run only where a GPU is visible: benchmarks/gpu_check.sh runs them on the lent GPU
machine. Everywhere else (CI, laptops) they skip with the reason; the CPU-side placement
logic is tested in test_placement.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlaas_dask.cluster.local import visible_gpus

from conftest import write_events

pytestmark = [
    pytest.mark.slow,
    pytest.mark.gpu,
    pytest.mark.skipif(not visible_gpus(), reason="no GPU visible (CUDA_VISIBLE_DEVICES, "
                       "nvidia-smi): run benchmarks/gpu_check.sh on a GPU machine"),
]

JOB = """
dataset:
  step_size: 20000
  groups:
    - {{name: signal, files: [{sig}], label: 1}}
    - {{name: background, files: [{bkg}], label: 0}}
features:
  flat: [MET_pt]
  collections: {{Jet: {{fields: [pt, eta], n: 4}}}}
model: {{device: auto, num_boost_round: 30}}
"""


def test_auto_device_trains_with_cuda_on_the_gpu_worker(tmp_path: Path) -> None:
    from mlaas_dask.cluster import connect
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    sig = write_events(tmp_path / "sig.root", n=60_000, seed=1)
    bkg = write_events(tmp_path / "bkg.root", n=60_000, seed=2)
    job = job_from_text(JOB.format(sig=sig, bkg=bkg), base=tmp_path)
    with connect({"type": "local", "workers": 2, "gpu_workers": 1}) as client:
        result = train(job, cluster=client, out=tmp_path / "bundle", progress=False)
    meta = result.metadata
    assert meta["model"]["device"] == "cuda"
    assert meta["placement"]["train"]["workers"] == ["gpu-0"]
    assert "gpu-0" not in meta["placement"]["read_features"]["workers"]
    assert result.metrics["auc"] is not None
