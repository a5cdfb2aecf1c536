"""Jobs, files and bundles that several test modules share (one place, so that test
modules never import each other). Fixtures live in conftest.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot
import xgboost

from mlaas_dask.bundle import write_bundle
from mlaas_dask.features import Collection, FeatureSpec

from conftest import write_events

quiet = {"progress": False}


def small_job(tmp_path: Path, extra: str = "", features: str | None = None) -> str:
    """A small XGBoost job on two generated files in ``tmp_path`` (sig.root, bkg.root)."""
    rng = np.random.default_rng(7)
    write_events(tmp_path / "sig.root", n=3000, seed=1,
                 extra={"MET_pt": rng.exponential(60, 3000).astype(np.float32)})
    write_events(tmp_path / "bkg.root", n=3000, seed=2)
    return f"""
dataset:
  step_size: 1000
  groups:
    - {{name: sig, files: [sig.root], label: 1}}
    - {{name: bkg, files: [bkg.root], label: 0}}
{extra}
features: {features or "{flat: [MET_pt], collections: {Jet: {fields: [pt, eta], n: 3}}}"}
model: {{num_boost_round: 30, early_stopping_rounds: 5, params: {{max_depth: 3}}}}
"""


SGD = "{class: sklearn.linear_model.SGDClassifier, params: {loss: log_loss}, epochs: 3}"


def sample_job(tmp_path: Path, model: str, n: int = 4000, step: int = 1000) -> str:
    """A job on a signal with harder MET than its background (linearly separable)."""
    text = small_job(tmp_path).replace("step_size: 1000", f"step_size: {step}")
    rng = np.random.default_rng(3)
    # signal: MET shifted up by 40 GeV, so a linear model can separate it well
    write_events(tmp_path / "sig.root", n=n, seed=1,
                 extra={"MET_pt": (rng.exponential(30, n) + 40).astype(np.float32)})
    write_events(tmp_path / "bkg.root", n=n, seed=2)
    return text.split("model:")[0] + f"model: {model}\n"


def events_of(tmp_path: Path, name: str, spec) -> object:
    with uproot.open(tmp_path / f"{name}.root") as handle:
        return handle["Events"].arrays(spec.branches())


def write_mlaas4hep(tmp_path: Path, hep_tutorial: Path,
                    labels: str = "files") -> dict[str, Path]:
    """An MLaaS4HEP job in its documented format (params.json, files.txt, labels.txt,
    preproc.json) on the CMS HEP-tutorial files."""
    files = [hep_tutorial / "single_top.root", hep_tutorial / "ww.root"]
    (tmp_path / "files.txt").write_text("# signal then background\n"
                                        + "\n".join(str(f) for f in files) + "\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    params = {"nevts": 30000, "shuffle": True, "chunk_size": 2000, "epochs": 5,
              "batch_size": 100, "identifier": "", "branch": "events",
              "selected_branches": "", "exclude_branches": ["EventWeight", "triggerIsoMu24"],
              "hist": "pdfs", "redirector": "", "verbose": 1}
    (tmp_path / "params.json").write_text(json.dumps(params))
    preproc = {
        "new_branch": {"MET_square": {"def": "MET_px**2 + MET_py**2", "type": "flat",
                                      "cut": "MET_square<1e6", "remove": "False",
                                      "keys_to_remove": ["MET_px"]}},
        "flat_cut": {"NJet": {"cut": "0<=NJet<=8", "remove": "False"}},
        "jagged_cut": {"Muon_Iso": {"cut": ["Muon_Iso>=0", "all"], "remove": "False"}},
    }
    (tmp_path / "preproc.json").write_text(json.dumps(preproc))
    return {"params": tmp_path / "params.json", "files": tmp_path / "files.txt",
            "labels": tmp_path / "labels.txt", "preproc": tmp_path / "preproc.json"}


SPEC = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=2)})


def tiny_model(n_features: int = 4) -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, n_features)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2},
                            xgboost.DMatrix(X, y), 5)
    return bytes(booster.save_raw("ubj"))


def make_bundle(path: Path, **kwargs) -> Path:
    return write_bundle(path, model=tiny_model(), spec=SPEC,
                        metadata={"classes": ["background", "signal"]},
                        metrics={"auc": 0.9}, **kwargs)


#: the features of the dask-awkward tests
DAK_FEATURES = ("{flat: [MET_pt], collections: {Jet: {fields: [pt, eta], n: 3}}, "
            "derived: {HT: 'sum(Jet_pt)'}}")


def nano_file(path: Path, seed: int, met_scale: float, n: int = 3000) -> Path:
    """NanoAOD-like events with the fields coffea's NanoAODSchema needs for jets
    (pt, eta, phi, mass) and MET (pt, phi)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3, n)
    total = int(counts.sum())
    pt = ak.sort(ak.unflatten(rng.exponential(40, total).astype(np.float32) + 20, counts),
                 axis=1, ascending=False)

    def per_jet(values: np.ndarray) -> Any:
        return ak.unflatten(values.astype(np.float32), counts)

    jets = ak.zip({"pt": pt, "eta": per_jet(rng.normal(0, 1.5, total)),
                   "phi": per_jet(rng.uniform(-3, 3, total)),
                   "mass": per_jet(rng.exponential(5, total))})
    return write_events(path, n=n, seed=seed, extra={
        "Jet": jets, "MET_pt": rng.exponential(met_scale, n).astype(np.float32),
        "MET_phi": rng.uniform(-3, 3, n).astype(np.float32)})


#: a small torch network file of the dask-awkward tests
DAK_MLP = """\
import torch


def model(n_features):
    return torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 1))
"""


def dak_job_text(folder: Path, model: str, multiclass: bool = False) -> str:
    third = "    - {name: third, files: [third.root], label: WJets}\n" if multiclass else ""
    labels = ("ttH", "QCD") if multiclass else (1, 0)
    return f"""
dataset:
  step_size: 1000
  groups:
    - {{name: sig, files: [sig.root], label: {labels[0]}}}
{third}    - {{name: bkg, files: [bkg.root], label: {labels[1]}}}
features: {DAK_FEATURES}
model: {model}
"""


#: one model per bundle kind of the dask-awkward tests
DAK_MODELS = {
    "xgboost": "{num_boost_round: 20, params: {max_depth: 3}}",
    "sklearn": "{class: sklearn.linear_model.SGDClassifier, params: {loss: log_loss}}",
    "onnx": "{file: net.py, epochs: 1, batch_size: 256}",
}


#: a small torch network file (2 hidden layers of 32)
TORCH_MLP = '''\
import torch


def model(n_features):
    return torch.nn.Sequential(torch.nn.Linear(n_features, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 1))
'''


def torch_job(tmp_path: Path, source: str = TORCH_MLP, settings: str = "epochs: 3, batch_size: 128",
              n: int = 4000) -> Path:
    """A job file training the network ``source`` on :func:`sample_job`'s files."""
    (tmp_path / "net.py").write_text(textwrap.dedent(source))
    job = tmp_path / "job.yaml"
    job.write_text(sample_job(tmp_path, f"{{file: net.py, {settings}}}", n=n))
    return job
