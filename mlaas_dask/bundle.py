"""ModelBundle: a trained model with everything needed to predict from raw events.

A bundle is a directory (or its ``.tar.gz``)::

    model.ubj        the XGBoost model, UBJSON (never a pickle)
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.errors import BundleError
from mlaas_dask.features import FeatureSpec

MODEL_FILE = "model.ubj"
REQUIRED_FILES = (MODEL_FILE, "features.json", "metadata.json", "metrics.json")
BUNDLE_FORMAT = "mlaas_dask.bundle/1"
#: limits for archives received from elsewhere (uploads): members and total unpacked bytes
MAX_MEMBERS = 64
MAX_UNPACKED_BYTES = 512 * 1024 * 1024


@dataclass
class ModelBundle:
    """A loaded model bundle.

    Attributes
    ----------
    spec
        The FeatureSpec that turns events into the model's input matrix.
    booster
        The XGBoost booster.
    classes
        Class names, in label order; a binary model has two and scores the second.
    """

    path: Path
    spec: FeatureSpec
    booster: Any
    classes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

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
    def load(cls, path: str | os.PathLike[str]) -> ModelBundle:
        """Load a bundle directory or ``.tar.gz`` (extracted safely to a temporary folder).

        Only JSON and XGBoost UBJSON are read: nothing is unpickled.
        """
        path = Path(path)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            target = Path(tempfile.mkdtemp(prefix="mlaas-bundle-"))
            extract_archive(path.read_bytes(), target, name=str(path))
            path = target
        check_bundle_dir(path)
        import xgboost

        metadata = _read_json(path / "metadata.json")
        booster = xgboost.Booster()
        try:
            booster.load_model(bytearray((path / MODEL_FILE).read_bytes()))
        except xgboost.core.XGBoostError as err:
            raise BundleError(
                f"Model bundle {path}: {MODEL_FILE} is not a readable XGBoost model "
                f"({str(err).splitlines()[0]}). Retrain or re-export the bundle."
            ) from None
        booster.set_param({"nthread": int(os.environ.get("MLAAS_PREDICT_THREADS", "0")) or 1})
        try:
            spec = FeatureSpec.from_json((path / "features.json").read_text())
        except Exception as err:  # noqa: BLE001 - any defect of the file is the bundle's
            raise BundleError(f"Model bundle {path}: features.json is invalid: {err}") from None
        classes = [str(c) for c in metadata.get("classes", ["background", "signal"])]
        if booster.num_features() != spec.n_features:
            raise BundleError(
                f"Model bundle {path}: the model expects {booster.num_features()} features but "
                f"features.json describes {spec.n_features}. The bundle is inconsistent; "
                "retrain it."
            )
        return cls(path, spec, booster, classes, metadata, _read_json(path / "metrics.json"))

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
        return np.asarray(self.booster.inplace_predict(matrix, missing=np.nan))

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
    if missing:
        raise BundleError(
            f"{path} is not a complete model bundle: {', '.join(missing)} missing. "
            "A bundle is written by 'mlaas train' and holds "
            f"{', '.join(REQUIRED_FILES)}."
        )
    metadata = _read_json(path / "metadata.json")
    if metadata.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}/metadata.json does not mark an mlaas_dask bundle (format "
            f"{metadata.get('format')!r}, expected {BUNDLE_FORMAT!r})."
        )


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
        The serialised model (XGBoost UBJSON bytes).
    extra_files
        Further files by name (plots).
    """
    out = Path(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files: dict[str, bytes] = {
            MODEL_FILE: model,
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


def extract_archive(data: bytes, target: Path, name: str = "archive") -> Path:
    """Safely unpack a bundle ``.tar.gz`` (from a user or the network) into ``target``.

    Only regular files are accepted, each inside one top-level folder or at the top level;
    absolute paths, ``..``, links, devices, too many members or too many bytes are refused.
    Returns ``target``, which then holds the bundle files directly.
    """
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BundleError(f"{name} is not a readable .tar.gz archive: {err}") from None
    if len(members) > MAX_MEMBERS:
        raise BundleError(f"{name} has {len(members)} members; at most {MAX_MEMBERS} allowed.")
    files: dict[str, tarfile.TarInfo] = {}
    total = 0
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not parts:
            raise BundleError(
                f"{name}: member {member.name!r} has an absolute or parent path; a bundle "
                "archive holds only files inside the bundle folder."
            )
        if member.isdir():
            continue
        if not member.isfile():
            raise BundleError(
                f"{name}: member {member.name!r} is not a regular file (links and devices "
                "are refused)."
            )
        if len(parts) > 2:
            raise BundleError(
                f"{name}: member {member.name!r} is nested too deep; expected "
                "'<bundle>/<file>'."
            )
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"{name} unpacks to more than {MAX_UNPACKED_BYTES} bytes.")
        base = parts[-1]
        if base in files:
            raise BundleError(f"{name}: file {base!r} appears twice.")
        files[base] = member
    target.mkdir(parents=True, exist_ok=True)
    for base, member in files.items():
        source = tar.extractfile(member)
        assert source is not None
        (target / base).write_bytes(source.read())
    check_bundle_dir(target)
    return target
