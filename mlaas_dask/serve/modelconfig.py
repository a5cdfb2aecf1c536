"""Triton-style model configuration of a served model version.

Triton answers ``GET /v2/models/{name}[/versions/{v}]/config`` (and the gRPC ModelConfig
call) with the model's ``config.pbtxt`` as JSON. Clients that size their requests from it --
coffea's ``triton_wrapper`` when its batch size is automatic, CMS's SONIC -- read
``max_batch_size``, the input and output dims and data types, and the dynamic batcher's
settings. This server builds the same document from the bundle and the server settings:

- ``max_batch_size``: the most rows one request may hold (``--max-request-rows``); dims are
  then per row, without the batch dimension, as Triton writes them;
- ``input``: ``features``, ``TYPE_FP32``, dims ``[n_features]``;
- ``output``: one per score (``score``, or ``score_<class>``), dims ``[1]`` reshaped to ``[]``
  (each is a vector of one score per row, shape ``[n]`` in the responses);
- ``dynamic_batching``: ``preferred_batch_size`` is the rows merged into one prediction
  (``--max-batch-size``) and ``max_queue_delay_microseconds`` the time a batch waits for
  more requests (``--max-delay-ms``).

The field names are those of Triton's ``model_config.proto`` (``inference.ModelConfig``);
:func:`triton_config` output parses with ``google.protobuf.json_format.ParseDict``.
"""

from __future__ import annotations

from typing import Any

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.serve.config import ServeConfig
from mlaas_dask.serve.protocol import INPUT_NAME

#: the largest max_batch_size and preferred_batch_size (int32 fields)
INT32_MAX = 2**31 - 1
#: the platform string Triton shows for each bundle kind (what its backends call them)
PLATFORMS = {"xgboost": "xgboost_ubj", "sklearn": "sklearn_skops", "onnx": "onnxruntime_onnx"}


def triton_config(bundle: ModelBundle, name: str, version: str,
                  config: ServeConfig) -> dict[str, Any]:
    """The Triton model configuration (as JSON data) of ``bundle`` served as ``name``.

    Parameters
    ----------
    bundle
        The loaded bundle.
    name, version
        The model name and version it is served as.
    config
        The server settings (batch and request limits, batching delay, threads).

    Returns
    -------
    dict
        Triton's ``ModelConfig`` in its JSON form (field names as in model_config.proto).
    """
    return {
        "name": name,
        "platform": PLATFORMS.get(bundle.kind, bundle.kind),
        "backend": "mlaas_dask",
        "version_policy": {"specific": {"versions": [int(version)]}},
        "max_batch_size": min(config.max_request_rows, INT32_MAX),
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
                   "dims": [bundle.spec.n_features]}],
        "output": [{"name": output, "data_type": "TYPE_FP32", "dims": [1],
                    "reshape": {"shape": []}} for output in bundle.output_names],
        "dynamic_batching": {
            "preferred_batch_size": [min(config.max_batch_size, INT32_MAX)],
            "max_queue_delay_microseconds": round(config.max_delay_ms * 1000),
        },
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": config.n_threads}],
        "parameters": {
            "feature_names": {"string_value": ",".join(bundle.feature_names)},
            "classes": {"string_value": ",".join(bundle.classes)},
            "events_endpoint": {
                "string_value": f"/v2/models/{name}/versions/{version}/events"},
        },
    }
