"""Bundles from elsewhere cannot run code or crash the process: skops files may hold only the
exact, audited types of mlaas_dask.bundle_safety; trees that native code walks are checked;
XGBoost models, preprocess.json, features.json and the user's model file are checked too.

Every attack payload is built here, and each one writes a marker file if it ever runs."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle, write_bundle
from mlaas_dask.bundle_safety import SAFE_TYPES, check_native_structures, skops_types
from mlaas_dask.cli import main
from mlaas_dask.errors import BundleError
from mlaas_dask.features import FeatureSpec

N_FEATURES = 4
SPEC = FeatureSpec(flat=[f"x{i}" for i in range(N_FEATURES)])


# -- crafted skops files -------------------------------------------------------------------


def _str(value: Any) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def _node(loader: str, module: str, name: str, **rest: Any) -> dict[str, Any]:
    return {"__class__": name, "__module__": module, "__loader__": loader, **rest}


def _tuple(*items: dict[str, Any]) -> dict[str, Any]:
    return _node("TupleNode", "builtins", "tuple", content=list(items))


def _list(*items: dict[str, Any]) -> dict[str, Any]:
    return _node("ListNode", "builtins", "list", content=list(items))


def _dict(content: dict[str, Any] | None = None,
          key_type: tuple[str, str] = ("builtins", "str")) -> dict[str, Any]:
    content = content or {}
    key_types = [_node("TypeNode", *key_type) for _ in content]
    return _node("DictNode", "builtins", "dict", content=content, key_types=_list(*key_types))


def _call(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    """A node that calls ``module.name(*args)`` when skops builds it."""
    return _node("ConstructorFromReduceNode", module, name, content=_tuple(*args))


def skops_file(root: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps({**root, "protocol": 2}))
    return buffer.getvalue()


def python_writes(marker: Path) -> str:
    return f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))"


def shell_writes(marker: Path) -> str:
    return f"echo $$ > '{marker}'"


#: name -> (the type the file names, a function of the marker path giving the file's root)
PAYLOADS = {
    "runstring": ("numpy.testing._private.utils.runstring",
                  lambda m: _call("numpy.testing._private.utils", "runstring",
                                  _str(python_writes(m)), _dict())),
    "exec_command": ("numpy.distutils.exec_command.exec_command",
                     lambda m: _call("numpy.distutils.exec_command", "exec_command",
                                     _str(shell_writes(m)))),
    "builtins.eval": ("builtins.eval",
                      lambda m: _call("builtins", "eval",
                                      _str(f"exec({python_writes(m)!r})"))),
    "os.system": ("os.system", lambda m: _call("os", "system", _str(shell_writes(m)))),
    "sklearn script runner": (
        "sklearn.utils._testing.assert_run_python_script_without_output",
        lambda m: _call("sklearn.utils._testing", "assert_run_python_script_without_output",
                        _str(python_writes(m)))),
    "dict key type eval": (
        "builtins.eval",
        lambda m: _dict({f"exec({python_writes(m)!r})": _str(1)}, ("builtins", "eval"))),
    "estimator holding a function": (
        "numpy.testing._private.utils.runstring",
        lambda m: _node("ObjectNode", "sklearn.linear_model._logistic", "LogisticRegression",
                        content=_dict({"C": _call("numpy.testing._private.utils",
                                                  "runstring", _str(python_writes(m)),
                                                  _dict())}))),
}


def write_model_bundle(out: Path, model: bytes, model_file: str = "model.skops",
                       spec: FeatureSpec = SPEC, classes: int = 2) -> Path:
    names = ["background", "signal"] if classes == 2 else [f"c{i}" for i in range(classes)]
    return write_bundle(out, model=model, spec=spec, model_file=model_file,
                        metadata={"classes": names}, metrics={"auc": 0.5})


def tar_of(bundle: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for item in sorted(bundle.iterdir()):
            tar.add(item, arcname=f"bundle/{item.name}")
    return buffer.getvalue()


@pytest.fixture(params=sorted(PAYLOADS))
def attack(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, Path]:
    """(the type named, the bundle, the marker its payload would write)."""
    type_name, build = PAYLOADS[request.param]
    marker = tmp_path / "marker"
    bundle = write_model_bundle(tmp_path / "evil", skops_file(build(marker)))
    return type_name, bundle, marker


def test_payloads_are_live(tmp_path: Path) -> None:
    """The payloads run when skops is told to trust them: the refusals below are real."""
    import skops.io

    for key in ("runstring", "builtins.eval", "dict key type eval"):
        type_name, build = PAYLOADS[key]
        marker = tmp_path / key
        data = skops_file(build(marker))
        assert type_name in skops.io.get_untrusted_types(data=data)
        skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
        assert marker.read_text().strip().isdigit(), key


def test_exec_command_is_named_in_the_file() -> None:
    """The attack is the name in the file, whether or not numpy.distutils imports here."""
    import skops.io

    data = skops_file(PAYLOADS["exec_command"][1](Path("/nonexistent")))
    assert skops.io.get_untrusted_types(data=data) == [
        "numpy.distutils.exec_command.exec_command"]


def test_load_refuses_every_payload_and_never_runs_it(attack: tuple[str, Path, Path]) -> None:
    type_name, bundle, marker = attack
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle)
    message = str(err.value)
    assert f"({type_name})" in message or f"{type_name}," in message or \
        f", {type_name}" in message
    assert "not on the safe list" in message and "--trust TYPE" in message
    assert "the server never does" in message
    assert not marker.exists()


def test_refusal_does_not_depend_on_the_module_prefix(tmp_path: Path) -> None:
    """An allowed name through another skops loader is refused too (no name is trusted
    for every way of building it)."""
    marker = tmp_path / "marker"
    root = _call("numpy", "ndarray", _tuple(_str(3)))
    bundle = write_model_bundle(tmp_path / "b", skops_file(root))
    with pytest.raises(BundleError, match=r"numpy.ndarray loaded by ConstructorFromReduceNode"):
        ModelBundle.load(bundle)
    assert not marker.exists()


def test_a_name_hidden_in_a_string_is_refused(tmp_path: Path) -> None:
    """A Generator names its bit generator in a plain string, which numpy.random then
    calls: a function there (numpy.random.seed) is refused by name."""
    import skops.io

    data = skops.io.dumps(np.random.default_rng(0))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    schema["content"]["bit_generator"]["content"]["bit_generator"]["content"] = '"seed"'
    bundle = write_model_bundle(tmp_path / "b", skops_file(schema))
    with pytest.raises(BundleError, match=r"safe list \(numpy\.random\.seed\)"):
        ModelBundle.load(bundle)


def test_predict_cli_refuses_with_one_paragraph(tmp_path: Path) -> None:
    type_name, build = PAYLOADS["runstring"]
    marker = tmp_path / "marker"
    bundle = write_model_bundle(tmp_path / "evil", skops_file(build(marker)))
    done = subprocess.run([sys.executable, "-m", "mlaas_dask", "predict", str(bundle),
                           str(tmp_path / "events.root"), "--out", str(tmp_path / "scores"),
                           "--quiet"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    message = done.stderr.strip()
    assert type_name in message and "--trust" in message
    assert "\n\n" not in message and len(message.splitlines()) <= 2
    assert not marker.exists() and not (tmp_path / "scores").exists()


def test_predict_cli_main_refuses_exec_command(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    type_name, build = PAYLOADS["exec_command"]
    marker = tmp_path / "marker"
    bundle = write_model_bundle(tmp_path / "evil", skops_file(build(marker)))
    code = main(["predict", str(bundle), str(tmp_path / "events.root"), "--out",
                 str(tmp_path / "scores"), "--quiet"])
    assert code != 0
    assert type_name in capsys.readouterr().err
    assert not marker.exists()


# -- the server ----------------------------------------------------------------------------


@pytest.fixture
def start_server() -> Iterator[Callable[[Any], Any]]:
    """Real uvicorn servers on 127.0.0.1 for apps built by the test (tests/serve's runner)."""
    from serve.conftest import run_uvicorn

    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(run_uvicorn(app))


def _app(repo: Path) -> Any:
    from mlaas_dask.serve import ServeConfig, create_app

    from serve.conftest import TOKEN

    return create_app(ServeConfig(models=repo, threads=1, poll_s=0), token=TOKEN)


def test_server_refuses_the_upload_and_never_runs_it(start_server: Any,
                                                     tmp_path: Path) -> None:
    from serve.conftest import AUTH

    repo = tmp_path / "repo"
    repo.mkdir()
    live = start_server(_app(repo))
    for key in ("runstring", "exec_command", "builtins.eval"):
        type_name, build = PAYLOADS[key]
        marker = tmp_path / f"marker-{key}"
        bundle = write_model_bundle(tmp_path / key, skops_file(build(marker)))
        response = httpx.post(f"{live.url}/v2/repository/models/evil/upload",
                              content=tar_of(bundle), headers=AUTH, timeout=30)
        assert 400 <= response.status_code < 500, response.text
        assert type_name in response.json()["error"]
        assert not marker.exists()
    assert not any((repo / "evil").glob("[0-9]*"))


def test_server_started_on_a_bad_bundle_does_not_run_it(start_server: Any,
                                                        tmp_path: Path) -> None:
    type_name, build = PAYLOADS["runstring"]
    marker = tmp_path / "marker"
    repo = tmp_path / "repo"
    write_model_bundle(repo / "evil" / "1", skops_file(build(marker)))
    live = start_server(_app(repo))
    index = httpx.post(f"{live.url}/v2/repository/index", json={}, timeout=30).json()
    row = next(r for r in index if r["name"] == "evil")
    assert row["state"] == "UNAVAILABLE" and type_name in row["reason"]
    response = httpx.post(f"{live.url}/v2/models/evil/infer", timeout=30, json={
        "inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32",
                    "data": [0.0] * N_FEATURES}]})
    assert 400 <= response.status_code < 500
    assert not marker.exists()


def test_server_refuses_a_stalling_expression_at_upload(start_server: Any,
                                                        tmp_path: Path) -> None:
    """``sum(Jet_pt) + 10**10**7`` took 9.5 s per request: now the upload is refused."""
    from serve.conftest import AUTH

    bundle = write_model_bundle(tmp_path / "b", _fitted_skops("LogisticRegression"))
    features = json.loads((bundle / "features.json").read_text())
    features["derived"] = {"HT": "sum(Jet_pt) + 10**10**7"}
    features.pop("feature_names")
    (bundle / "features.json").write_text(json.dumps(features))
    repo = tmp_path / "repo"
    repo.mkdir()
    live = start_server(_app(repo))
    response = httpx.post(f"{live.url}/v2/repository/models/slow/upload",
                          content=tar_of(bundle), headers=AUTH, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert "sum(Jet_pt) + 10**10**7" in error and "exponent" in error


# -- real estimators: every one the project may write loads, and holds safe types only ------


def _estimators() -> dict[str, Any]:
    from sklearn import (
        calibration,
        decomposition,
        discriminant_analysis,
        dummy,
        ensemble,
        impute,
        linear_model,
        naive_bayes,
        neural_network,
        pipeline,
        preprocessing,
        tree,
    )

    return {
        "SGDClassifier": linear_model.SGDClassifier(loss="log_loss", random_state=0),
        "SGDClassifier modified_huber": linear_model.SGDClassifier(
            loss="modified_huber", early_stopping=True, class_weight={0: 1.0, 1: 2.0},
            random_state=0),
        "LogisticRegression": linear_model.LogisticRegression(),
        "LogisticRegressionCV": linear_model.LogisticRegressionCV(cv=2),
        "DecisionTreeClassifier": tree.DecisionTreeClassifier(max_depth=4),
        "RandomForestClassifier": ensemble.RandomForestClassifier(n_estimators=3,
                                                                  random_state=0),
        "ExtraTreesClassifier": ensemble.ExtraTreesClassifier(n_estimators=3, random_state=0),
        "GradientBoostingClassifier": ensemble.GradientBoostingClassifier(
            n_estimators=5, n_iter_no_change=2, random_state=0),
        "HistGradientBoostingClassifier": ensemble.HistGradientBoostingClassifier(
            max_iter=5, early_stopping=True, random_state=0),
        "AdaBoostClassifier": ensemble.AdaBoostClassifier(n_estimators=3, random_state=0),
        "BaggingClassifier": ensemble.BaggingClassifier(n_estimators=2, max_features=0.5,
                                                        random_state=0),
        "VotingClassifier": ensemble.VotingClassifier(
            [("lr", linear_model.LogisticRegression()),
             ("nb", naive_bayes.GaussianNB())], voting="soft"),
        "StackingClassifier": ensemble.StackingClassifier(
            [("lr", linear_model.LogisticRegression()),
             ("dt", tree.DecisionTreeClassifier(max_depth=2))], cv=2),
        "MLPClassifier": neural_network.MLPClassifier((8,), max_iter=30, random_state=0),
        "MLPClassifier sgd": neural_network.MLPClassifier((8,), max_iter=30, solver="sgd",
                                                          random_state=0),
        "GaussianNB": naive_bayes.GaussianNB(),
        "BernoulliNB": naive_bayes.BernoulliNB(),
        "LinearDiscriminantAnalysis": discriminant_analysis.LinearDiscriminantAnalysis(),
        "QuadraticDiscriminantAnalysis":
            discriminant_analysis.QuadraticDiscriminantAnalysis(),
        "DummyClassifier": dummy.DummyClassifier(),
        "CalibratedClassifierCV": calibration.CalibratedClassifierCV(
            linear_model.SGDClassifier(random_state=0), cv=2),
        "CalibratedClassifierCV isotonic": calibration.CalibratedClassifierCV(
            linear_model.Perceptron(), cv=2, method="isotonic"),
        "Pipeline": pipeline.make_pipeline(
            impute.SimpleImputer(), preprocessing.StandardScaler(),
            preprocessing.RobustScaler(), preprocessing.MinMaxScaler(),
            preprocessing.MaxAbsScaler(), decomposition.PCA(3),
            linear_model.LogisticRegression()),
        "Pipeline quantiles": pipeline.make_pipeline(
            preprocessing.QuantileTransformer(n_quantiles=20),
            preprocessing.PowerTransformer(), linear_model.LogisticRegression()),
    }


def _fit(name: str, classes: int = 2) -> Any:
    from sklearn.base import clone

    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, N_FEATURES)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * rng.normal(size=len(x)),
                    [0.0] if classes == 2 else [-0.4, 0.4])
    estimator = clone(_estimators()[name])
    if name == "SGDClassifier":  # the Incremental path: partial_fit over blocks
        for _ in range(3):
            estimator.partial_fit(x, y, classes=np.arange(classes))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence in a tiny fit
            estimator.fit(x, y)
    return estimator


def _fitted_skops(name: str, classes: int = 2) -> bytes:
    import skops.io

    return skops.io.dumps(_fit(name, classes))


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", sorted(_estimators()))
def test_real_estimators_hold_only_safe_types(name: str, classes: int, tmp_path: Path) -> None:
    """The empirical derivation of SAFE_TYPES, repeated: a new scikit-learn that needs a new
    type fails here."""
    data = _fitted_skops(name, classes)
    found = skops_types(data, name)
    assert all(loader in SAFE_TYPES.get(t, ()) for t, loader in found), sorted(found)
    bundle = ModelBundle.load(write_model_bundle(tmp_path / "b", data, classes=classes))
    scores = bundle.predict_matrix(np.zeros((3, N_FEATURES), np.float32))
    assert scores.shape == ((3,) if classes == 2 else (3, classes))


def test_types_left_out_are_refused_with_the_reason_and_load_when_trusted(
        tmp_path: Path) -> None:
    import skops.io
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, N_FEATURES))
    y = (x[:, 0] > 0).astype(int)
    for number, model in enumerate([KNeighborsClassifier(), SVC(probability=True)]):
        data = skops.io.dumps(model.fit(x, y))
        bundle = write_model_bundle(tmp_path / str(number), data)
        with pytest.raises(BundleError, match=r"without bounds checks|without checks") as err:
            ModelBundle.load(bundle)
        refused = str(err.value).split("list (")[1].split(")")[0].split(", ")
        trusted = ModelBundle.load(bundle, trusted_types=refused)
        assert trusted.predict_matrix(x[:2]).shape == (2,)


# -- native structures: crafted trees are refused before any prediction ---------------------


def _tree_state(model: Any) -> dict[str, Any]:
    return dict(model.tree_.__getstate__())


def _corrupt_tree(model: Any, how: str) -> None:
    state = _tree_state(model)
    nodes = state["nodes"].copy()
    if how == "child outside":
        nodes["left_child"][0] = 10**9
    elif how == "cycle":
        inner = np.flatnonzero(nodes["left_child"] != -1)[-1]
        nodes["left_child"][inner] = 0
    elif how == "feature outside":
        nodes["feature"][0] = 10**6
    elif how == "count above capacity":
        state["node_count"] = 10**6
    state["nodes"] = nodes
    model.tree_.__setstate__(state)


@pytest.mark.parametrize("how", ["child outside", "cycle", "feature outside",
                                 "count above capacity"])
def test_crafted_decision_trees_are_refused(how: str) -> None:
    for name in ("DecisionTreeClassifier", "RandomForestClassifier",
                 "GradientBoostingClassifier"):
        model = _fit(name)
        trees = getattr(model, "estimators_", None)
        target = model if trees is None else np.ravel(trees)[0]
        _corrupt_tree(target, how)
        with pytest.raises(BundleError, match="corrupt or crafted"):
            check_native_structures(model, name)


def test_a_tree_moved_outside_its_estimator_is_refused() -> None:
    model = _fit("LogisticRegression")
    model.hidden = _fit("DecisionTreeClassifier").tree_
    with pytest.raises(BundleError, match="sits outside the estimator"):
        check_native_structures(model, "model")


def test_a_tree_that_is_not_a_tree_is_refused(tmp_path: Path) -> None:
    import skops.io

    model = _fit("DecisionTreeClassifier")
    model.tree_ = {"node_count": 1}
    bundle = write_model_bundle(tmp_path / "b", skops.io.dumps(model))
    with pytest.raises(BundleError, match=r"trees are malformed.*corrupt or crafted"):
        ModelBundle.load(bundle)


def test_gradient_boosting_stages_must_match_the_initial_prediction() -> None:
    model = _fit("GradientBoostingClassifier")
    model.estimators_ = np.concatenate([model.estimators_] * 2, axis=1)
    with pytest.raises(BundleError, match="trees per stage"):
        check_native_structures(model, "model")


@pytest.mark.parametrize("how", ["child outside", "cycle", "feature outside", "categorical"])
def test_crafted_hist_gradient_boosting_trees_are_refused(how: str) -> None:
    model = _fit("HistGradientBoostingClassifier")
    nodes = model._predictors[0][0].nodes
    inner = int(np.flatnonzero(nodes["is_leaf"] == 0)[0])
    if how == "child outside":
        nodes["left"][inner] = 10**6
    elif how == "cycle":
        nodes["right"][inner] = inner
    elif how == "feature outside":
        nodes["feature_idx"][inner] = N_FEATURES
    else:
        nodes["is_categorical"][inner] = 1
    with pytest.raises(BundleError, match="corrupt or crafted"):
        check_native_structures(model, "model")


def test_a_crafted_tree_bundle_is_refused_end_to_end(tmp_path: Path) -> None:
    import skops.io

    model = _fit("RandomForestClassifier")
    _corrupt_tree(model.estimators_[1], "feature outside")
    bundle = write_model_bundle(tmp_path / "b", skops.io.dumps(model))
    with pytest.raises(BundleError, match="corrupt or crafted"):
        ModelBundle.load(bundle)


def test_a_skops_zip_bomb_is_refused_before_unpacking(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    import mlaas_dask.bundle_safety as safety

    monkeypatch.setattr(safety, "MAX_SKOPS_UNPACKED_BYTES", 8 << 20)  # 1 GiB in production
    schema = json.dumps(_str("x")).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", schema)
        archive.writestr("big.npy", bytes(16 << 20))  # 16 kB compressed
    assert len(buffer.getvalue()) < 100_000
    bundle = write_model_bundle(tmp_path / "b", buffer.getvalue())
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle)
    assert f"model.skops unpacks to {(16 << 20) + len(schema):,} bytes; at most " \
        f"{8 << 20:,} are allowed" in str(err.value)


def test_a_model_that_cannot_score_the_features_is_refused(tmp_path: Path) -> None:
    spec = FeatureSpec(flat=["x0", "x1"])  # the model takes 4
    bundle = write_model_bundle(tmp_path / "b", _fitted_skops("LogisticRegression"),
                                spec=spec)
    with pytest.raises(BundleError, match="cannot score the 2 features"):
        ModelBundle.load(bundle)


# -- XGBoost --------------------------------------------------------------------------------


def _booster_json() -> dict[str, Any]:
    import xgboost

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    booster = xgboost.train({"max_depth": 3, "objective": "binary:logistic", "nthread": 1},
                            xgboost.DMatrix(x, y), 3)
    return json.loads(booster.save_raw("json"))


def _as_ubj(model: dict[str, Any]) -> bytes:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(json.dumps(model).encode()))  # loads; predicting would crash
    return bytes(booster.save_raw("ubj"))


def _first_tree(model: dict[str, Any]) -> dict[str, Any]:
    return model["learner"]["gradient_booster"]["model"]["trees"][0]


@pytest.mark.parametrize("how", ["child outside", "cycle", "shared child", "feature outside",
                                 "output group outside", "categorical"])
def test_crafted_xgboost_trees_are_refused(how: str, tmp_path: Path) -> None:
    model = _booster_json()
    tree = _first_tree(model)
    if how == "child outside":
        tree["left_children"][0] = 10**6
    elif how == "cycle":
        tree["left_children"][1] = 0
        tree["right_children"][1] = 0
    elif how == "shared child":
        tree["right_children"][0] = tree["left_children"][0]
    elif how == "feature outside":
        tree["split_indices"][0] = N_FEATURES
    elif how == "output group outside":
        model["learner"]["gradient_booster"]["model"]["tree_info"][0] = 5
    else:  # a well-formed categorical split: the project's features are numbers
        tree.update(split_type=[1, *tree["split_type"][1:]], categories=[1],
                    categories_nodes=[0], categories_segments=[0], categories_sizes=[1])
    bundle = write_model_bundle(tmp_path / "b", _as_ubj(model), model_file="model.ubj")
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle)
    assert "model.ubj" in str(err.value)
    assert "corrupt or crafted" in str(err.value) or "not supported" in str(err.value)


def test_a_sound_xgboost_bundle_loads_and_scores(tmp_path: Path) -> None:
    bundle = write_model_bundle(tmp_path / "b", _as_ubj(_booster_json()),
                                model_file="model.ubj")
    scores = ModelBundle.load(bundle).predict_matrix(np.zeros((2, N_FEATURES), np.float32))
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_xgboost_gblinear_is_refused(tmp_path: Path) -> None:
    import xgboost

    x = np.random.default_rng(4).normal(size=(50, N_FEATURES))
    booster = xgboost.train({"booster": "gblinear", "objective": "binary:logistic"},
                            xgboost.DMatrix(x, (x[:, 0] > 0).astype(int)), 2)
    bundle = write_model_bundle(tmp_path / "b", bytes(booster.save_raw("ubj")),
                                model_file="model.ubj")
    with pytest.raises(BundleError, match="'gblinear' booster"):
        ModelBundle.load(bundle)


# -- preprocess.json ------------------------------------------------------------------------


@pytest.mark.parametrize("preprocess, expected", [
    ({"fill_value": "nan"}, "fill_value must be a number"),
    ({"fill_value": 0.0, "mean": [0.0] * N_FEATURES, "scale": [1.0] * 3},
     "scale has 3 values but the model has 4 features"),
    ({"mean": [0.0, 0.0, 1e39, 0.0], "scale": [1.0] * N_FEATURES}, "mean[2] is 1e+39"),
    ({"mean": [0.0] * N_FEATURES, "scale": [1.0, 0.0, 1.0, 1.0]}, "scale 1 is 0"),
    ({"mean": [0.0] * N_FEATURES, "scale": [1.0, True, 1.0, 1.0]}, "scale[1] must be a number"),
    ({"mean": [0.0] * N_FEATURES}, "gives mean without the other"),
    ({"mean": "0,0,0,0", "scale": [1.0] * N_FEATURES}, "mean must be a list"),
    ({"code": "import os"}, "unknown keys ['code']"),
])
def test_preprocess_json_is_checked(preprocess: dict[str, Any], expected: str,
                                    tmp_path: Path) -> None:
    bundle = write_model_bundle(tmp_path / "b", _fitted_skops("LogisticRegression"))
    (bundle / "preprocess.json").write_text(json.dumps(preprocess).replace("1e+39", "1e39"))
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle)
    assert "preprocess.json" in str(err.value) and expected in str(err.value)


# -- the user's model file ------------------------------------------------------------------

USER_MODEL = '''\
import os, pathlib
pathlib.Path({marker!r}).write_text(str(os.getpid()))
'''


def test_user_model_file_runs_only_when_its_own_type_is_trusted(tmp_path: Path) -> None:
    from mlaas_dask.usercode import module_name

    marker = tmp_path / "marker"
    source = USER_MODEL.format(marker=str(marker))
    bundle = write_model_bundle(tmp_path / "b", _fitted_skops("LogisticRegression"))
    (bundle / "user_model.py").write_text(source)
    loaded = ModelBundle.load(bundle)
    loaded.share_code(None)  # no user code kept: nothing is sent to workers
    assert loaded.user_code is None
    ModelBundle.load(bundle, trusted_types=["sklearn.svm._classes.SVC"])
    assert not marker.exists()
    own = f"{module_name(source.encode())}.MyClassifier"
    assert ModelBundle.load(bundle, trusted_types=[own]).user_code == source.encode()
    assert marker.exists()  # the positive control: trusting its type runs the file
