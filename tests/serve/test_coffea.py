"""coffea's own ``ml_tools.triton_wrapper`` against the server's gRPC on 127.0.0.1: it reads
the model metadata, sizes its requests from Triton's model configuration (its batch size
automatic), pads the last batch and scores padded events.

Over ``triton+http://`` coffea 2026.9 cannot run against any server with tritonclient 2.73:
it calls ``tritonclient.http``'s ``get_model_metadata(..., as_json=True)``, which takes no
``as_json`` (and reads the configuration as ``[...]["config"]``, the gRPC answer's layout).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlaas_dask.bundle import ModelBundle

from .conftest import LiveServer, Trained
from .test_grpc import start_both

coffea_ml = pytest.importorskip("coffea.ml_tools.triton_wrapper",
                                reason="coffea is not installed")


class FeatureWrapper(coffea_ml.triton_wrapper):
    """As a coffea user writes one: awkward events -> the model's input (here the feature
    matrix the bundle's FeatureSpec makes)."""

    def prepare_awkward(self, matrix: np.ndarray) -> tuple[list, dict]:
        return [], {"output_list": ["score"], "input_dict": {"features": matrix}}


def test_coffea_triton_wrapper_over_grpc(make_repo: Callable[..., Path],
                                        start_server: Callable[..., LiveServer],
                                        trained: Trained):
    servers = start_both(make_repo, start_server, max_batch_size=300)
    bundle = ModelBundle.load(trained.path)
    matrix = trained.matrix[:1000]  # NaN padding; 1000 rows: 4 batches, the last padded
    # coffea's gRPC client defaults to TLS
    wrapper = FeatureWrapper(f"triton+grpc://{servers.grpc}/hep/2",
                             client_args={"ssl": False})
    assert wrapper.batch_size == 300  # the server's preferred_batch_size
    scores = wrapper.numpy_call(["score"], {"features": matrix})["score"]
    np.testing.assert_allclose(scores, bundle.predict_matrix(matrix), atol=1e-6)
