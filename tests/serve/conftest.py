"""Fixtures for the serving tests: real bundles trained here on CMS Open Data, model
repositories, and a real uvicorn server on 127.0.0.1 (ephemeral port) in a thread."""

from __future__ import annotations

import io
import shutil
import socket
import tarfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas_dask.bundle import write_bundle
from mlaas_dask.features import Collection, FeatureSpec

with warnings.catch_warnings():
    # starlette 1.x asks for the httpx2 package; httpx (a dependency anyway) works the same
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_spec() -> FeatureSpec:
    """Flat MET and vertices, jets and muons sorted by a derived pt, a derived MET."""
    return FeatureSpec(
        flat=["MET_px", "MET_py", "NPrimaryVertices"],
        collections={
            "Jet": Collection("Jet", ["pt", "E", "btag"], n=3, sort_by="pt",
                              derived={"pt": "hypot(Px, Py)"}),
            "Muon": Collection("Muon", ["pt", "E"], n=2, sort_by="pt",
                               derived={"pt": "hypot(Px, Py)"}),
        },
        derived={"MET": "hypot(MET_px, MET_py)"},
    )


def read_events(path: Path, spec: FeatureSpec, stop: int | None = None) -> Any:
    """The branches ``spec`` needs from tree ``events`` of a HEP tutorial file."""
    import uproot

    with uproot.open(path) as handle:
        return handle["events"].arrays(spec.branches(), entry_stop=stop)


@dataclass
class Trained:
    """A bundle on disk and what it was made from."""

    path: Path
    spec: FeatureSpec
    events: Any  # awkward record array (ww then zz)
    matrix: np.ndarray
    labels: np.ndarray | None = None  # class index of each event


def train_bundle(out: Path, classes: list[str], samples: list[str], rounds: int = 20, *,
                 tutorial: Path) -> Trained:
    """An XGBoost bundle at ``out``: one class per sample (``tutorial / f"{sample}.root"``)."""
    import awkward as ak
    import xgboost

    spec = make_spec()
    parts = [read_events(tutorial / f"{sample}.root", spec) for sample in samples]
    events = ak.concatenate(parts)
    matrix = spec.transform(events)
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    params: dict[str, Any] = {"max_depth": 4, "eta": 0.3, "nthread": 2, "seed": 1}
    if len(classes) == 2:
        params["objective"] = "binary:logistic"
    else:
        params.update(objective="multi:softprob", num_class=len(classes))
    booster = xgboost.train(params, xgboost.DMatrix(matrix, labels, missing=np.nan), rounds)
    write_bundle(
        out,
        model=bytes(booster.save_raw("ubj")),
        spec=spec,
        metadata={"classes": classes, "dataset": {"tree": "events", "id_branches": []}},
        metrics={"auc": 0.5, "events": len(labels)},
    )
    return Trained(out, spec, events, matrix, labels)


def train_sklearn_bundle(out: Path, xgb: Trained) -> Trained:
    """A scikit-learn bundle (skops, with preprocess.json: NaN filled, features scaled)
    trained on the same events as ``xgb``, as ``mlaas train`` writes one."""
    import json

    from sklearn.linear_model import LogisticRegression

    from mlaas_dask.features import Preprocess
    from mlaas_dask.train.sklearn import serialise

    labels = xgb.labels
    filled = np.where(np.isnan(xgb.matrix), 0.0, xgb.matrix)
    mean, scale = filled.mean(axis=0), filled.std(axis=0)
    preprocess = Preprocess(0.0, tuple(mean.tolist()),
                            tuple(np.where(scale > 0, scale, 1.0).tolist()))
    estimator = LogisticRegression(max_iter=200).fit(preprocess.apply(xgb.matrix), labels)
    model_file, data = serialise(estimator)
    write_bundle(
        out, model=data, model_file=model_file, spec=xgb.spec,
        metadata={"classes": ["background", "signal"], "dataset": {"tree": "events",
                                                                  "id_branches": []}},
        metrics={"auc": 0.5, "events": len(labels)},
        extra_files={"preprocess.json": json.dumps(preprocess.to_dict()).encode()},
    )
    return Trained(out, xgb.spec, xgb.events, xgb.matrix, labels)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, hep_tutorial: Path) -> Trained:
    """A binary model: WW (background) against ZZ (signal)."""
    out = tmp_path_factory.mktemp("bundles") / "binary"
    return train_bundle(out, ["background", "signal"], ["ww", "zz"], tutorial=hep_tutorial)


@pytest.fixture(scope="session")
def trained_multi(tmp_path_factory: pytest.TempPathFactory, hep_tutorial: Path) -> Trained:
    """A three-class model: WW, WZ, ZZ."""
    out = tmp_path_factory.mktemp("bundles") / "multi"
    return train_bundle(out, ["ww", "wz", "zz"], ["ww", "wz", "zz"], rounds=10,
                        tutorial=hep_tutorial)


@pytest.fixture(scope="session")
def trained_sklearn(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Trained:
    """A scikit-learn (skops) binary model on the same events."""
    return train_sklearn_bundle(tmp_path_factory.mktemp("bundles") / "sklearn", trained)


@pytest.fixture(scope="session")
def bundle_archive(trained: Trained) -> bytes:
    """The binary bundle as .tar.gz bytes."""
    return tar_bytes({f"bundle/{p.name}": p.read_bytes() for p in trained.path.iterdir()})


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def make_repo(tmp_path: Path, trained: Trained) -> Callable[..., Path]:
    """A fresh repository: ``hep/1`` and ``hep/2`` (copies of the binary bundle) by default."""

    def make(models: dict[str, list[Path]] | None = None) -> Path:
        root = tmp_path / "repo"
        root.mkdir()
        for name, bundles in (models or {"hep": [trained.path, trained.path]}).items():
            for version, bundle in enumerate(bundles, start=1):
                shutil.copytree(bundle, root / name / str(version))
        return root

    return make


def wait_ready(get: Callable[[str], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the server did not become ready")


@pytest.fixture
def app_client(make_repo: Callable[..., Path]) -> Iterator[Any]:
    """Starlette TestClient over a fresh repository, with a token, models loaded."""
    from mlaas_dask.serve import ServeConfig, create_app

    app = create_app(ServeConfig(models=make_repo(), max_request_rows=5000,
                                 max_body_bytes=2_000_000, threads=2), token=TOKEN)
    with TestClient(app) as client:
        wait_ready(client.get)
        yield client


@dataclass
class LiveServer:
    url: str
    port: int
    app: Any
    server: Any


@pytest.fixture
def live_server(make_repo: Callable[..., Path]) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1 (ephemeral port) in a thread."""
    from mlaas_dask.serve import ServeConfig, create_app

    app = create_app(ServeConfig(models=make_repo(), threads=2, poll_s=0), token=TOKEN)
    with run_uvicorn(app) as live:
        yield live


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Start uvicorn servers for apps built by the test; stopped at the end."""
    import contextlib

    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(run_uvicorn(app))


def run_uvicorn(app: Any) -> Any:
    import contextlib

    import httpx
    import uvicorn

    from mlaas_dask.serve.connections import uvicorn_options

    @contextlib.contextmanager
    def running() -> Iterator[LiveServer]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                **uvicorn_options(app.state.server.config))
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=5) as http:
                deadline = time.monotonic() + 30
                while not server.started and time.monotonic() < deadline:
                    time.sleep(0.01)
                wait_ready(http.get)
            yield LiveServer(url, port, app, server)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()

    return running()
