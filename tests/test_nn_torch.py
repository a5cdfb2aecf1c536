"""PyTorch model files end to end on a real LocalCluster with worker processes: ``mlaas
train`` -> an ONNX bundle whose scores equal torch's, ``mlaas predict`` and the server
(events endpoint, OIP JSON and binary) on it, and every bad input with its message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import events_of, torch_job

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.cli import main
from mlaas_dask.errors import ConfigError, MlaasError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train

from conftest import write_events

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

def train_cli(client, job: Path, out: Path, capsys) -> tuple[int, str, str]:
    code = main(["train", str(job), "--cluster", client.scheduler.address, "--out", str(out),
                 "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def torch_bundle(client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch MLP trained through the CLI on the generated sample (module-wide)."""
    tmp = tmp_path_factory.mktemp("torch")
    job = torch_job(tmp)
    code = main(["train", str(job), "--cluster", client.scheduler.address, "--out",
                 str(tmp / "bundle"), "--quiet"])
    assert code == 0
    return tmp / "bundle"


def by_torch(bundle: ModelBundle, matrix: np.ndarray) -> np.ndarray:
    """The bundle's network rebuilt from its model file and safetensors weights, applied
    with torch to the preprocessed matrix: the scores ONNX must reproduce."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("net_copy", bundle.path / "user_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.model(bundle.spec.n_features)
    network.load_state_dict(load_file(bundle.path / "weights.safetensors"))
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(bundle.preprocess.apply(matrix)))
    return torch.sigmoid(logits)[:, 0].numpy()


def test_torch_mlp_trains_through_the_cli(torch_bundle: Path, tmp_path: Path) -> None:
    # the evaluation report's files (report.html, report_*): tests/test_report.py
    names = sorted(p.name for p in torch_bundle.iterdir() if not p.name.startswith("report"))
    assert names == ["features.json", "learning_curve.png", "metadata.json", "metrics.json",
                     "model.onnx", "preprocess.json", "roc.png", "scores.png",
                     "user_model.py", "weights.safetensors"]
    assert not [p for p in torch_bundle.parent.iterdir() if p.name.startswith(".")]
    metrics = json.loads((torch_bundle / "metrics.json").read_text())
    assert metrics["auc"] > 0.75  # MET shifted by 40 GeV: 0.5 would be no learning
    assert metrics["epochs"] == 3 and len(metrics["history"]["train_loss"]) == 3
    assert metrics["history"]["validation_auc"][-1] > 0.75
    assert metrics["loader"]["mode"] == "memory"
    model = json.loads((torch_bundle / "metadata.json").read_text())["model"]
    assert model["kind"] == "torch" and model["file"] == "model.onnx"
    assert model["opset"] >= 17 and model["outputs"] == "logits"
    assert model["onnx_max_difference"] <= 1e-5
    assert (torch_bundle / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_onnx_scores_equal_torch_scores(torch_bundle: Path) -> None:
    bundle = ModelBundle.load(torch_bundle)
    assert bundle.kind == "onnx"
    events = events_of(torch_bundle.parent, "sig", bundle.spec)
    matrix = bundle.spec.transform(events)
    scores = bundle.predict_events(events)
    assert scores.shape == (len(matrix),) and scores.min() > 0 and scores.max() < 1
    np.testing.assert_allclose(scores, by_torch(bundle, matrix), rtol=0, atol=1e-5)


def test_predict_cli_round_trip(capsys, client, torch_bundle: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    source = torch_bundle.parent / "bkg.root"
    code = main(["predict", str(torch_bundle), str(source), "--out", str(tmp_path / "scores"),
                 "--cluster", client.scheduler.address, "--quiet"])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(tmp_path / "scores" / "scores.parquet").to_pandas()
    bundle = ModelBundle.load(torch_bundle)
    events = events_of(torch_bundle.parent, "bkg", bundle.spec)
    expected = by_torch(bundle, bundle.spec.transform(events))
    np.testing.assert_allclose(table.sort_values("entry")["score"].to_numpy(), expected,
                               rtol=0, atol=1e-5)


def test_server_round_trip(torch_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from mlaas_dask.client import Client
    from mlaas_dask.serve import ServeConfig, create_app

    from serve.conftest import TOKEN, run_uvicorn

    shutil.copytree(torch_bundle, tmp_path / "repo" / "net" / "1")
    app = create_app(ServeConfig(models=tmp_path / "repo", threads=2, poll_s=0), token=TOKEN)
    bundle = ModelBundle.load(torch_bundle)
    events = events_of(torch_bundle.parent, "sig", bundle.spec)[:500]
    matrix = bundle.spec.transform(events)
    expected = by_torch(bundle, matrix)
    with run_uvicorn(app) as live, Client(live.url, token=TOKEN) as http:
        np.testing.assert_allclose(http.score_events("net", events), expected, atol=1e-5)
        binary = http.infer("net", matrix, binary=True)
        np.testing.assert_allclose(binary["score"], expected, rtol=0, atol=1e-5)
        dense = np.nan_to_num(matrix)  # JSON carries no NaN
        json_scores = http.infer("net", dense, binary=False)["score"]
        np.testing.assert_allclose(json_scores, by_torch(bundle, dense), rtol=0, atol=1e-5)


THREE_CLASSES = '''\
import torch


def model(n_features):
    return torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1))
'''


def test_multiclass_network_with_probabilities(client, tmp_path: Path) -> None:
    torch_job(tmp_path, THREE_CLASSES, "epochs: 2, batch_size: 64, lr_schedule: cosine, "
              "optimizer: adamw, early_stopping_rounds: 0")
    rng = np.random.default_rng(5)
    write_events(tmp_path / "third.root", n=4000, seed=3,
                 extra={"MET_pt": (rng.exponential(30, 4000) + 90).astype(np.float32)})
    text = (tmp_path / "job.yaml").read_text().replace(
        "label: 1}", "label: 1}\n    - {name: third, files: [third.root], label: 2}")
    job = job_from_text(text, base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    assert result.metadata["model"]["outputs"] == "probabilities"
    assert result.metrics["auc"] > 0.7
    history = result.metrics["history"]["learning_rate"]
    assert history[0] == pytest.approx(1e-3) and history[1] < history[0]  # cosine
    bundle = ModelBundle.load(result.bundle)
    scores = bundle.predict_events(events_of(tmp_path, "third", bundle.spec))
    assert scores.shape == (4000, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_early_stopping_restores_the_best_epoch(client, tmp_path: Path) -> None:
    # a learning rate far too high for SGD with momentum: the validation loss stops
    # improving within a few epochs, and the bundle holds the best epoch, not the last
    torch_job(tmp_path, settings="epochs: 12, batch_size: 64, optimizer: sgd, "
                                 "learning_rate: 0.5, early_stopping_rounds: 2")
    job = job_from_text((tmp_path / "job.yaml").read_text(), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    metrics = result.metrics
    losses = metrics["history"]["validation_loss"]
    assert metrics["best_epoch"] == 1 + int(np.argmin(losses))
    assert metrics["epochs"] - metrics["best_epoch"] == 2 or metrics["epochs"] == 12
    saved = ModelBundle.load(result.bundle)
    assert saved.metadata["model"]["onnx_max_difference"] <= 1e-5


# -- bad input: one paragraph, no traceback, no bundle ------------------------------------

BAD_FILES = {
    "no_model": ("import torch\n\ndef build(n):\n    return torch.nn.Linear(n, 1)\n",
                 ["defines no model() function", "def model(n_features)"]),
    "not_a_network": ("import torch\n\ndef model(n):\n    return 42\n",
                      ["returned int", "neither a torch.nn.Module, a Keras model nor a "
                       "scikit-learn estimator"]),
    "wrong_width": ("import torch\n\ndef model(n):\n    return torch.nn.Linear(n, 3)\n",
                    ["gives 3 outputs per event", "2 classes", "torch.nn.Linear(hidden, 1)"]),
    "unexportable": (
        "import torch\n\nclass CumMax(torch.nn.Module):\n    def forward(self, x):\n"
        "        return torch.cummax(x, dim=1)[0]\n\n"
        "def model(n):\n    return torch.nn.Sequential(torch.nn.Linear(n, 4), CumMax(),\n"
        "                               torch.nn.Linear(4, 1))\n",
        ["cannot be stored as ONNX", "layer '1' (CumMax)", "cummax", "no bundle was written"]),
    "out_of_memory": (
        "import torch\n\nclass Greedy(torch.nn.Linear):\n    def forward(self, x):\n"
        "        if self.training:\n            torch.empty(2**43)  # 32 TB\n"
        "        return super().forward(x)\n\n"
        "def model(n):\n    return Greedy(n, 1)\n",
        ["Out of memory on cpu in epoch 1, batch 1", "Lower model.batch_size"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_model_files(capsys, client, tmp_path: Path, case: str) -> None:
    source, expected = BAD_FILES[case]
    job = torch_job(tmp_path, source, "epochs: 1, batch_size: 64, kind: torch")
    code, out, err = train_cli(client, job, tmp_path / "bundle", capsys)
    assert code == 2
    assert "Traceback" not in out + err
    message = err.split("error: ", 1)[1]
    for part in expected:
        assert part in message, message
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("settings,expected", [
    ("epochs: 2, batch_size: 64, optimizer: sgd, learning_rate: 1.0e+12",
     ["The training loss became", "in epoch 1", "lower model.learning_rate", "check the inputs"]),
    ("device: cuda", ["model.device is cuda but no worker of the cluster is tagged with a GPU",
                      "model.device: cpu"]),
    ("batch_size: 100000", ["model.batch_size is 100,000 but the training split holds",
                            "use a batch size of at most"]),
], ids=["nan_loss", "cuda_without_gpu", "batch_too_large"])
def test_bad_settings(capsys, client, tmp_path: Path, settings: str,
                      expected: list[str]) -> None:
    job = torch_job(tmp_path, settings=settings)
    code, out, err = train_cli(client, job, tmp_path / "bundle", capsys)
    assert code == 2 and "Traceback" not in out + err
    for part in expected:
        assert part in err, err
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_job_keys_are_validated(tmp_path: Path) -> None:
    torch_job(tmp_path)
    text = (tmp_path / "job.yaml").read_text()
    for bad, words in (("optimizer: rmsprop", ["model.optimizer", "adam", "adamw", "sgd"]),
                       ("lr_schedule: linear", ["model.lr_schedule", "cosine", "plateau"]),
                       ("learning_rate: -1", ["model.learning_rate"]),
                       ("outputs: scores", ["model.outputs", "logits", "probabilities"])):
        with pytest.raises(ConfigError) as err:
            job_from_text(text.replace("epochs: 3", bad), base=tmp_path)
        for word in words:
            assert word in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="a torch model needs 'file'"):
        job_from_text(text.replace("file: net.py", "class: x.Y, kind: torch"), base=tmp_path)


def test_kind_is_detected_and_checked(client, tmp_path: Path) -> None:
    torch_job(tmp_path)
    job = job_from_text((tmp_path / "job.yaml").read_text(), base=tmp_path)
    assert job.model.kind == "torch"
    (tmp_path / "sk.py").write_text("from sklearn.linear_model import SGDClassifier\n\n"
                                    "def model(n):\n    return SGDClassifier()\n")
    text = (tmp_path / "job.yaml").read_text().replace("file: net.py", "file: sk.py, kind: torch")
    job = job_from_text(text, base=tmp_path)
    with pytest.raises(MlaasError) as err:
        train(job, cluster=client, out=tmp_path / "b", progress=False)
    assert "returned a sklearn model (SGDClassifier)" in str(err.value)
    assert "Set model.kind: sklearn" in str(err.value)


DIES_IN_EPOCH_2 = '''\
import os

import torch

CALLS = [0]


class DiesInEpoch2(torch.nn.Linear):
    """Kills its worker process during the second epoch (44 batches an epoch here);
    the client never runs it in training mode."""

    def forward(self, x):
        if self.training:
            CALLS[0] += 1
            if CALLS[0] == 60:
                os._exit(1)
        return super().forward(x)


def model(n):
    return DiesInEpoch2(n, 1)
'''


def test_lost_training_worker_leaves_no_bundle(tmp_path: Path) -> None:
    """The training worker's process dies in epoch 2: the job fails saying so, with the
    epoch reached, and leaves neither a bundle nor its checkpoint folder."""
    from distributed import Client, LocalCluster

    torch_job(tmp_path, DIES_IN_EPOCH_2, "epochs: 5, batch_size: 128")
    job = job_from_text((tmp_path / "job.yaml").read_text(), base=tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as own, pytest.raises(MlaasError) as err:
        train(job, cluster=own, out=tmp_path / "bundle", progress=False)
    message = str(err.value)
    assert "left the cluster after epoch 1" in message, message
    assert "no bundle was written" in message
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ctrl_c_during_training_says_the_epoch_and_leaves_no_bundle(client,
                                                                      tmp_path: Path) -> None:
    """SIGINT to ``mlaas train`` once the first epoch line is out: exit 130, the epoch
    reached in the output, no bundle and no checkpoint folder."""
    import signal
    import subprocess
    import sys
    import time

    job = torch_job(tmp_path, settings="epochs: 20, batch_size: 32")
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "mlaas_dask", "train", str(job), "--cluster",
         client.scheduler.address, "--out", str(tmp_path / "bundle")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 240
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "epoch   1/20" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    output = "".join(lines) + out
    assert process.returncode == 130, err
    assert "Training interrupted after epoch" in output, output[-2000:]
    assert "no bundle was written" in output
    assert "Traceback" not in err
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the training task itself stops after its epoch (cancelling does not stop a running
    # task): the workers go idle long before the 20 epochs would be done
    deadline = time.monotonic() + 60
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(client.processing().values())


def _graph(n_in: int, n_out: int, external: bool = False) -> bytes:
    """A one-MatMul ONNX model (or one whose weights point to a file on disk)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((n_in, n_out), np.float32), "W")
    if external:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        entry = weights.external_data.add()
        entry.key, entry.value = "location", "/etc/hostname"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["probabilities"])], "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_out])],
        [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


@pytest.mark.parametrize("case,expected", [
    ("garbage", "is not a readable ONNX model"),
    ("external_weights", "is not a readable ONNX model"),
    ("wrong_width", "gives scores of shape (3,) per event; expected 1 for 2 classes"),
    ("wrong_features", "cannot score the {n} features that features.json describes"),
])
def test_bad_onnx_models_are_refused(torch_bundle: Path, tmp_path: Path, case: str,
                                     expected: str) -> None:
    import shutil

    from mlaas_dask.errors import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(torch_bundle, bundle)
    n = ModelBundle.load(torch_bundle).spec.n_features
    data = {"garbage": b"\x08\x01garbage", "external_weights": _graph(n, 1, external=True),
            "wrong_width": _graph(n, 3), "wrong_features": _graph(n + 2, 1)}[case]
    (bundle / "model.onnx").write_bytes(data)
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle)
    assert expected.format(n=n) in str(err.value), str(err.value)
    assert err.value.file == "model.onnx"


FACTORIES = '''\
import torch


class Seven(torch.nn.Module):
    """A loss of exactly 7 per batch (no per-event values: used unweighted)."""

    def forward(self, outputs, target):
        return (outputs * 0).sum() + 7.0


def model(n_features):
    return torch.nn.Linear(n_features, 1)


def loss():
    return Seven()


def optimizer(params):
    return torch.optim.SGD(params, lr=0.0)
'''


def test_loss_and_optimizer_factories_replace_the_defaults(client, tmp_path: Path) -> None:
    torch_job(tmp_path, FACTORIES, "epochs: 2, batch_size: 128, learning_rate: 0.1")
    job = job_from_text((tmp_path / "job.yaml").read_text(), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    history = result.metrics["history"]
    assert history["train_loss"] == [7.0, 7.0]  # the file's loss, not cross-entropy
    assert history["learning_rate"] == [0.0, 0.0]  # the file's optimizer, not adam at 0.1
