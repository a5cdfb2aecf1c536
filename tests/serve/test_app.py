"""The Starlette app through Starlette's TestClient: endpoints, every bad input, auth,
model management. Integration with a real server is in test_integration.py."""

from __future__ import annotations

import io
import re
import tarfile
import threading
from pathlib import Path

import awkward as ak
import numpy as np
import orjson
import pytest

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.client import Client, ServerError
from mlaas_dask.serve import ServeConfig, create_app

from .conftest import AUTH, TOKEN, TestClient, Trained, tar_bytes, wait_ready

F = 19  # features of the test spec


def infer_body(matrix: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "shape": list(matrix.shape), "datatype": "FP32",
                        "data": np.nan_to_num(matrix).ravel().tolist()}]}


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


# -- health and metadata ------------------------------------------------------------------


def test_health_server_and_model_metadata(app_client, trained: Trained):
    assert app_client.get("/v2/health/live").json() == {"live": True}
    assert app_client.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in app_client.get("/v2").json()["extensions"]
    meta = app_client.get("/v2/models/hep").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, F]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert meta["parameters"]["version"] == "2"  # the newest answers by default
    assert meta["parameters"]["feature_names"] == trained.spec.feature_names
    assert set(meta["parameters"]["branches"]) == set(trained.spec.branches())
    assert app_client.get("/v2/models/hep/versions/1/ready").json()["ready"] is True


def test_not_ready_until_models_are_loaded(make_repo, monkeypatch):
    from mlaas_dask.serve.repository import ModelRepository

    gate = threading.Event()
    load_all = ModelRepository.load_all

    def slow_load_all(self):
        gate.wait(10)
        return load_all(self)

    monkeypatch.setattr(ModelRepository, "load_all", slow_load_all)
    with TestClient(create_app(ServeConfig(models=make_repo()))) as client:
        assert "still loading" in error_of(client.get("/v2/health/ready"), 503)
        assert client.get("/v2/health/live").is_success
        assert "still loading its models" in error_of(client.get("/v2/models/hep"), 503)
        gate.set()
        wait_ready(client.get)
        assert client.get("/v2/models/hep").json()["versions"] == ["1", "2"]


# -- inference ----------------------------------------------------------------------------


def test_events_row_wise_and_columnar_equal_predict_events(app_client, trained: Trained):
    bundle = ModelBundle.load(trained.path)
    events = trained.events[:200]
    expected = bundle.predict_events(events)
    client = Client(http=app_client)
    rows = client.score_events("hep", ak.to_list(events))
    columns = client.score_events("hep", events, version=1)  # awkward -> columnar JSON
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(columns, expected, rtol=0, atol=1e-6)


def test_infer_json_and_binary_equal_predict_matrix(app_client, trained: Trained):
    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:50]
    client = Client(http=app_client)
    binary = client.infer("hep", matrix)["score"]  # binary keeps NaN (missing)
    np.testing.assert_allclose(binary, bundle.predict_matrix(matrix), atol=1e-6)
    response = app_client.post("/v2/models/hep/versions/1/infer", json=infer_body(matrix))
    body = response.json()
    assert body["model_version"] == "1" and body["outputs"][0]["shape"] == [50]
    np.testing.assert_allclose(body["outputs"][0]["data"],
                               bundle.predict_matrix(np.nan_to_num(matrix)), atol=1e-6)


def test_multiclass_model(make_repo, trained_multi: Trained):
    app = create_app(ServeConfig(models=make_repo({"dib": [trained_multi.path]})))
    with TestClient(app) as http:
        wait_ready(http.get)
        client = Client(http=http)
        meta = client.metadata("dib")
        assert [o["name"] for o in meta["outputs"]] == ["score_ww", "score_wz", "score_zz"]
        outputs = client.infer("dib", trained_multi.matrix[:10])
        expected = ModelBundle.load(trained_multi.path).predict_matrix(trained_multi.matrix[:10])
        np.testing.assert_allclose(outputs["score_wz"], expected[:, 1], atol=1e-6)
        scores = client.score_events("dib", trained_multi.events[:10])
        np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_prediction_timeout_is_503_and_the_server_recovers(make_repo, monkeypatch):
    import time

    app = create_app(ServeConfig(models=make_repo(), timeout_s=0.2))
    with TestClient(app) as client:
        wait_ready(client.get)
        bundle = app.state.server.repo.get("hep").bundle
        predict = bundle.predict_matrix
        monkeypatch.setattr(bundle, "predict_matrix", lambda m: (time.sleep(0.5), predict(m))[1])
        message = error_of(client.post("/v2/models/hep/events", json={"events": [event()]}),
                           503)
        assert "The prediction took longer than 0.2 s" in message
        monkeypatch.setattr(bundle, "predict_matrix", predict)
        assert client.post("/v2/models/hep/events", json={"events": [event()]}).is_success


def test_overloaded_queue_is_503(make_repo):
    app = create_app(ServeConfig(models=make_repo(), max_queue_rows=10))
    with TestClient(app) as client:
        wait_ready(client.get)
        app.state.server.pool.queued_rows = 10  # as if 10 rows were waiting
        message = error_of(client.post("/v2/models/hep/events", json={"events": [event()]}),
                           503)
        assert "The server is overloaded: 10 rows are waiting" in message
        app.state.server.pool.queued_rows = 0
        assert client.post("/v2/models/hep/events", json={"events": [event()]}).is_success


def test_empty_matrix_gives_empty_scores(app_client):
    response = app_client.post("/v2/models/hep/infer", json={"inputs": [{
        "name": "features", "shape": [0, F], "datatype": "FP32", "data": []}]})
    assert response.json()["outputs"][0]["shape"] == [0]


# -- every bad input: a 4xx with a message, and the server keeps serving ------------------


def event(**overrides) -> dict:
    base = {"MET_px": 1.0, "MET_py": 2.0, "NPrimaryVertices": 7, "Jet_Px": [30.0],
            "Jet_Py": [40.0], "Jet_E": [60.0], "Jet_btag": [0.1], "Muon_Px": [],
            "Muon_Py": [], "Muon_E": []}
    base.update(overrides)
    return base


BAD_REQUESTS = [
    # (method, path, body, headers, status, message)
    ("post", "/v2/models/hep/infer", b"{oops", {}, 400, "The request body is not valid JSON"),
    ("post", "/v2/models/hep/infer",
     b'{"inputs": [{"name": "features", "shape": [1, 19], "datatype": "FP32", '
     b'"data": [nan]}]}', {}, 400, "Write missing values as NaN or null"),
    ("post", "/v2/models/hep/infer",
     b'{"inputs": [{"name": "features", "shape": [1, 19], "datatype": "FP32", '
     b'"data": [NaN]}]}', {}, 400, "'data' holds 1 values but the shape needs 19"),
    ("post", "/v2/models/hep/events", b'{"events": [{"MET_px": -inf}]}', {}, 400,
     "infinite ones as Infinity or -Infinity"),
    ("post", "/v2/models/hep/infer",
     {"inputs": [{"name": "features", "shape": [1, 18], "datatype": "FP32",
                  "data": [0] * 18}]}, {}, 400, r"has shape \[1, 18\]; expected \[n, 19\]"),
    ("post", "/v2/models/hep/infer",
     {"inputs": [{"name": "features", "shape": [1, 19], "datatype": "BYTES",
                  "data": ["a"] * 19}]}, {}, 400, "datatype 'BYTES' is not supported"),
    ("post", "/v2/models/hep/infer",
     {"inputs": [{"name": "features", "shape": [1, 19], "datatype": "FP32",
                  "data": ["a"] * 19}]}, {}, 400, "holds a string but the datatype is FP32"),
    ("post", "/v2/models/nope/infer", {}, {}, 404, "Unknown model 'nope'. Available models: "
                                                   "hep"),
    ("post", "/v2/models/hepp/events", {}, {}, 404, "Did you mean 'hep'"),
    ("post", "/v2/models/hep/versions/7/infer", {}, {}, 404,
     "Model 'hep' has no loaded version '7'. Loaded versions: 1, 2"),
    ("post", "/v2/models/hep/versions/latest/infer", {}, {}, 400,
     "Invalid model version 'latest': versions are positive integers"),
    ("post", "/v2/models/hep/events", {"events": [event(MET_px=None), event()]}, {}, 200, ""),
    ("post", "/v2/models/hep/events", {"events": [event(), {"MET_px": 1}]}, {}, 400,
     "Event 1 has no 'MET_py', which the model's features need"),
    ("post", "/v2/models/hep/events", {"events": [event(Jet_Px=[1.0, 2.0])]}, {}, 400,
     "Branches 'Jet_E' and 'Jet_Px' of collection 'Jet' have different numbers of objects"),
    ("post", "/v2/models/hep/events", {"events": [event(MET_px=[1.0])]}, {}, 400,
     "Branch 'MET_px' is jagged .* but is used as a flat feature"),
    ("post", "/v2/models/hep/events", {"events": [event(Jet_E=3.0)]}, {}, 400,
     "Branch 'Jet_E' of collection 'Jet' is not jagged"),
    ("post", "/v2/models/hep/events", {"rows": []}, {}, 400, 'Send events as {"events"'),
    ("post", "/v2/models/hep/events", {"events": [event()] * 5001}, {}, 413,
     "holds 5001 events; at most 5000 are allowed per request"),
    ("post", "/v2/models/hep/infer", b"x" * 2_000_001, {}, 413,
     "accepts at most 2000000 bytes per request"),
    ("post", "/v2/models/hep/infer", b"{}", {"content-encoding": "zstd"}, 415,
     "Content-Encoding 'zstd' is not supported"),
    ("get", "/v2/models/hep/infer", None, {}, 405, "GET is not allowed on /v2/models/hep/infer"),
    ("get", "/v3/whatever", None, {}, 404, "No endpoint GET /v3/whatever"),
]


@pytest.mark.parametrize("method,path,body,headers,status,message",
                         BAD_REQUESTS, ids=[f"{r[4]}-{r[5][:40]}" for r in BAD_REQUESTS])
def test_bad_input_is_a_4xx_with_a_message(app_client, method, path, body, headers, status,
                                           message):
    content = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    response = app_client.request(method, path, content=content, headers=headers)
    if status == 200:
        assert response.status_code == 200, response.text
        assert np.isfinite(response.json()["scores"]).all()
    else:
        assert re.search(message, error_of(response, status)), error_of(response, status)
    # and the server keeps serving
    ok = app_client.post("/v2/models/hep/events", json={"events": [event()]})
    assert ok.status_code == 200


def test_errors_are_counted_in_metrics(app_client):
    app_client.post("/v2/models/hep/infer", content=b"{oops")
    app_client.post("/v2/models/hep/events", json={"events": [event()]})
    text = app_client.get("/metrics").text
    assert 'mlaas_requests_total{endpoint="infer",model="hep",status="400",version="2"} 1.0' \
        in text
    assert 'mlaas_events_scored_total{model="hep",version="2"} 1.0' in text
    assert "mlaas_batch_rows_bucket" in text and "mlaas_queue_rows 0.0" in text
    assert 'mlaas_model_loads_total{model="hep",result="ok"} 2.0' in text
    assert "mlaas_models_loaded 2.0" in text


# -- auth ---------------------------------------------------------------------------------


def test_write_endpoints_disabled_without_token(make_repo, bundle_archive, monkeypatch):
    monkeypatch.delenv("MLAAS_SERVE_TOKEN", raising=False)
    app = create_app(ServeConfig(models=make_repo()))
    with TestClient(app) as client:
        wait_ready(client.get)
        for path in ("/v2/repository/models/hep/load", "/v2/repository/models/hep/unload",
                     "/v2/repository/models/hep/upload"):
            message = error_of(client.post(path, content=bundle_archive, headers=AUTH), 403)
            assert "Model management is disabled on this server: no token" in message
        assert "disabled" in error_of(client.delete("/v2/repository/models/hep"), 403)
        assert client.post("/v2/models/hep/events", json={"events": [event()]}).is_success


def test_token_from_file_and_bad_tokens(make_repo, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    app = create_app(ServeConfig(models=make_repo(), token_file=token_file,
                                 protect_reads=True))
    with TestClient(app) as client:
        wait_ready(client.get)
        path = "/v2/repository/models/hep/load"
        response = client.post(path)
        assert "needs a bearer token" in error_of(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "not valid" in error_of(client.post(path, headers={
            "Authorization": "Bearer wrong"}), 401)
        assert "needs a bearer token" in error_of(client.post(path, headers={
            "Authorization": f"Basic {TOKEN}"}), 401)
        assert client.post(path, headers=AUTH).json() == {"name": "hep", "versions": ["1", "2"]}
        # reads are protected too, health and metrics are not
        assert error_of(client.get("/v2/models/hep"), 401)
        assert client.get("/v2/models/hep", headers=AUTH).is_success
        assert client.get("/v2/health/ready").is_success and client.get("/metrics").is_success


def test_token_from_environment(make_repo, monkeypatch):
    monkeypatch.setenv("MLAAS_SERVE_TOKEN", "from-env")
    app = create_app(ServeConfig(models=make_repo()))
    with TestClient(app) as client:
        wait_ready(client.get)
        ok = client.post("/v2/repository/models/hep/unload",
                         headers={"Authorization": "Bearer from-env"})
        assert ok.json() == {"name": "hep", "unloaded": True}


# -- model management ---------------------------------------------------------------------


def test_upload_swaps_in_a_new_version(app_client, bundle_archive, trained: Trained):
    client = Client(http=app_client, token=TOKEN)
    assert client.upload("hep", bundle_archive) == "3"
    assert client.metadata("hep")["versions"] == ["1", "2", "3"]
    assert client.upload("fresh", trained.path, version=5) == "5"  # a directory, packed
    assert client.score_events("fresh", trained.events[:3]).shape == (3,)
    with pytest.raises(ServerError, match="already has version 5"):
        client.upload("fresh", bundle_archive, version=5)
    rows = {(r["name"], r["version"]): r["state"] for r in client.index()}
    assert rows == {("hep", "1"): "READY", ("hep", "2"): "READY", ("hep", "3"): "READY",
                    ("fresh", "5"): "READY"}


def test_delete_version_and_model(app_client, make_repo):
    client = Client(http=app_client, token=TOKEN)
    client.delete("hep", 2)
    assert client.metadata("hep")["parameters"]["version"] == "1"
    repo = app_client.app.state.server.config.models
    assert sorted(p.name for p in (repo / "hep").iterdir()) == ["1"]
    with pytest.raises(ServerError, match="has no version '2'"):
        client.delete("hep", 2)
    client.delete("hep")
    assert not (repo / "hep").exists()
    with pytest.raises(ServerError, match=r"Unknown model 'hep'.*repository is empty"):
        client.metadata("hep")


def test_unload_and_load(app_client):
    client = Client(http=app_client, token=TOKEN)
    client.unload("hep")
    with pytest.raises(ServerError, match=r"is in the repository but was unloaded. Load it"):
        client.score_events("hep", [event()])
    assert {r["state"] for r in client.index()} == {"UNAVAILABLE"}
    assert client.index(ready_only=True) == []
    assert client.load("hep") == {"name": "hep", "versions": ["1", "2"]}
    assert client.score_events("hep", [event()]).shape == (1,)
    with pytest.raises(ServerError, match="Unknown model 'nothing'"):
        client.load("nothing")


def _archive_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _symlink() -> bytes:
    info = tarfile.TarInfo("bundle/model.ubj")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _archive_with(info)


def _device() -> bytes:
    info = tarfile.TarInfo("bundle/dev")
    info.type = tarfile.CHRTYPE
    return _archive_with(info)


def _file(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 2
    return _archive_with(info, b"{}")


UNSAFE = [
    (_file("/etc/evil"), 400, "has an absolute or parent path"),
    (_file("bundle/../../evil"), 400, "has an absolute or parent path"),
    (_symlink(), 400, "is not a regular file \\(links, devices and sparse files are refused\\)"),
    (_device(), 400, "is not a regular file"),
    (_file("a/b/c/model.ubj"), 400, "is nested too deep"),
    (b"not a tarball", 400, "is not a readable .tar.gz archive"),
    (tar_bytes({f"b/f{i}": b"" for i in range(65)}), 413,
     "has more than 64 members \\(the limit\\): at most 64 allowed"),
    (tar_bytes({"b/model.ubj": b"x"}), 400, "^<upload> is not a complete model bundle: "
                                            "features.json, metadata.json, metrics.json missing"),
]


@pytest.mark.parametrize("archive,status,message", UNSAFE,
                         ids=["absolute", "dotdot", "symlink", "device", "deep", "garbage",
                              "members", "incomplete"])
def test_unsafe_or_broken_uploads_are_refused(app_client, archive, status, message):
    response = app_client.post("/v2/repository/models/hep/upload", content=archive,
                               headers=AUTH)
    assert re.search(message, error_of(response, status)), error_of(response, status)
    repo = app_client.app.state.server.config.models
    assert sorted(p.name for p in (repo / "hep").iterdir()) == ["1", "2"]  # nothing left
    assert sorted(p.name for p in repo.iterdir()) == [".mlaas-repository.json", "hep"] or \
        sorted(p.name for p in repo.iterdir()) == ["hep"]  # no staging folder either
    assert app_client.get("/v2/models/hep").json()["versions"] == ["1", "2"]


def test_invalid_model_never_replaces_a_working_one(app_client, trained: Trained):
    members = {f"b/{p.name}": p.read_bytes() for p in trained.path.iterdir()}
    members["b/model.ubj"] = b"{garbage"
    response = app_client.post("/v2/repository/models/hep/upload",
                               content=tar_bytes(members), headers=AUTH)
    assert "model.ubj is not a readable XGBoost model" in error_of(response, 400)
    # corrupt version 2 on disk, then reload: the loaded copy keeps serving
    repo = app_client.app.state.server.config.models
    (repo / "hep" / "2" / "model.ubj").write_bytes(b"broken")
    message = error_of(app_client.post("/v2/repository/models/hep/load", headers=AUTH), 400)
    assert "version 2 failed to load" in message and "keeps serving" in message
    ok = app_client.post("/v2/models/hep/versions/2/events", json={"events": [event()]})
    assert ok.status_code == 200


def test_pickled_model_is_never_loaded(app_client, trained: Trained, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("the server must never unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    members = {f"b/{p.name}": p.read_bytes() for p in trained.path.iterdir()
               if p.name != "model.ubj"}
    members["b/model.pkl"] = pickle.dumps({"not": "a model"})
    response = app_client.post("/v2/repository/models/hep/upload", content=tar_bytes(members),
                               headers=AUTH)
    message = error_of(response, 400)
    assert "holds a pickle-only model (model.pkl)" in message and "the server refuses" in message


def test_upload_body_limit_and_empty_upload(make_repo):
    app = create_app(ServeConfig(models=make_repo(), max_upload_bytes=1000), token=TOKEN)
    with TestClient(app) as client:
        wait_ready(client.get)
        path = "/v2/repository/models/hep/upload"
        assert "at most 1000 bytes" in error_of(client.post(path, content=b"x" * 1001,
                                                            headers=AUTH), 413)
        assert "The upload is empty" in error_of(client.post(path, headers=AUTH), 400)
        assert "Invalid model name '..x'" in error_of(
            client.post("/v2/repository/models/..x/upload", content=b"x", headers=AUTH), 400)


def test_missing_repository_is_a_clear_error(tmp_path: Path):
    from mlaas_dask.errors import MlaasError

    with pytest.raises(MlaasError, match="is not a directory"):
        create_app(ServeConfig(models=tmp_path / "missing"))


def test_unversioned_bundle_folder_is_version_1(make_repo, trained: Trained, tmp_path):
    import shutil

    root = tmp_path / "flat"
    shutil.copytree(trained.path, root / "direct")
    with TestClient(create_app(ServeConfig(models=root), token=TOKEN)) as client:
        wait_ready(client.get)
        assert client.get("/v2/models/direct").json()["versions"] == ["1"]
        message = error_of(client.post("/v2/repository/models/direct/upload",
                                       content=b"x", headers=AUTH), 409)
        assert "bundle folder without versions" in message
