"""Bring your own model: scikit-learn through dask-ml, model files, safe bundles, tuning,
and MLaaS4HEP job import -- on a real LocalCluster with worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SGD, events_of, quiet, sample_job, write_mlaas4hep

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.cli import main
from mlaas_dask.errors import BundleError, ConfigError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train

from conftest import logged, write_events

pytestmark = pytest.mark.slow

def test_sgd_through_incremental_over_partitions(client, tmp_path: Path) -> None:
    job = job_from_text(sample_job(tmp_path, SGD), base=tmp_path)
    with logged() as logs:
        result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    assert result.metrics["fit"] == "incremental" and result.metrics["epochs"] == 3
    assert result.metrics["blocks"] == 8  # every partition of the training split
    assert result.metrics["auc"] > 0.7  # deterministic (seeded); 0.5 would be no learning
    assert sum("epoch" in line for line in logs) == 3
    bundle = ModelBundle.load(result.bundle)
    assert bundle.kind == "sklearn" and (result.bundle / "model.skops").is_file()
    assert not (result.bundle / "model.ubj").exists()
    # the bundle's preprocessing + model equal the estimator applied by hand
    events = events_of(tmp_path, "sig", bundle.spec)
    matrix = bundle.spec.transform(events)
    pre = bundle.preprocess
    assert pre is not None and pre.mean is not None
    filled = np.where(np.isnan(matrix), 0.0, matrix)
    by_hand = bundle.model.predict_proba((filled - np.array(pre.mean)) / np.array(pre.scale))
    np.testing.assert_allclose(bundle.predict_events(events), by_hand[:, 1], atol=1e-5)


def test_model_without_partial_fit_uses_a_bounded_sample(client, tmp_path: Path) -> None:
    model = ("{class: sklearn.ensemble.HistGradientBoostingClassifier, "
             "params: {max_iter: 20}, sample_size: 2000}")
    job = job_from_text(sample_job(tmp_path, model), base=tmp_path)
    with logged() as logs:
        result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    assert result.metrics["fit"] == "sample"
    assert 1990 <= result.metrics["sample_events"] <= 2010
    assert any("has no partial_fit(): fitting it on a sample of" in line for line in logs)
    assert result.metrics["auc"] > 0.7  # deterministic (seeded); 0.5 would be no learning
    bundle = ModelBundle.load(result.bundle)  # sklearn internals are on the safe list
    assert bundle.predict_events(events_of(tmp_path, "bkg", bundle.spec)).shape == (4000,)


def test_predict_cli_round_trip_for_sklearn_bundle(capsys, client, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    job = job_from_text(sample_job(tmp_path, SGD), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    code = main(["predict", str(result.bundle), str(tmp_path / "sig.root"), "--out",
                 str(tmp_path / "scores"), "--cluster", "local:1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(tmp_path / "scores" / "scores.parquet")
    bundle = ModelBundle.load(result.bundle)
    expected = bundle.predict_events(events_of(tmp_path, "sig", bundle.spec))
    np.testing.assert_allclose(table["score"].to_numpy(), expected, atol=1e-6)


MODEL_FILE = '''\
from sklearn.linear_model import SGDClassifier


class MyClassifier(SGDClassifier):
    """A user's own class: trusted locally only when asked."""


def model(n_features):
    assert n_features > 3
    return MyClassifier(loss="log_loss")
'''


def test_user_model_file_and_safe_loading(client, tmp_path: Path) -> None:
    (tmp_path / "my_model.py").write_text(MODEL_FILE)
    job = job_from_text(sample_job(tmp_path, "{file: my_model.py, epochs: 2}"), base=tmp_path)
    result = train(job, cluster=client, out=tmp_path / "b", **quiet)
    assert result.metrics["auc"] > 0.6
    assert result.metadata["model"]["class"].endswith("MyClassifier")
    with pytest.raises(BundleError) as err:
        ModelBundle.load(result.bundle)
    message = str(err.value)
    assert "not on the safe list" in message and "MyClassifier" in message
    assert "the server never does" in message
    trusted = list(message.split("(")[1].split(")", maxsplit=1)[0].split(", "))
    bundle = ModelBundle.load(result.bundle, trusted_types=trusted)
    expected = bundle.predict_events(events_of(tmp_path, "sig", bundle.spec))
    # a fresh process (and its workers) gets the user's classes from the bundle's copy
    import subprocess
    import sys

    trust = [arg for t in trusted for arg in ("--trust", t)]
    done = subprocess.run([sys.executable, "-m", "mlaas_dask", "predict", str(result.bundle),
                           str(tmp_path / "sig.root"), "--out", str(tmp_path / "scores"),
                           "--cluster", "local:1", "--quiet", *trust],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    scores = pq.read_table(tmp_path / "scores" / "scores.parquet")["score"].to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize("source, expected", [
    ("def model(:\n    pass\n", ["line 1: syntax error", "def model(:"]),
    ("import math\n\ndef model(n):\n    return math.sqrt(-n)\n",
     ["model() raised ValueError: math domain error", "line 4, in model",
      "return math.sqrt(-n)"]),
    ("x = 1\n", ["defines no model() function"]),
])
def test_model_file_errors_show_the_users_lines(client, tmp_path: Path, source: str,
                                                expected: list[str]) -> None:
    """A file that does not import fails when the job is read (the model kind is detected
    from it), naming the job's line; one whose model() fails, when training builds the
    model. Either way the message names the file and shows the user's lines."""
    (tmp_path / "bad.py").write_text(source)

    def load_and_train() -> None:
        job = job_from_text(sample_job(tmp_path, "{file: bad.py}"), base=tmp_path)
        train(job, cluster=client, out=tmp_path / "b", **quiet)

    with pytest.raises(ConfigError) as err:
        load_and_train()
    message = str(err.value)
    assert f"Model file {tmp_path / 'bad.py'}" in message
    for part in expected:
        assert part in message
    assert "mlaas_dask/train" not in message and not (tmp_path / "b").exists()


UNSKOPSABLE = '''\
from sklearn.linear_model import SGDClassifier


class Odd(SGDClassifier):
    def __init__(self, loss="log_loss"):
        super().__init__(loss=loss)
        self.phase = 1j  # skops cannot store a complex number


def model():
    return Odd()
'''


def test_pickle_only_model_is_local_only(client, tmp_path: Path) -> None:
    (tmp_path / "odd.py").write_text(UNSKOPSABLE)
    job = job_from_text(sample_job(tmp_path, "{file: odd.py, epochs: 1}"), base=tmp_path)
    with logged() as logs:
        result = train(job, cluster=client, out=tmp_path / "b", progress=False)
    assert (result.bundle / "model.pkl").is_file()
    assert any("usable locally with --allow-pickle" in line for line in logs)
    with pytest.raises(BundleError, match=r"pickle-only model.*the server refuses it"):
        ModelBundle.load(result.bundle)
    assert ModelBundle.load(result.bundle, allow_pickle=True).kind == "pickle"


def test_tune_runs_trials_on_the_cluster(capsys, client, tmp_path: Path) -> None:
    from mlaas_dask.train.tune import tune

    text = sample_job(tmp_path, "{num_boost_round: 30, early_stopping_rounds: 5}") + \
        "tune:\n  trials: 3\n  sample_size: 1500\n  space:\n    max_depth: [2, 3]\n" \
        "    eta: {low: 0.05, high: 0.5, log: true}\n"
    job = job_from_text(text, base=tmp_path)
    result = tune(job, cluster=client, out=tmp_path / "b", **quiet)
    assert len(result.trials) == 3
    aucs = [t["auc"] for t in result.trials]
    assert aucs == sorted(aucs, reverse=True) and result.best == result.trials[0]
    assert all(t["params"]["max_depth"] in (2, 3) and 0.05 <= t["params"]["eta"] <= 0.5
               for t in result.trials)
    table = (result.bundle / "tune.md").read_text()
    assert table.count("\n") == 5 and "validation AUC" in table
    metadata = json.loads((result.bundle / "metadata.json").read_text())
    assert metadata["model"]["params"]["max_depth"] == result.best["params"]["max_depth"]


def test_tune_grid_refuses_ranges() -> None:
    from mlaas_dask.train.tune import configurations

    with pytest.raises(ConfigError, match="grid needs lists of values, but eta is a range"):
        configurations({"eta": {"low": 0.1, "high": 0.2}}, 4, "grid", 0)
    grid = configurations({"a": [1, 2], "b": ["x", "y"]}, 10, "grid", 0)
    assert grid == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
                    {"a": 2, "b": "y"}]


def test_mlaas4hep_print_job(capsys, tmp_path: Path, hep_tutorial: Path) -> None:
    import yaml

    paths = write_mlaas4hep(tmp_path, hep_tutorial)
    code = main(["train", "--from-mlaas4hep", str(paths["params"]), "--files",
                 str(paths["files"]), "--labels", str(paths["labels"]), "--preproc",
                 str(paths["preproc"]), "--print-job"])
    out = capsys.readouterr().out
    assert code == 0
    for field in ("nevts", "batch_size", "shuffle", "hist", "verbose", "epochs"):
        assert f"MLaaS4HEP {field}: no equivalent" in out
    job = yaml.safe_load(out[out.index("dataset:"):])
    assert job["dataset"]["tree"] == "events" and job["dataset"]["step_size"] == 2000
    assert [g["label"] for g in job["dataset"]["groups"]] == [1, 0]
    assert job["dataset"]["cut"] == ("((MET_px**2 + MET_py**2)<1e6) and (0<=NJet<=8) and "
                                     "(all(Muon_Iso>=0))")
    features = job["features"]
    assert "MET_px" not in features["flat"] and "MET_py" in features["flat"]
    assert features["derived"] == {"MET_square": "MET_px**2 + MET_py**2"}
    assert "EventWeight" not in json.dumps(features)


def test_mlaas4hep_job_trains(capsys, tmp_path: Path, hep_tutorial: Path) -> None:
    paths = write_mlaas4hep(tmp_path, hep_tutorial)
    code = main(["train", "--from-mlaas4hep", str(paths["params"]), "--files",
                 str(paths["files"]), "--labels", str(paths["labels"]), "--preproc",
                 str(paths["preproc"]), "--out", str(tmp_path / "b"), "--cluster", "local:1",
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Test AUC" in captured.out
    assert ModelBundle.load(tmp_path / "b").metadata["dataset"]["cut"].startswith("((MET_px")


def test_mlaas4hep_label_branch_and_bad_inputs(capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_events(tmp_path / "mixed.root", n=2000, extra={"label": rng.integers(0, 2, 2000)})
    (tmp_path / "files.txt").write_text(str(tmp_path / "mixed.root") + "\n")
    (tmp_path / "params.json").write_text(json.dumps({"branch": "Events", "unknown": 1}))
    code = main(["train", "--from-mlaas4hep", str(tmp_path / "params.json"), "--files",
                 str(tmp_path / "files.txt"), "--labels", "label", "--print-job"])
    out = capsys.readouterr().out
    assert code == 0 and "label_branch: label" in out
    assert "MLaaS4HEP unknown: no equivalent (unknown MLaaS4HEP parameter)" in out
    assert "- label\n" not in out.split("features:")[1]  # the label is not a feature
    (tmp_path / "labels.txt").write_text("1\n0\n")
    code = main(["train", "--from-mlaas4hep", str(tmp_path / "params.json"), "--files",
                 str(tmp_path / "files.txt"), "--labels", str(tmp_path / "labels.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "gives 2 labels for 1 files" in err


def test_label_branch_training(client, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    met = np.where(labels == 1, rng.exponential(70, 4000), rng.exponential(30, 4000))
    write_events(tmp_path / "mixed.root", n=4000,
                 extra={"label": labels, "MET_pt": met.astype(np.float32)})
    text = """
dataset:
  label_branch: label
  classes: [bkg, sig]
  groups: [{name: all, files: [mixed.root]}]
features: {flat: [MET_pt]}
model: {num_boost_round: 20, early_stopping_rounds: 5}
"""
    result = train(job_from_text(text, base=tmp_path), cluster=client, out=tmp_path / "b",
                   **quiet)
    per_class = result.metrics["events_per_class"]
    assert sum(per_class[s][1] for s in per_class) == int(labels.sum())
    assert result.metrics["auc"] > 0.65 and result.metrics["classes"] == ["bkg", "sig"]
    write_events(tmp_path / "bad.root", n=100, extra={"label": np.full(100, 5)})
    bad = text.replace("mixed.root", "bad.root")
    with pytest.raises(Exception, match=r"Label branch 'label' in .*bad\.root holds the value 5"):
        train(job_from_text(bad, base=tmp_path), cluster=client, out=tmp_path / "c", **quiet)


def test_server_round_trip_for_each_model_kind(client, tmp_path: Path) -> None:
    """XGBoost and scikit-learn bundles through the real app; a bundle of the user's own
    classes is refused by the server (it never trusts them)."""
    import shutil
    import warnings

    from mlaas_dask.serve import ServeConfig, create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    (tmp_path / "my_model.py").write_text(MODEL_FILE)
    bundles = {}
    for name, model in (("xgb", "{num_boost_round: 20}"), ("sgd", SGD),
                        ("hgb", "{class: sklearn.ensemble.HistGradientBoostingClassifier, "
                                "params: {max_iter: 10}}"),
                        ("mine", "{file: my_model.py, epochs: 1}")):
        job = job_from_text(sample_job(tmp_path, model), base=tmp_path)
        bundles[name] = train(job, cluster=client, out=tmp_path / name, **quiet).bundle
    repo = tmp_path / "repo"
    for name, path in bundles.items():
        shutil.copytree(path, repo / name / "1")
    events = events_of(tmp_path, "sig", ModelBundle.load(bundles["xgb"]).spec)
    rows = events[:50].to_list()
    app = create_app(ServeConfig(models=repo, threads=2))
    with TestClient(app) as http:
        for _ in range(200):
            if http.get("/v2/health/ready").status_code == 200:
                break
            __import__("time").sleep(0.05)
        for name in ("xgb", "sgd", "hgb"):
            answer = http.post(f"/v2/models/{name}/events", json={"events": rows})
            assert answer.status_code == 200, answer.text
            served = np.asarray(answer.json()["scores"] if "scores" in answer.json()
                                else answer.json()["outputs"][0]["data"], dtype=np.float64)
            expected = ModelBundle.load(bundles[name]).predict_events(events[:50])
            np.testing.assert_allclose(served.ravel(), expected, atol=1e-5)
        refused = http.post("/v2/models/mine/events", json={"events": rows})
        assert 400 <= refused.status_code < 500
        index = http.post("/v2/repository/index", json={}).json()
        mine = next(entry for entry in index if entry["name"] == "mine")
        assert mine["state"] == "UNAVAILABLE" and "not on the safe list" in mine["reason"]
