"""Export a model bundle for production outside mlaas_dask: ONNX, or a Triton repository.

``onnx`` (a folder)::

    model.onnx        the model: XGBoost converted with onnxmltools (TreeEnsembleClassifier;
                      outputs ``label`` and ``probabilities``), or a network's own graph
    features.json     the FeatureSpec that makes the model's input from events (as
                      weaver-core ships a preprocess.json next to its ONNX), for ONNX
                      Runtime users (e.g. CMSSW) to apply
    preprocess.json   NaN replacement and scaling to apply before a network (when the
                      bundle has it; XGBoost needs none)
    export.json       input and output names, the class of each probability column, the
                      source bundle, the largest score difference found against ours

``triton`` (a model repository)::

    <name>/config.pbtxt      max_batch_size, input/output, dynamic_batching; checked by
                             parsing it with Triton's model_config protobuf when
                             tritonclient is installed
    <name>/1/xgboost.json    XGBoost for the FIL backend (model_type xgboost_json,
                             predict_proba: one probability column per class), or
    <name>/1/model.onnx      a network for the onnxruntime backend
    <name>/features.json, <name>/export.json (and preprocess.json), as above

Every ONNX export is scored with onnxruntime against the bundle's own
:meth:`~mlaas_dask.bundle.ModelBundle.predict_matrix` on a probe matrix (with missing
values) and refused if a score differs by more than :data:`TOLERANCE`. The folder is
written atomically (a hidden temporary folder renamed into place). scikit-learn and
pickle bundles are refused: neither format holds them here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.bundle import ONNX_FILE, ModelBundle
from mlaas_dask.errors import BundleError, MissingExtra
from mlaas_dask.features.scaling import PREPROCESS_FILE
from mlaas_dask.features.spec import FEATURES_FILE

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "triton")
#: the file describing an export (and marking a folder as one, for --overwrite)
EXPORT_FILE = "export.json"
#: the largest difference allowed between exported and bundle scores
TOLERANCE = 1e-5
#: ONNX opset of converted XGBoost models (the newest onnxmltools writes)
XGBOOST_OPSET = 15
INPUT = "features"
#: what each format holds, by bundle kind
HOLDS = {"onnx": ("xgboost", "onnx"), "triton": ("xgboost", "onnx")}


def export_bundle(bundle: ModelBundle | str | os.PathLike[str], fmt: str,
                  out: str | os.PathLike[str], *, name: str | None = None,
                  max_batch_size: int = 1024, max_queue_delay_us: int = 100,
                  overwrite: bool = False) -> Path:
    """Export ``bundle`` as ``fmt`` (``onnx`` or ``triton``) into the folder ``out``.

    Parameters
    ----------
    name
        The model's name in a Triton repository (default: the bundle folder's name).
    max_batch_size, max_queue_delay_us
        Triton's ``max_batch_size`` and the dynamic batcher's queue delay.
    overwrite
        Replace ``out`` if it is an earlier export (never another folder).

    Raises
    ------
    BundleError
        A format that cannot hold the bundle's model kind, or exported scores that differ.
    """
    if fmt not in FORMATS:
        raise BundleError(f"Unknown export format {fmt!r}; the formats are "
                          f"{', '.join(FORMATS)}.")
    model = bundle if isinstance(bundle, ModelBundle) else ModelBundle.load(bundle)
    if model.kind not in HOLDS[fmt]:
        raise BundleError(
            f"Model bundle {model.path} holds a {model.kind} model, which the {fmt} export "
            f"cannot hold (it takes {' and '.join(HOLDS[fmt])} bundles). Serve it with "
            "'mlaas serve', or train it as XGBoost or a network.", bundle=str(model.path))
    out = Path(out)
    _check_out(out, overwrite)
    onnx_model, difference = _onnx_of(model)
    described = _description(model, fmt, difference)
    if fmt == "onnx":
        files = {ONNX_FILE: onnx_model, **_beside(model, described)}
    else:
        files = _triton_files(model, name or Path(model.path).name.removesuffix(".tar.gz"),
                              onnx_model, described, max_batch_size, max_queue_delay_us)
    _write(out, files, overwrite)
    logger.info("Exported %s as %s to %s (largest score difference %.1e).", model.path, fmt,
                out, difference)
    return out


def _onnx_of(model: ModelBundle) -> tuple[bytes, float]:
    """The bundle's model as ONNX bytes, and the largest score difference vs ours."""
    data = bytes(model.model.data) if model.kind == "onnx" else _xgboost_to_onnx(model)
    return data, _check_scores(model, data)


def _xgboost_to_onnx(model: ModelBundle) -> bytes:
    try:
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        raise MissingExtra("Exporting XGBoost to ONNX needs onnxmltools: pip install "
                           "onnxmltools.", module="onnxmltools") from None
    converted = convert_xgboost(model.model,
                                initial_types=[(INPUT, FloatTensorType([None,
                                                                        model.spec.n_features]))],
                                target_opset=XGBOOST_OPSET)
    return bytes(converted.SerializeToString())


def probe_matrix(model: ModelBundle, rows: int = 512) -> np.ndarray:
    """Feature rows to compare scores on: spread values, a third of them missing."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(40, 40, (rows, model.spec.n_features)).astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.3] = np.nan
    return matrix


def exported_scores(data: bytes, matrix: np.ndarray, model: ModelBundle) -> np.ndarray:
    """Scores of ONNX ``data`` with onnxruntime, as the bundle gives them (binary: the
    second class's probability; preprocessing applied first, as for the bundle)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    if model.preprocess is not None:
        matrix = model.preprocess.apply(matrix)
    outputs = {o.name: i for i, o in enumerate(session.get_outputs())}
    result = session.run(None, {session.get_inputs()[0].name: matrix})
    scores = np.asarray(result[outputs.get("probabilities", 0)], dtype=np.float32)
    if model.is_binary:
        return scores[:, -1]
    return scores


def _check_scores(model: ModelBundle, data: bytes) -> float:
    matrix = probe_matrix(model)
    ours = model.predict_matrix(matrix)
    theirs = exported_scores(data, matrix, model)
    difference = float(np.max(np.abs(theirs - ours)))
    if not difference <= TOLERANCE:
        raise BundleError(f"The ONNX export of {model.path} scores up to {difference:.2e} "
                          f"away from the bundle (allowed {TOLERANCE:g}); not written.",
                          bundle=str(model.path))
    return difference


def _description(model: ModelBundle, fmt: str, difference: float) -> dict[str, Any]:
    return {
        "format": fmt,
        "bundle": str(model.path),
        "kind": model.kind,
        "input": {"name": INPUT if model.kind == "xgboost" else "(the network's input)",
                  "shape": [None, model.spec.n_features], "dtype": "float32",
                  "columns": model.feature_names},
        "classes": model.classes,
        "score": ("probability of the last class, "
                  f"{model.classes[-1]!r}" if model.is_binary else "one probability per class"),
        "preprocess": PREPROCESS_FILE if model.preprocess is not None else None,
        "max_score_difference": difference,
    }


def _beside(model: ModelBundle, described: dict[str, Any]) -> dict[str, bytes]:
    """features.json, preprocess.json (if any) and export.json."""
    files = {FEATURES_FILE: model.spec.to_json().encode(),
             EXPORT_FILE: json.dumps(described, indent=2).encode()}
    if model.preprocess is not None:
        files[PREPROCESS_FILE] = json.dumps(model.preprocess.to_dict(), indent=2).encode()
    return files


def _triton_files(model: ModelBundle, name: str, onnx_model: bytes, described: dict[str, Any],
                  max_batch_size: int, delay_us: int) -> dict[str, bytes]:
    if model.kind == "xgboost":
        version_file, data = "xgboost.json", bytes(model.model.save_raw("json"))
    else:
        version_file, data = ONNX_FILE, onnx_model
    config = triton_config(model, name, max_batch_size, delay_us, onnx_model)
    check_triton_config(config)
    files = {f"{name}/config.pbtxt": config.encode(), f"{name}/1/{version_file}": data}
    files.update({f"{name}/{k}": v for k, v in _beside(model, described).items()})
    return files


def triton_config(model: ModelBundle, name: str, max_batch_size: int, delay_us: int,
                  onnx_model: bytes) -> str:
    """``config.pbtxt`` of the model: FIL for XGBoost, onnxruntime for networks."""
    n_features, columns = model.spec.n_features, len(model.classes)
    if model.kind == "xgboost":
        head = ('backend: "fil"\n'
                'parameters [\n'
                '  { key: "model_type" value: { string_value: "xgboost_json" } },\n'
                '  { key: "output_class" value: { string_value: "true" } },\n'
                '  { key: "predict_proba" value: { string_value: "true" } }\n'
                ']\n')
        inputs, outputs = [("input__0", n_features)], [("output__0", columns)]
    else:
        import onnx

        graph = onnx.load_from_string(onnx_model).graph
        head = 'platform: "onnxruntime_onnx"\nbackend: "onnxruntime"\n'
        width = columns - 1 if model.is_binary else columns
        inputs, outputs = [(graph.input[0].name, n_features)], [(graph.output[0].name, width)]
    tensors = [f'{kind} [\n  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {d} ] }}\n]\n'
               for kind, items in (("input", inputs), ("output", outputs)) for n, d in items]
    return (f'name: "{name}"\n{head}max_batch_size: {max_batch_size}\n' + "".join(tensors)
            + f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n")


def check_triton_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text with Triton's model_config protobuf (when tritonclient
    is installed; otherwise nothing is checked) and return the message."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:  # a defect of this module, said plainly
        raise BundleError(f"The Triton config.pbtxt written for the export does not parse "
                          f"as Triton's ModelConfig: {err}") from None


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise BundleError(f"{out} exists and is not empty; choose another folder or "
                              "pass --overwrite to replace an earlier export.")
        if not _is_export(out):
            raise BundleError(f"{out} is not an earlier export (no {EXPORT_FILE} found); "
                              "--overwrite replaces only exports. Choose another folder.")


def _is_export(out: Path) -> bool:
    return out.is_dir() and ((out / EXPORT_FILE).is_file() or any(
        (p / EXPORT_FILE).is_file() for p in out.iterdir() if p.is_dir()))


def _write(out: Path, files: dict[str, bytes], overwrite: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for relative, data in files.items():
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if out.exists():
            if not overwrite:
                raise BundleError(f"{out} appeared while exporting; nothing replaced.")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
