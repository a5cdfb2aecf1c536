"""Keras 3 model files (issue 12, item 1): trained on Keras' torch backend through the same
loader, trainer and ONNX export as torch networks, end to end through ``mlaas train`` on a
real LocalCluster with worker processes; the compiled loss and optimizer carried over;
ONNX scores equal Keras' own predict; what cannot be mapped refused with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import events_of, sample_job

from mlaas_dask.errors import ConfigError
from mlaas_dask.nn.keras import (
    compiled_settings,
    load_weights,
    make_loss,
    make_optimizer,
    prefer_torch,
    wrap,
)

prefer_torch()  # before the first 'import keras' of this process
pytest.importorskip("torch")
pytest.importorskip("keras")

KERAS_MLP = '''\
import keras


def model(n_features):
    network = keras.Sequential([
        keras.Input((n_features,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    network.compile(loss="binary_crossentropy",
                    optimizer=keras.optimizers.Adam(learning_rate=0.005),
                    metrics=["accuracy"])
    return network
'''


def keras_job(tmp_path: Path, source: str = KERAS_MLP,
              settings: str = "epochs: 3, batch_size: 128") -> Path:
    (tmp_path / "net.py").write_text(textwrap.dedent(source))
    job = tmp_path / "job.yaml"
    job.write_text(sample_job(tmp_path, f"{{file: net.py, {settings}}}", n=4000))
    return job


@pytest.fixture(scope="module")
def keras_bundle(client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Keras MLP trained through the CLI on the generated sample."""
    from mlaas_dask.cli import main

    tmp = tmp_path_factory.mktemp("keras")
    code = main(["train", str(keras_job(tmp)), "--cluster", client.scheduler.address,
                 "--out", str(tmp / "bundle"), "--quiet"])
    assert code == 0
    return tmp / "bundle"


def user_model(bundle: Path):
    """The bundle's model file imported anew (its model() builds a fresh Keras model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keras_net_copy", bundle / "user_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_keras_model_trains_through_the_cli_with_its_compiled_settings(
        keras_bundle: Path) -> None:
    from mlaas_dask.bundle import ModelBundle

    bundle = ModelBundle.load(keras_bundle)
    assert bundle.kind == "onnx"
    metadata = json.loads((keras_bundle / "metadata.json").read_text())["model"]
    assert metadata["kind"] == "keras" and metadata["format"] == "onnx"
    compiled = metadata["keras"]["compiled"]
    assert compiled["loss"]["family"] == "binary" and not compiled["loss"]["from_logits"]
    assert compiled["optimizer"]["name"] == "adam"
    assert compiled["optimizer"]["learning_rate"] == pytest.approx(0.005)
    assert metadata["outputs"] == "probabilities"
    metrics = json.loads((keras_bundle / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["auc"] > 0.75  # 0.5: no learning
    assert (keras_bundle / "learning_curve.png").is_file()


@pytest.mark.slow
def test_onnx_scores_equal_keras_predict(keras_bundle: Path, tmp_path: Path) -> None:
    """The bundle's weights loaded into a fresh Keras model of the same file: Keras'
    predict on the preprocessed events equals the bundle's ONNX scores (1e-5)."""
    from mlaas_dask.bundle import ModelBundle

    bundle = ModelBundle.load(keras_bundle)
    sample = keras_bundle.parent  # the module fixture's folder holds sig.root, bkg.root
    matrix = np.concatenate([bundle.spec.transform(events_of(sample, name, bundle.spec))
                             for name in ("sig", "bkg")])
    network = load_weights(user_model(keras_bundle).model(bundle.spec.n_features),
                           keras_bundle / "weights.safetensors")
    by_keras = network.predict(bundle.preprocess.apply(matrix), verbose=0)[:, 0]
    by_onnx = np.asarray(bundle.predict_matrix(matrix))
    assert by_onnx.shape == by_keras.shape == (len(matrix),)
    assert np.max(np.abs(by_onnx - by_keras)) <= 1e-5
    assert by_keras.std() > 0.05  # trained scores, not a constant


def test_weights_have_stable_names_and_dropout_follows_train_mode() -> None:
    import keras
    import torch

    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(1)])

    first, second = wrap(build()), wrap(build())  # Keras names them dense, dense_2...
    assert list(first.state_dict()) == list(second.state_dict())
    assert [n for n in first.state_dict() if "kernel" in n] == ["w000_kernel", "w003_kernel"]
    second.load_state_dict(first.state_dict())
    x = torch.randn(64, 4)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), second.eval()(x))
        first.train()
        assert not torch.equal(first(x), first(x))  # Dropout drops when training


def compiled(loss: object, optimizer: object, n_classes: int = 2) -> dict:
    import keras

    network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        1 if n_classes == 2 else n_classes)])
    network.compile(loss=loss, optimizer=optimizer)
    return compiled_settings(network, "net.py", n_classes)


def test_compiled_losses_and_optimizers_map_to_torch() -> None:
    import keras
    import torch

    settings = compiled(keras.losses.BinaryCrossentropy(from_logits=True),
                        keras.optimizers.SGD(learning_rate=0.1, momentum=0.5, nesterov=True))
    assert settings["loss"]["from_logits"] is True
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(settings["optimizer"], parameters)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == pytest.approx(0.1) and sgd.defaults["momentum"] == 0.5
    assert sgd.defaults["nesterov"] is True
    # Keras' weight decay is decoupled: AdamW; its epsilon is carried over
    adam = make_optimizer(compiled("bce", keras.optimizers.Adam(
        weight_decay=0.01, epsilon=1e-6))["optimizer"], parameters)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["eps"] == 1e-6
    # the torch loss equals Keras' own on the same outputs
    outputs = torch.tensor([[0.2], [3.0], [-1.0]])
    target = torch.tensor([[0.0], [1.0], [1.0]])
    ours = make_loss(settings["loss"])(outputs, target)
    theirs = keras.losses.BinaryCrossentropy(from_logits=True)(target, outputs)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    multi = compiled(keras.losses.SparseCategoricalCrossentropy(), "rmsprop", n_classes=3)
    probabilities = torch.softmax(torch.randn(5, 3), -1)
    labels = torch.tensor([0, 2, 1, 1, 0])
    ours = make_loss(multi["loss"])(probabilities, labels)
    theirs = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)
    assert isinstance(make_optimizer(multi["optimizer"], parameters), torch.optim.RMSprop)


@pytest.mark.parametrize("loss, optimizer, message", [
    ("hinge", "adam", "compiled with loss 'hinge', which mlaas cannot train on torch"),
    ("bce", "lion", "Lion optimizer, which has no torch equivalent here"),
    ("bce", "clip", "sets clipnorm=1.0, which mlaas does not carry over to torch"),
    ("bce", "schedule", "has a learning-rate schedule"),
])
def test_unmapped_compile_settings_are_refused(loss: str, optimizer: str,
                                               message: str) -> None:
    import keras

    optimizers = {
        "adam": "adam", "lion": keras.optimizers.Lion(),
        "clip": keras.optimizers.Adam(clipnorm=1.0),
        "schedule": keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(
            0.01, 100, 0.9)),
    }
    with pytest.raises(ConfigError, match=r"net\.py") as caught:
        compiled(loss, optimizers[optimizer])
    assert message in str(caught.value)


def test_another_keras_backend_is_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(KERAS_MLP)
    job = tmp_path / "job.yaml"
    job.write_text("dataset:\n  groups: [{name: s, files: [s.root], label: 1}, "
                   "{name: b, files: [b.root], label: 0}]\n"
                   "features: {flat: [MET_pt]}\nmodel: {file: net.py}\n")
    done = subprocess.run([sys.executable, "-m", "mlaas_dask", "train", str(job)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode != 0
    assert "KERAS_BACKEND is 'jax'" in done.stderr + done.stdout
    assert "set KERAS_BACKEND=torch" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_keras_model_trains_data_parallel(capsys, client, tmp_path: Path) -> None:
    """The same data-parallel path as torch networks: the ranks take equal steps and
    hold the same weights after every epoch (Keras' Dropout seed state included)."""
    from mlaas_dask.cli import main

    job = keras_job(tmp_path, settings="epochs: 2, batch_size: 128, workers: 2")
    code = main(["train", str(job), "--cluster", client.scheduler.address, "--out",
                 str(tmp_path / "bundle"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    ranks = metrics["data_parallel"]["per_rank"]
    assert len(ranks) == 2 and ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["digests"] == ranks[1]["digests"] and len(set(ranks[0]["digests"])) == 2
    assert metrics["auc"] > 0.75
