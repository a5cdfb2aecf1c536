"""Triton's model configuration, GET /v2/models/{name}[/versions/{v}]/config, on a real
uvicorn on 127.0.0.1: parsed with Triton's own model_config protobuf (as tritonclient ships
it) and read through tritonclient.http."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mlaas_dask.serve import ServeConfig, create_app

from .conftest import TOKEN, LiveServer, Trained


@pytest.fixture
def config_server(tmp_path: Path, trained: Trained, trained_multi: Trained,
                  start_server: Callable[..., LiveServer]) -> LiveServer:
    """hep/1 (binary) and multi/3 (three classes), batching settings that are not the
    defaults."""
    root = tmp_path / "repo"
    shutil.copytree(trained.path, root / "hep" / "1")
    shutil.copytree(trained_multi.path, root / "multi" / "3")
    config = ServeConfig(models=root, threads=2, poll_s=0, max_batch_size=256,
                         max_delay_ms=2.5, max_request_rows=5000)
    return start_server(create_app(config, token=TOKEN))


def parsed(data: dict) -> object:
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    return json_format.ParseDict(data, model_config_pb2.ModelConfig())  # unknown fields fail


def test_config_is_a_triton_model_config(config_server: LiveServer, trained: Trained):
    from tritonclient.grpc import model_config_pb2

    with httpx.Client(base_url=config_server.url) as http:
        assert "model_configuration" in http.get("/v2").json()["extensions"]
        data = http.get("/v2/models/hep/config").json()
        assert http.get("/v2/models/hep/versions/1/config").json() == data
    config = parsed(data)
    assert config.name == "hep" and config.platform == "xgboost_ubj"
    assert config.max_batch_size == 5000
    (tensor,) = config.input
    assert tensor.name == "features" and tensor.data_type == model_config_pb2.TYPE_FP32
    assert list(tensor.dims) == [trained.spec.n_features]
    assert [(o.name, list(o.dims), list(o.reshape.shape)) for o in config.output] == [
        ("score", [1], [])]
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [256]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert list(config.version_policy.specific.versions) == [1]
    assert config.parameters["feature_names"].string_value.split(",") == \
        trained.spec.feature_names


def test_multiclass_config_and_tritonclient(config_server: LiveServer):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{config_server.port}")
    try:
        data = client.get_model_config("multi")
        assert client.get_model_config("multi", "3") == data
        with pytest.raises(triton.InferenceServerException, match="no loaded version '2'"):
            client.get_model_config("multi", "2")
        with pytest.raises(triton.InferenceServerException, match="Unknown model 'nope'"):
            client.get_model_config("nope")
    finally:
        client.close()
    config = parsed(data)
    assert [o.name for o in config.output] == ["score_ww", "score_wz", "score_zz"]
    assert list(config.version_policy.specific.versions) == [3]
