"""ModelBundle: a trained model with everything needed to predict from raw events.

A bundle is a directory (or its ``.tar.gz``)::

    model.ubj        an XGBoost model, UBJSON (never a pickle), or
    model.skops      a scikit-learn model (skops: loaded only with a list of safe types),
                     with preprocess.json (NaN replacement and scaling), or
    model.pkl        a pickle-only model: usable locally on request, refused by the server
    features.json    the FeatureSpec
    metrics.json     test AUC, events per class and split, seconds per stage
    metadata.json    inputs, package versions, data summary, classes
    roc.png, scores.png

It is written atomically: files go into a hidden temporary folder next to the target, which
is renamed into place only when complete, so a half-written bundle never looks complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.archive import ArchiveLimits, Source, extract_tar_gz
from mlaas_dask.errors import BundleError
from mlaas_dask.features import FeatureSpec, Preprocess

MODEL_FILE = "model.ubj"
#: model file -> kind, in order of preference
MODEL_FILES = {"model.ubj": "xgboost", "model.skops": "sklearn", "model.pkl": "pickle"}
PREPROCESS_FILE = "preprocess.json"
#: the user's model file, kept for models of the user's own classes (run only if trusted)
USER_MODEL_FILE = "user_model.py"
REQUIRED_FILES = ("features.json", "metadata.json", "metrics.json")
#: types a skops model may hold without being trusted explicitly
SAFE_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
BUNDLE_FORMAT = "mlaas_dask.bundle/1"


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
        ``xgboost``, ``sklearn`` or ``pickle``.
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

    @property
    def booster(self) -> Any:
        """The XGBoost booster (for XGBoost bundles)."""
        if self.kind != "xgboost":
            raise BundleError(f"Model bundle {self.path} holds a {self.kind} model, not XGBoost.")
        return self.model

    def share_code(self, client: Any) -> None:
        """Make the user's model code (if the bundle has any) importable on the workers."""
        source = self.path / USER_MODEL_FILE
        if self.kind != "xgboost" and source.is_file():
            from mlaas_dask.usercode import module_name, share_with_workers

            data = source.read_bytes()
            share_with_workers(client, data, module_name(data))

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
        """Load a bundle directory or ``.tar.gz`` (extracted safely to a temporary folder).

        Parameters
        ----------
        trusted_types
            Extra types a skops model may hold (beyond scikit-learn, numpy and scipy),
            e.g. a class from the user's model file. Never pass types from the network.
        allow_pickle
            Load a pickle-only model (``model.pkl``): only for bundles you made yourself.
            The server never does.
        """
        path = Path(path)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            target = Path(tempfile.mkdtemp(prefix="mlaas-bundle-"))
            extract_archive(path.read_bytes(), target, name=str(path))
            path = target
        check_bundle_dir(path)
        metadata = _read_json(path / "metadata.json")
        try:
            spec = FeatureSpec.from_json((path / "features.json").read_text())
        except Exception as err:  # noqa: BLE001 - any defect of the file is the bundle's
            raise BundleError(f"Model bundle {path}: features.json is invalid: {err}") from None
        kind, model_file = _model_file(path)
        if kind != "xgboost" and (trusted_types or allow_pickle):
            _import_user_code(path)
        if kind == "xgboost":
            model = _load_xgboost(model_file, spec)
        elif kind == "sklearn":
            model = _load_skops(model_file, trusted_types)
        else:
            model = _load_pickle(model_file, allow_pickle)
        preprocess = None
        if (path / PREPROCESS_FILE).is_file():
            preprocess = Preprocess.from_dict(_read_json(path / PREPROCESS_FILE))
        classes = [str(c) for c in metadata.get("classes", ["background", "signal"])]
        return cls(path, spec, model, classes, metadata, _read_json(path / "metrics.json"),
                   kind, preprocess)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for a feature matrix: shape ``(n,)`` for binary, ``(n, classes)`` else."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.spec.n_features:
            raise BundleError(
                f"Expected a matrix of shape (n, {self.spec.n_features}) with columns "
                f"{self.feature_names}, got shape {matrix.shape}."
            )
        if matrix.shape[0] == 0:
            shape = (0,) if self.is_binary else (0, len(self.classes))
            return np.zeros(shape, dtype=np.float32)
        if self.preprocess is not None:
            matrix = self.preprocess.apply(matrix)
        if self.kind == "xgboost":
            return np.asarray(self.model.inplace_predict(matrix, missing=np.nan))
        probabilities = np.asarray(self.model.predict_proba(matrix), dtype=np.float32)
        return np.ascontiguousarray(probabilities[:, 1] if self.is_binary else probabilities)

    def predict_events(self, events: Any) -> np.ndarray:
        """Scores for raw events (awkward records or a mapping of branches to arrays),
        through the bundle's FeatureSpec: the same code as at training time."""
        return self.predict_matrix(self.spec.transform(events))


def check_bundle_dir(path: Path) -> None:
    """Raise :class:`BundleError` unless ``path`` is a complete bundle directory."""
    if not path.exists():
        raise BundleError(f"Model bundle {path} does not exist. Train one with 'mlaas train'.")
    if not path.is_dir():
        raise BundleError(
            f"Model bundle {path} is neither a directory nor a .tar.gz archive."
        )
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in MODEL_FILES):
        missing.insert(0, " or ".join(MODEL_FILES))
    if missing:
        raise BundleError(
            f"{path} is not a complete model bundle: {', '.join(missing)} missing. "
            "A bundle is written by 'mlaas train' and holds a model file ("
            f"{', '.join(MODEL_FILES)}) and {', '.join(REQUIRED_FILES)}."
        )
    metadata = _read_json(path / "metadata.json")
    if metadata.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}/metadata.json does not mark an mlaas_dask bundle (format "
            f"{metadata.get('format')!r}, expected {BUNDLE_FORMAT!r})."
        )


def _import_user_code(path: Path) -> None:
    """Import the bundle's copy of the user's model file under the module name the model
    refers to (only when the caller trusts the bundle)."""
    from mlaas_dask.usercode import import_file, module_name

    source = path / USER_MODEL_FILE
    if source.is_file():
        import_file(source, module_name(source.read_bytes()))


def _model_file(path: Path) -> tuple[str, Path]:
    for name, kind in MODEL_FILES.items():
        if (path / name).is_file():
            return kind, path / name
    raise BundleError(f"Model bundle {path} has no model file.")  # checked before


def _load_xgboost(model_file: Path, spec: FeatureSpec) -> Any:
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(model_file.read_bytes()))
    except xgboost.core.XGBoostError as err:
        raise BundleError(
            f"Model bundle {model_file.parent}: {model_file.name} is not a readable XGBoost "
            f"model ({str(err).splitlines()[0]}). Retrain or re-export the bundle."
        ) from None
    booster.set_param({"nthread": int(os.environ.get("MLAAS_PREDICT_THREADS", "0")) or 1})
    if booster.num_features() != spec.n_features:
        raise BundleError(
            f"Model bundle {model_file.parent}: the model expects {booster.num_features()} "
            f"features but features.json describes {spec.n_features}. The bundle is "
            "inconsistent; retrain it."
        )
    return booster


def _load_skops(model_file: Path, trusted_types: Sequence[str]) -> Any:
    import skops.io

    data = model_file.read_bytes()
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as err:  # noqa: BLE001 - a corrupt file, whatever skops says
        raise BundleError(f"Model bundle {model_file.parent}: {model_file.name} is not a "
                          f"readable skops file ({err}).") from None
    refused = [t for t in untrusted
               if not t.startswith(SAFE_TYPE_PREFIXES) and t not in trusted_types]
    if refused:
        raise BundleError(
            f"Model bundle {model_file.parent}: {model_file.name} holds types that are not on "
            f"the safe list ({', '.join(refused)}), so it is not loaded: loading them could "
            "run their code. If you made this bundle yourself, trust them explicitly "
            "(mlaas predict --trust TYPE); the server never does."
        )
    return skops.io.loads(data, trusted=list(untrusted))


def _load_pickle(model_file: Path, allow_pickle: bool) -> Any:
    if not allow_pickle:
        raise BundleError(
            f"Model bundle {model_file.parent} holds a pickle-only model ({model_file.name}). "
            "Unpickling runs arbitrary code, so it is loaded only on explicit request for a "
            "bundle you made yourself (mlaas predict --allow-pickle); the server refuses it. "
            "Use a model that skops can store to serve it."
        )
    import pickle

    with open(model_file, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - explicitly allowed by the bundle's owner


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"Cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object.")
    return data


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
) -> Path:
    """Write a bundle atomically and return its path.

    Parameters
    ----------
    out
        Target directory. If it exists the call fails, unless ``overwrite`` is true and
        it is an mlaas_dask bundle (nothing else is ever replaced).
    model
        The serialised model: XGBoost UBJSON bytes, or skops / pickle bytes.
    model_file
        Its name in the bundle, which says its kind (see :data:`MODEL_FILES`).
    extra_files
        Further files by name (plots).
    """
    out = Path(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if model_file not in MODEL_FILES:
            raise ValueError(f"model_file must be one of {list(MODEL_FILES)}")
        files: dict[str, bytes] = {
            model_file: model,
            "features.json": spec.to_json().encode(),
            "metrics.json": _dumps(metrics),
            **(extra_files or {}),
        }
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        # metadata.json marks the bundle as complete: written last
        (tmp / "metadata.json").write_bytes(_dumps({"format": BUNDLE_FORMAT, **metadata}))
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise BundleError(
            f"Output directory {out} already exists. Choose another --out, or pass "
            "--overwrite to replace the bundle in it."
        )
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        check_bundle_dir(out)
    except BundleError:
        raise BundleError(
            f"Output directory {out} exists and is not an mlaas_dask bundle; it is never "
            "overwritten, even with --overwrite. Choose another --out."
        ) from None


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _dumps(data: Mapping[str, Any]) -> bytes:
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
    """Pack a bundle directory into a ``.tar.gz`` whose members sit in one folder."""
    bundle, archive = Path(bundle), Path(archive)
    check_bundle_dir(bundle)
    tmp = archive.with_name(f".{archive.name}.partial")
    with tarfile.open(tmp, "w:gz") as tar:
        for item in sorted(bundle.iterdir()):
            if item.is_file():
                tar.add(item, arcname=f"{bundle.name}/{item.name}")
    os.replace(tmp, archive)
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
