"""ModelBundle: a trained model with everything needed to predict from raw events.

A bundle is a directory (or its ``.tar.gz``)::

    model.ubj        an XGBoost model, UBJSON (never a pickle), or
    model.skops      a scikit-learn model (skops: loaded only with a list of safe types),
                     with preprocess.json (NaN replacement and scaling), or
    model.pkl        a pickle-only model: usable locally on request, refused by the server
    model.onnx       a neural network (ONNX, scored with onnxruntime: probabilities are
                     part of its graph), with preprocess.json and its weights as
                     weights.safetensors (for further training; never a pickle)
    features.json    the FeatureSpec
    metrics.json     test AUC, events per class and split, seconds per stage
    metadata.json    inputs, package versions, data summary, classes
    roc.png, scores.png
    report.html      the evaluation report (self-contained), its figures report_*.png,
                     and report_data.npz, what they are drawn from (mlaas_dask.report)

It is written atomically: files go into a hidden temporary folder next to the target, which
is renamed into place only when complete, so a half-written bundle never looks complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.archive import ArchiveLimits, Source, extract_tar_gz
from mlaas_dask.errors import BundleError, FeatureError, first_line
from mlaas_dask.features import FeatureSpec, Preprocess
from mlaas_dask.features.scaling import PREPROCESS_FILE
from mlaas_dask.features.spec import FEATURES_FILE
from mlaas_dask.outputs import (
    check_free_space,
    plain_names,
    reporting_full_disk,
    size_on_disk,
)

# The names of a bundle's files, here and only here (FEATURES_FILE and PREPROCESS_FILE
# come from the features package, which reads those files).
#: an XGBoost model (UBJSON), a skops model, a pickle-only model
MODEL_FILE = "model.ubj"
SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.pkl"
#: a neural network as ONNX, and its weights (safetensors) for further training
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
#: model file -> kind, in order of preference
MODEL_FILES = {MODEL_FILE: "xgboost", SKOPS_FILE: "sklearn", ONNX_FILE: "onnx",
               PICKLE_FILE: "pickle"}
#: marks a complete bundle (written last): inputs, versions, classes, the files written
METADATA_FILE = "metadata.json"
#: test AUC, events per class and split, seconds per stage
METRICS_FILE = "metrics.json"
#: the user's model file, kept for models of the user's own classes (run only if trusted)
USER_MODEL_FILE = "user_model.py"
#: the plots of the test split
ROC_PLOT = "roc.png"
SCORES_PLOT = "scores.png"
#: a network's loss per epoch, train vs validation
LEARNING_CURVE_PLOT = "learning_curve.png"
REQUIRED_FILES = (FEATURES_FILE, METADATA_FILE, METRICS_FILE)
BUNDLE_FORMAT = "mlaas_dask.bundle/1"
#: metadata.json key listing the files the bundle wrote (what --overwrite may replace)
BUNDLE_FILES_KEY = "bundle_files"
#: plots of bundles written before BUNDLE_FILES_KEY existed
LEGACY_PLOTS = (ROC_PLOT, SCORES_PLOT)
#: called with a bundle's staging folder; gives further files to write there
Stage = Callable[[Path], Mapping[str, bytes]]


@dataclass
class ModelBundle:
    """A loaded model bundle.

    Attributes
    ----------
    spec
        The FeatureSpec that turns events into the model's input matrix.
    model
        The XGBoost booster or the scikit-learn estimator.
    classes
        Class names, in label order; a binary model has two and scores the second.
    kind
        ``xgboost``, ``sklearn``, ``onnx`` (a neural network) or ``pickle``.
    preprocess
        NaN replacement and scaling applied before the model (non-XGBoost models).
    """

    path: Path
    spec: FeatureSpec
    model: Any
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    kind: str = "xgboost"
    preprocess: Preprocess | None = None
    #: the bundle's copy of the user's model file (kept in memory: a bundle loaded from
    #: an archive has no folder left to read it from)
    user_code: bytes | None = None

    @property
    def booster(self) -> Any:
        """The XGBoost booster (for XGBoost bundles)."""
        if self.kind != "xgboost":
            raise BundleError(f"Model bundle {self.path} holds a {self.kind} model, not XGBoost.",
                              bundle=str(self.path))
        return self.model

    def share_code(self, client: Any) -> None:
        """Make the user's model code (if the bundle has any) importable on the workers."""
        if self.kind != "xgboost" and self.user_code is not None:
            from mlaas_dask.usercode import share_with_workers

            share_with_workers(client, self.user_code)

    @property
    def is_binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def output_names(self) -> list[str]:
        """Names of the score columns: ``score`` for binary, ``score_<class>`` otherwise."""
        return ["score"] if self.is_binary else [f"score_{c}" for c in self.classes]

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, trusted_types: Sequence[str] = (),
             allow_pickle: bool = False) -> ModelBundle:
        """Load a bundle directory or ``.tar.gz``: an archive is extracted safely to a
        temporary folder, loaded into memory and the folder removed (the bundle's
        :attr:`path` is then the archive).

        Parameters
        ----------
        trusted_types
            Extra types a skops model may hold (beyond the exact, audited list in
            :mod:`mlaas_dask.bundle_safety`), e.g. a class from the user's model file, whose
            copy in the bundle is then imported. Never pass types from the network.
        allow_pickle
            Load a pickle-only model (``model.pkl``): only for bundles you made yourself.
            The server never does.
        """
        path = Path(path)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            with tempfile.TemporaryDirectory(prefix="mlaas-bundle-") as folder:
                try:
                    extract_archive(path.read_bytes(), Path(folder), name=str(path))
                    bundle = cls.load(folder, trusted_types=trusted_types,
                                      allow_pickle=allow_pickle)
                except BundleError as err:  # name the archive, not a folder that is gone
                    raise BundleError(str(err).replace(folder, str(path)), bundle=str(path),
                                      model=err.model, file=err.file) from None
            bundle.path = path
            return bundle
        check_bundle_dir(path)
        metadata = _read_json(path / METADATA_FILE)
        try:
            spec = FeatureSpec.from_json((path / FEATURES_FILE).read_text())
        except Exception as err:  # noqa: BLE001 - any defect of the file is the bundle's
            raise BundleError(f"Model bundle {path}: {FEATURES_FILE} is invalid: {err}",
                              bundle=str(path), file=FEATURES_FILE) from None
        kind, model_file = _model_file(path)
        user_code = _import_user_code(path, kind, trusted_types, allow_pickle)
        if kind == "xgboost":
            model = _load_xgboost(model_file, spec)
        elif kind == "sklearn":
            model = _load_skops(model_file, trusted_types, spec)
        elif kind == "onnx":
            model = _load_onnx(model_file, spec, len(metadata.get("classes", [0, 1])))
        else:
            model = _load_pickle(model_file, allow_pickle)
        preprocess = _read_preprocess(path, spec)
        classes = [str(c) for c in metadata.get("classes", ["background", "signal"])]
        return cls(path, spec, model, classes, metadata, _read_json(path / METRICS_FILE),
                   kind, preprocess, user_code)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for a feature matrix: shape ``(n,)`` for binary, ``(n, classes)`` else."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.spec.n_features:
            raise BundleError(
                f"Expected a matrix of shape (n, {self.spec.n_features}) with columns "
                f"{self.feature_names}, got shape {matrix.shape}.", bundle=str(self.path))
        if matrix.shape[0] == 0:
            shape = (0,) if self.is_binary else (0, len(self.classes))
            return np.zeros(shape, dtype=np.float32)
        if self.preprocess is not None:
            matrix = self.preprocess.apply(matrix)
        if self.kind == "xgboost":
            return np.asarray(self.model.inplace_predict(matrix, missing=np.nan))
        if self.kind == "onnx":
            scores = self.model.predict(matrix)
            return np.ascontiguousarray(scores[:, 0] if self.is_binary else scores)
        probabilities = np.asarray(self.model.predict_proba(matrix), dtype=np.float32)
        return np.ascontiguousarray(probabilities[:, 1] if self.is_binary else probabilities)

    def predict_events(self, events: Any) -> np.ndarray:
        """Scores for raw events (awkward records or a mapping of branches to arrays),
        through the bundle's FeatureSpec: the same code as at training time."""
        return self.predict_matrix(self.spec.transform(events))

    def predict_dask(self, events: Any, *, trusted_types: Sequence[str] = ()) -> Any:
        """Lazy scores of a dask-awkward collection (``uproot.dask``, coffea NanoEvents,
        after the user's selection): see :func:`mlaas_dask.dak.predict_dask`."""
        from mlaas_dask.dak import predict_dask

        return predict_dask(self, events, trusted_types=trusted_types)


def check_bundle_dir(path: Path) -> None:
    """Raise :class:`BundleError` unless ``path`` is a complete bundle directory."""
    if not path.exists():
        raise BundleError(f"Model bundle {path} does not exist. Train one with 'mlaas train'.",
                          bundle=str(path))
    if not path.is_dir():
        raise BundleError(
            f"Model bundle {path} is neither a directory nor a .tar.gz archive.",
            bundle=str(path))
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in MODEL_FILES):
        missing.insert(0, " or ".join(MODEL_FILES))
    if missing:
        raise BundleError(
            f"{path} is not a complete model bundle: {', '.join(missing)} missing. "
            "A bundle is written by 'mlaas train' and holds a model file ("
            f"{', '.join(MODEL_FILES)}) and {', '.join(REQUIRED_FILES)}.",
            bundle=str(path), file=missing[0] if missing[0] in REQUIRED_FILES else None)
    metadata = _read_json(path / METADATA_FILE)
    if metadata.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}/{METADATA_FILE} does not mark an mlaas_dask bundle (format "
            f"{metadata.get('format')!r}, expected {BUNDLE_FORMAT!r}).",
            bundle=str(path), file=METADATA_FILE)


def _import_user_code(path: Path, kind: str, trusted_types: Sequence[str],
                      allow_pickle: bool) -> bytes | None:
    """Import the bundle's copy of the user's model file under the module name the model
    refers to, and return its source; only when the caller trusts it: a pickle they allow,
    or a trusted type from that very file (the module name is a hash of its content).
    Otherwise the file is never run, here or on the workers (``None``)."""
    from mlaas_dask.usercode import import_user_file, module_name

    source = path / USER_MODEL_FILE
    if kind == "xgboost" or not source.is_file():
        return None
    code = source.read_bytes()
    name = module_name(code)
    if not (allow_pickle if kind == "pickle"
            else any(t.startswith(f"{name}.") for t in trusted_types)):
        return None
    try:
        import_user_file(source, code)
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise BundleError(
            f"Model bundle {path}: its copy of your model file ({USER_MODEL_FILE}) fails to "
            f"import: {type(err).__name__}: {err}. Fix the model file and retrain.",
            bundle=str(path), file=USER_MODEL_FILE) from None
    return code


def _read_preprocess(path: Path, spec: FeatureSpec) -> Preprocess | None:
    if not (path / PREPROCESS_FILE).is_file():
        return None
    try:
        return Preprocess.from_dict(_read_json(path / PREPROCESS_FILE), spec.n_features)
    except FeatureError as err:
        raise BundleError(f"Model bundle {path}: {err}", bundle=str(path),
                          file=PREPROCESS_FILE) from None


def _model_file(path: Path) -> tuple[str, Path]:
    for name, kind in MODEL_FILES.items():
        if (path / name).is_file():
            return kind, path / name
    raise BundleError(f"Model bundle {path} has no model file.",  # checked before
                      bundle=str(path))


def _load_xgboost(model_file: Path, spec: FeatureSpec) -> Any:
    import xgboost

    from mlaas_dask.bundle_safety import check_xgboost_trees

    where, at = _where(model_file)
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(model_file.read_bytes()))
        model = json.loads(booster.save_raw("json"))
    except (xgboost.core.XGBoostError, ValueError) as err:
        raise BundleError(
            f"{where} is not a readable XGBoost model ({first_line(err)}). Retrain "
            "or re-export the bundle.", **at) from None
    booster.set_param({"nthread": int(os.environ.get("MLAAS_PREDICT_THREADS", "0")) or 1})
    if booster.num_features() != spec.n_features:
        raise BundleError(
            f"Model bundle {model_file.parent}: the model expects {booster.num_features()} "
            f"features but {FEATURES_FILE} describes {spec.n_features}. The bundle is "
            "inconsistent; retrain it.", **at)
    try:
        check_xgboost_trees(model, spec.n_features, where)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{where}: the model's trees are malformed ({type(err).__name__}: "
                          f"{err}); the file is corrupt or crafted.", **at) from None
    return booster


def _load_skops(model_file: Path, trusted_types: Sequence[str], spec: FeatureSpec) -> Any:
    """Load a skops model whose every type is on the exact safe list (or trusted by the
    caller), then check its native structures and that it scores a matrix."""
    import sklearn._loss._loss  # noqa: F401 - skops names the Cython losses '_loss.<class>'
    import skops.io

    from mlaas_dask import bundle_safety as safety

    where, at = _where(model_file)
    data = model_file.read_bytes()
    found = safety.skops_types(data, where)
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as err:  # noqa: BLE001 - a corrupt file, whatever skops says
        raise BundleError(f"{where} is not a readable skops file ({err}).", **at) from None
    refused = safety.refused_types(found, untrusted, trusted_types)
    if refused:
        raise BundleError(
            f"{where} holds types that are not on the safe list ({', '.join(refused)}), so "
            "it is not loaded: loading them could run their code."
            f"{safety.explain(refused)} If you made this bundle yourself, trust them "
            "explicitly (mlaas predict --trust TYPE); the server never does.", **at)
    try:
        model = skops.io.loads(data, trusted=untrusted)
    except Exception as err:  # noqa: BLE001 - a corrupt file, whatever skops says
        raise BundleError(f"{where} cannot be loaded ({type(err).__name__}: {err}).",
                          **at) from None
    try:
        safety.check_native_structures(model, where)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as err:
        raise BundleError(f"{where}: the model's trees are malformed ({type(err).__name__}: "
                          f"{err}); the file is corrupt or crafted.", **at) from None
    _check_scores(model, spec, model_file)
    return model


def _check_scores(model: Any, spec: FeatureSpec, model_file: Path) -> None:
    """The model scores a matrix of the bundle's features (so a bad bundle is refused when
    it is loaded, not at every request)."""
    where, at = _where(model_file)
    try:
        scores = np.asarray(model.predict_proba(np.zeros((2, spec.n_features), np.float32)))
    except Exception as err:  # noqa: BLE001 - whatever the model raises
        raise BundleError(
            f"{where} cannot score the {spec.n_features} features that {FEATURES_FILE} "
            f"describes ({type(err).__name__}: {err}). The bundle is inconsistent; retrain it.",
            **at) from None
    if scores.ndim != 2 or scores.shape[0] != 2 or scores.shape[1] < 2:
        raise BundleError(f"{where} gives scores of shape {scores.shape} for 2 events; "
                          "expected one column per class. Retrain the bundle.", **at)


class OnnxModel:
    """An ONNX network scored by onnxruntime: one float32 input ``(n, features)``, one
    output of probabilities ``(n, 1)`` (binary) or ``(n, classes)``.

    Picklable (the bytes travel, e.g. to Dask workers for ``mlaas predict``); each
    process opens its own session, with ``MLAAS_PREDICT_THREADS`` threads (1 by default,
    as XGBoost bundles: the server and the workers run several predictions at once).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data, self._session = state["data"], None

    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = int(os.environ.get("MLAAS_PREDICT_THREADS", "0")) or 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(
                self.data, sess_options=options, providers=["CPUExecutionProvider"])
        return self._session

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed float32 matrix."""
        session = self.session
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: np.ascontiguousarray(matrix, np.float32)})[0],
                          dtype=np.float32)


def _load_onnx(model_file: Path, spec: FeatureSpec, n_classes: int) -> OnnxModel:
    """An ONNX model that onnxruntime opens and that scores the bundle's features with
    one probability per class (one for binary)."""
    where, at = _where(model_file)
    model = OnnxModel(model_file.read_bytes())
    try:
        session = model.session
    except ImportError:
        from mlaas_dask.errors import MissingExtra

        raise MissingExtra(f"{where}: onnxruntime is needed to score ONNX models but is not "
                           "installed.\nInstall it with:  pip install onnxruntime",
                           module="onnxruntime") from None
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors for a bad file vary
        raise BundleError(f"{where} is not a readable ONNX model ({first_line(err)}). "
                          "Retrain or re-export the bundle.", **at) from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise BundleError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; a "
                          "bundle's network takes one feature matrix and gives probabilities.",
                          **at)
    width = 1 if n_classes == 2 else n_classes
    try:
        scores = model.predict(np.zeros((2, spec.n_features), np.float32))
    except Exception as err:  # noqa: BLE001 - whatever the graph raises
        raise BundleError(
            f"{where} cannot score the {spec.n_features} features that {FEATURES_FILE} "
            f"describes ({first_line(err)}). The bundle is inconsistent; retrain it.",
            **at) from None
    if scores.shape != (2, width):
        raise BundleError(f"{where} gives scores of shape {scores.shape[1:]} per event; "
                          f"expected {width} for {n_classes} classes. Retrain the bundle.",
                          **at)
    return model


def _load_pickle(model_file: Path, allow_pickle: bool) -> Any:
    if not allow_pickle:
        raise BundleError(
            f"Model bundle {model_file.parent} holds a pickle-only model ({model_file.name}). "
            "Unpickling runs arbitrary code, so it is loaded only on explicit request for a "
            "bundle you made yourself (mlaas predict --allow-pickle); the server refuses it. "
            "Use a model that skops can store to serve it.", **_where(model_file)[1])
    import pickle

    with open(model_file, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - explicitly allowed by the bundle's owner


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"Cannot read {path}: {err}", bundle=str(path.parent),
                          file=path.name) from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object.", bundle=str(path.parent),
                          file=path.name)
    return data


def _where(model_file: Path) -> tuple[str, dict[str, str]]:
    """How messages name a bundle's model file, and the error attributes that name it."""
    return (f"Model bundle {model_file.parent}: {model_file.name}",
            {"bundle": str(model_file.parent), "file": model_file.name})


def write_bundle(
    out: str | os.PathLike[str],
    *,
    model: bytes,
    spec: FeatureSpec,
    model_file: str = MODEL_FILE,
    metadata: Mapping[str, Any],
    metrics: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
    stage: Stage | None = None,
) -> Path:
    """Write a bundle atomically and return its path.

    Parameters
    ----------
    out
        Target directory. If it exists the call fails, unless ``overwrite`` is true and
        it holds an mlaas_dask bundle and nothing else: files the bundle did not write
        (listed in its metadata.json under ``bundle_files``) are never deleted, so their
        presence is refused, naming them. A symbolic link is followed: the bundle
        replaces the directory it points to, and the link stays.
    model
        The serialised model: XGBoost UBJSON bytes, or skops / pickle bytes.
    model_file
        Its name in the bundle, which says its kind (see :data:`MODEL_FILES`).
    extra_files
        Further files by name (plots).
    stage
        Called with the staging folder once every file is there (the bundle loads from
        it): returns further files (or new contents) to write before the bundle is moved
        into place, e.g. the evaluation report (:func:`mlaas_dask.report.in_staging`).

    Raises
    ------
    BundleError
        For an existing target that may not be replaced.
    DiskSpaceError
        When the bundle does not fit on the disk (checked before writing; a disk that
        fills up meanwhile gives the same error and leaves no partial files).
    """
    out = Path(out)
    _check_target(out, overwrite)
    if model_file not in MODEL_FILES:
        raise ValueError(f"model_file must be one of {list(MODEL_FILES)}")
    files: dict[str, bytes] = {
        model_file: model,
        FEATURES_FILE: spec.to_json().encode(),
        METRICS_FILE: json_bytes(metrics),
        **(extra_files or {}),
    }
    own = sorted([*files, METADATA_FILE])
    # metadata.json marks the bundle as complete (written last) and lists what it wrote
    files[METADATA_FILE] = json_bytes({"format": BUNDLE_FORMAT, **metadata,
                                     BUNDLE_FILES_KEY: own})
    target = _real_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    needed = size_on_disk(len(data) for data in files.values())
    check_free_space(target.parent, needed, "the model bundle")
    with reporting_full_disk(out, needed, "the model bundle", cleanup=lambda: None):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with reporting_full_disk(out, needed, "the model bundle",
                                 cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            if stage is not None:
                add_files(tmp, stage(tmp))
        os.chmod(tmp, 0o755)
        _check_target(out, overwrite)  # again: a user may have added files meanwhile
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (plain names) into a bundle folder being staged, and list the new
    ones in its metadata.json (written last)."""
    names = sorted(plain_names(list(files)))
    if len(names) != len(files):
        raise ValueError(f"bundle files must have plain names, not {sorted(files)}")
    for name in names:
        if name != METADATA_FILE:
            (folder / name).write_bytes(files[name])
    metadata = json.loads(files[METADATA_FILE]) if METADATA_FILE in files else \
        _read_json(folder / METADATA_FILE)
    listed = plain_names(metadata.get(BUNDLE_FILES_KEY))
    metadata[BUNDLE_FILES_KEY] = sorted(listed | set(names) | {METADATA_FILE})
    (folder / METADATA_FILE).write_bytes(json_bytes(metadata))


def update_bundle(bundle: str | os.PathLike[str], stage: Stage) -> Path:
    """Rewrite some files of an existing bundle folder atomically: its own files are
    copied into a staging folder next to it, ``stage(folder)`` gives the files to add or
    replace, and the staging folder takes the bundle's place (files that are not the
    bundle's stay, as with ``--overwrite``).

    Raises
    ------
    BundleError
        When ``bundle`` is not a complete bundle folder.
    DiskSpaceError
        When the copy does not fit (nothing is left behind).
    """
    path = Path(bundle)
    check_bundle_dir(path)
    target = _real_path(path)
    own = sorted(name for name in _own_files(path) if (path / name).is_file())
    needed = size_on_disk((path / name).stat().st_size for name in own)
    check_free_space(target.parent, needed, "the model bundle")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with reporting_full_disk(path, needed, "the model bundle",
                                 cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
            for name in own:
                shutil.copyfile(path / name, tmp / name)
            add_files(tmp, stage(tmp))
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _real_path(out: Path) -> Path:
    """Where ``out`` really is: a symbolic link's (final) target, else ``out``."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise BundleError(
            f"Output directory {out} already exists. Choose another --out, or pass "
            "--overwrite to replace the bundle in it.", bundle=str(out))
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        check_bundle_dir(out)
    except BundleError:
        raise BundleError(
            f"Output directory {out} exists and is not an mlaas_dask bundle; it is never "
            "overwritten, even with --overwrite. Choose another --out.", bundle=str(out)
        ) from None
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more"
                                           if len(foreign) > 10 else "")
        raise BundleError(
            f"Output directory {out} holds files the bundle did not write: {shown}. "
            "--overwrite replaces a bundle's own files and never deletes anything else: "
            "move these files elsewhere, or choose another --out.", bundle=str(out),
            file=foreign[0])


def _own_files(bundle: Path) -> set[str]:
    """Names of the files the bundle wrote: its metadata.json lists them; for bundles
    written before that list existed, the bundle file names that are there."""
    listed = _read_json(bundle / METADATA_FILE).get(BUNDLE_FILES_KEY)
    if isinstance(listed, list):
        return plain_names(listed)
    known = {*MODEL_FILES, *REQUIRED_FILES, PREPROCESS_FILE, USER_MODEL_FILE, *LEGACY_PLOTS,
             WEIGHTS_FILE, LEARNING_CURVE_PLOT}
    return {name for name in known if (bundle / name).is_file()}


def _foreign_files(bundle: Path) -> list[str]:
    """Everything in ``bundle`` the bundle did not write, as relative paths (folders that
    hold nothing are listed with a trailing ``/``)."""
    own = _own_files(bundle)
    foreign = []
    for dirpath, dirs, names in os.walk(bundle):
        here = Path(dirpath)
        for name in names + [d for d in dirs if (here / d).is_symlink()]:
            relative = (here / name).relative_to(bundle).as_posix()
            if relative not in own or not (here / name).is_file() or (here / name).is_symlink():
                foreign.append(relative)
        if here != bundle and not names and not dirs:
            foreign.append(here.relative_to(bundle).as_posix() + "/")
    return sorted(foreign)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the complete bundle ``tmp`` to ``out`` (a real path, not a link); an old
    bundle there is moved aside first and removed after, file by file: anything else
    that appeared in it meanwhile is moved into the new bundle folder, never deleted."""
    if not out.exists():
        os.rename(tmp, out)
        return
    own = _own_files(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    for name in own:
        with contextlib.suppress(FileNotFoundError):
            (old / name).unlink()
    for item in old.iterdir():
        if not os.path.lexists(out / item.name):
            os.rename(item, out / item.name)
    with contextlib.suppress(OSError):
        old.rmdir()


def json_bytes(data: Mapping[str, Any]) -> bytes:
    """A bundle's JSON file: indented, numpy numbers and arrays as JSON ones."""
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def export_archive(bundle: str | os.PathLike[str], archive: str | os.PathLike[str]) -> Path:
    """Pack a bundle directory into a ``.tar.gz`` whose members sit in one folder.

    Only the files the bundle wrote are packed. The archive is built in memory, checked
    to fit on the disk, written to a hidden temporary file next to ``archive`` and renamed
    into place; on any error (a full disk too: :class:`DiskSpaceError`) nothing is left.
    """
    bundle, archive = Path(bundle), Path(archive)
    check_bundle_dir(bundle)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(_own_files(bundle)):
            tar.add(bundle / name, arcname=f"{bundle.name}/{name}")
    data = buffer.getvalue()
    needed = size_on_disk([len(data)])
    target = _real_path(archive)
    check_free_space(target.parent, needed, "the bundle archive")
    with reporting_full_disk(archive, needed, "the bundle archive", cleanup=lambda: None):
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                        dir=target.parent)
    tmp = Path(name)
    try:
        with reporting_full_disk(archive, needed, "the bundle archive",
                                 cleanup=lambda: tmp.unlink(missing_ok=True)), \
                os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return archive


def extract_archive(data: Source, target: Path, name: str = "archive",
                    limits: ArchiveLimits | None = None) -> Path:
    """Safely unpack a bundle ``.tar.gz`` (from a user or the network) into ``target``.

    The archive is streamed through :func:`mlaas_dask.archive.extract_tar_gz`: only
    regular files, each inside one top-level folder or at the top level; absolute paths,
    ``..``, links and devices are refused, and so is the first member over the limits
    (members, bytes per file, bytes in all: :class:`~mlaas_dask.archive.ArchiveLimits`),
    before the rest is decompressed. Returns ``target``, which then holds the bundle files
    directly.
    """
    extract_tar_gz(data, target, name, limits)
    check_bundle_dir(target)
    return target
