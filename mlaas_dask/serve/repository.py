"""The model repository: ``DIR/<name>/<version>/`` bundles, loaded, versioned, swapped.

Layout::

    DIR/higgs/1/   model.ubj features.json metadata.json metrics.json
    DIR/higgs/2/   ...                       <- the newest version is the default
    DIR/ttbar/     model.ubj ...             <- a bundle without versions is version 1

Versions are positive integers. Loading (re)reads every version of a model in the calling
thread, then replaces the model's entry in one assignment: requests that already hold the
old entry finish on it, new requests get the new one, so a reload fails no request. A
version that fails validation never replaces a working one: the working one keeps serving
and the failure is reported. Uploads are unpacked safely as they arrive into a hidden
staging folder of the repository, validated by loading them, and renamed into place only
then (the one step that holds the repository lock). Messages name bundles relative to the
repository (``hep/2``), never by their folder on the server.

With several server processes (``mlaas serve --workers N``) the repository folder is the
shared truth: every write bumps ``DIR/.mlaas-repository.json`` and each process reloads
when it sees a newer generation there (:meth:`ModelRepository.sync`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas_dask.archive import ArchiveLimits, Source, extract_tar_gz
from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import MlaasError, did_you_mean
from mlaas_dask.serve.errors import BadRequest, Conflict, NotFound

log = logging.getLogger("mlaas_dask.serve")

#: whole names only (always used with fullmatch: ``$`` would accept a trailing newline)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")
STATE_FILE = ".mlaas-repository.json"
BUNDLE_MARKER = "metadata.json"
#: age (seconds) beyond which a hidden staging or trash folder is a leftover
STALE_S = 3600.0


@dataclass
class ModelVersion:
    """One loaded version: the bundle and what serves it (the batcher)."""

    name: str
    version: str
    bundle: ModelBundle
    runtime: Any = None
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ModelEntry:
    """A model's loaded versions (never mutated: a reload builds a new entry)."""

    name: str
    versions: Mapping[str, ModelVersion]

    @property
    def default(self) -> ModelVersion:
        """The newest loaded version."""
        return self.versions[max(self.versions, key=int)]

    def sorted_versions(self) -> list[str]:
        return sorted(self.versions, key=int)


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else :class:`BadRequest`."""
    if not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"Invalid model name {name!r}: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit (at most 128 characters)."
        )
    return name


def check_version(version: str) -> str:
    """``version`` if it is a valid version (a positive integer), else :class:`BadRequest`."""
    if not VERSION_RE.fullmatch(version):
        raise BadRequest(f"Invalid model version {version!r}: versions are positive integers.")
    return version


class ModelRepository:
    """Models on disk and in memory.

    Parameters
    ----------
    root
        The repository folder.
    make_runtime
        Builds what serves a loaded bundle (the app's batcher); stored on the version.
    on_load
        Called with (name, version, ok) after each attempt to load a version (metrics).
    """

    def __init__(
        self,
        root: Path,
        make_runtime: Callable[[ModelBundle], Any] | None = None,
        on_load: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.make_runtime = make_runtime
        self.on_load = on_load
        self._models: dict[str, ModelEntry] = {}
        self._failures: dict[tuple[str, str], str] = {}
        self._unloaded: set[str] = set()
        self._lock = threading.RLock()
        self._generation = self._read_state().get("generation", 0)

    # -- reading (event loop, no lock: entries are replaced, never changed) ----------------

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version to serve, the newest when ``version`` is ``None``.

        Raises
        ------
        NotFound
            Unknown model or version, or a model that is not loaded, with what is there.
        """
        entry = self._models.get(name)
        if entry is None:
            raise self._not_loaded(name)
        if version is None:
            return entry.default
        found = entry.versions.get(version)
        if found is None:
            failure = self._failures.get((name, version))
            reason = f" It failed to load: {failure}" if failure else ""
            raise NotFound(
                f"Model {name!r} has no loaded version {version!r}.{reason} Loaded versions: "
                f"{', '.join(entry.sorted_versions())}."
            )
        return found

    def _not_loaded(self, name: str) -> NotFound:
        on_disk = self.scan()
        if name in on_disk:
            why = (
                "was unloaded" if name in self._unloaded
                else "failed to load: " + "; ".join(self._failure_texts(name))
                if self._failure_texts(name) else "is not loaded"
            )
            return NotFound(
                f"Model {name!r} is in the repository but {why}. Load it with "
                f"POST /v2/repository/models/{name}/load."
            )
        known = sorted(set(on_disk) | set(self._models))
        listing = did_you_mean(name, known, "models") if known else (
            " The repository is empty: upload a bundle with "
            "POST /v2/repository/models/{name}/upload."
        )
        return NotFound(f"Unknown model {name!r}.{listing}")

    def _failure_texts(self, name: str) -> list[str]:
        failures = self._failures.copy()  # atomic under the GIL; loads run in threads
        return [f"version {v}: {why}" for (n, v), why in sorted(failures.items()) if n == name]

    def loaded(self) -> dict[str, ModelEntry]:
        """Loaded models by name (a snapshot)."""
        return dict(self._models)

    def scan(self) -> dict[str, dict[str, Path]]:
        """Models on disk: name -> version -> bundle folder."""
        found: dict[str, dict[str, Path]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            name = model_dir.name
            if not model_dir.is_dir() or not NAME_RE.fullmatch(name):
                continue
            if (model_dir / BUNDLE_MARKER).is_file():
                found[name] = {"1": model_dir}
                continue
            versions = {
                v.name: v for v in model_dir.iterdir()
                if v.is_dir() and VERSION_RE.fullmatch(v.name)
            }
            if versions:
                found[name] = versions
        return found

    def index(self) -> list[dict[str, Any]]:
        """The repository index: every version on disk or in memory with its state."""
        rows = []
        on_disk = self.scan()
        for name in sorted(set(on_disk) | set(self._models)):
            entry = self._models.get(name)
            versions = set(on_disk.get(name, {})) | set(entry.versions if entry else {})
            for version in sorted(versions, key=int):
                rows.append(self._index_row(name, version, entry))
        return rows

    def _index_row(self, name: str, version: str, entry: ModelEntry | None) -> dict[str, Any]:
        if entry is not None and version in entry.versions:
            return {"name": name, "version": version, "state": "READY", "reason": ""}
        if name in self._unloaded:
            reason = "unloaded"
        else:
            reason = self._failures.get((name, version), "not loaded")
        return {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}

    # -- loading (worker threads) ---------------------------------------------------------

    def load_all(self) -> list[str]:
        """Load every model on disk that was not unloaded; returns the failure messages."""
        self._remove_stale()
        failures = []
        for name in self.scan():
            if name in self._unloaded:
                continue
            try:
                failures.extend(self._load(name))
            except MlaasError as err:
                failures.append(str(err))
        return failures

    def _remove_stale(self) -> None:
        """Remove staging and trash folders left by a server that was killed mid-upload or
        mid-delete (older than :data:`STALE_S`: any live upload is much younger)."""
        if not self.root.is_dir():
            return
        now = time.time()
        for path in self.root.iterdir():
            if path.name.startswith((".upload-", ".deleted-")) and path.is_dir():
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > STALE_S:
                        shutil.rmtree(path, ignore_errors=True)
                        log.info("removed %s, left by an interrupted upload or delete",
                                 path.name)

    def load(self, name: str) -> list[str]:
        """(Re)load every version of ``name`` from disk, then swap it in at once.

        Returns the failure messages (a failed version keeps its old loaded copy, if any).

        Raises
        ------
        NotFound
            When the model has no version on disk.
        """
        with self._lock:
            failures = self._load(name)
            self._bump()
            return failures

    def _load(self, name: str) -> list[str]:
        with self._lock:
            check_name(name)
            versions = self.scan().get(name)
            if not versions:
                raise self._not_loaded(name)
            old = self._models.get(name)
            loaded: dict[str, ModelVersion] = {}
            failures = []
            for version, path in sorted(versions.items(), key=lambda kv: int(kv[0])):
                try:
                    loaded[version] = self._load_version(name, version, path)
                except MlaasError as err:
                    failures.append(self._record_failure(name, version, err, old))
                    if old is not None and version in old.versions:
                        loaded[version] = old.versions[version]
            self._swap(name, loaded)
            self._unloaded.discard(name)
            return failures

    def _load_version(self, name: str, version: str, path: Path,
                      notify: bool = True) -> ModelVersion:
        """Load the bundle at ``path``; errors name it as clients see it (``hep/2``, or
        the uploaded bundle), never by its path on the server."""
        try:
            bundle = ModelBundle.load(path)
        except Exception as err:  # noqa: BLE001 - a broken file must not stop the others
            if notify:
                self._notify(name, version, False)
            text = str(err) if isinstance(err, MlaasError) else (
                f"Model bundle {path} cannot be loaded: {type(err).__name__}: {err}")
            raise MlaasError(self._relative(text, path)) from None
        runtime = self.make_runtime(bundle) if self.make_runtime else None
        self._failures.pop((name, version), None)
        if notify:
            self._notify(name, version, True)
        log.info("loaded model %s version %s from %s", name, version, path)
        return ModelVersion(name, version, bundle, runtime)

    def _relative(self, text: str, path: Path) -> str:
        """``text`` with ``path`` (and the repository folder) named relative to the
        repository: clients never see the server's folders."""
        shown = path.relative_to(self.root).as_posix()
        if shown.startswith(".upload-"):
            shown = "<upload>"
        return text.replace(str(path), shown).replace(str(self.root), "<repository>")

    def _record_failure(
        self, name: str, version: str, err: Exception, old: ModelEntry | None
    ) -> str:
        message = f"Model {name!r} version {version} failed to load: {err}"
        if old is not None and version in old.versions:
            message += " The previously loaded copy keeps serving."
        else:
            self._failures[(name, version)] = str(err)
        log.warning("%s", message)
        return message

    def _notify(self, name: str, version: str, ok: bool) -> None:
        if self.on_load is not None:
            self.on_load(name, version, ok)

    def _swap(self, name: str, versions: dict[str, ModelVersion]) -> None:
        models = dict(self._models)
        if versions:
            models[name] = ModelEntry(name, versions)
        else:
            models.pop(name, None)
        self._models = models  # one assignment: readers see the old or the new state

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (it stays on disk; ``load`` brings it back)."""
        with self._lock:
            check_name(name)
            if name not in self._models and name not in self.scan():
                raise self._not_loaded(name)
            self._swap(name, {})
            self._unloaded.add(name)
            self._bump()

    # -- writing (worker threads) ---------------------------------------------------------

    def upload(self, name: str, archive: Source, version: str | None = None,
               limits: ArchiveLimits | None = None) -> str:
        """Validate a bundle ``.tar.gz`` and add it as a new version; returns the version.

        The archive (bytes, or a ``read(n)`` function over a body still arriving) is
        unpacked as it is read, safely and within ``limits``, into a hidden staging folder
        of the repository, loaded to check it, and renamed into place. Only that rename
        holds the repository lock: other writes go on while an upload streams in, and a
        refused upload leaves nothing behind.
        """
        check_name(name)
        if version is not None:
            check_version(version)
        self._check_versioned(name)
        staging = Path(tempfile.mkdtemp(prefix=f".upload-{name}-", dir=self.root))
        try:
            extract_tar_gz(archive, staging, "The uploaded archive", limits)
            model = self._load_version(name, "upload", staging, notify=False)
            os.chmod(staging, 0o755)  # as trained bundles (mkdtemp makes it 0700)
            with self._lock:
                version = self._place(name, staging, version)
                model.version = version
                model.bundle.path = self.root / name / version
                entry = self._models.get(name)
                self._swap(name, {**(entry.versions if entry else {}), version: model})
                self._unloaded.discard(name)
                self._bump()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._notify(name, version, True)
        return version

    def _check_versioned(self, name: str) -> None:
        model_dir = self.root / name
        if (model_dir / BUNDLE_MARKER).is_file():
            raise Conflict(
                f"Model {name!r} is a bundle folder without versions; move its files to "
                f"{name}/1/ in the repository to add versions to it."
            )
        if model_dir.exists() and not model_dir.is_dir():
            raise Conflict(f"The repository holds a file named {name!r}, not a model folder.")

    def _place(self, name: str, staging: Path, version: str | None) -> str:
        """Rename ``staging`` to the model's new version folder (under the lock)."""
        self._check_versioned(name)
        existing = self.scan().get(name, {})
        if version is None:
            version = str(max((int(v) for v in existing), default=0) + 1)
        elif version in existing:
            raise Conflict(
                f"Model {name!r} already has version {version}. Delete it first, or upload "
                "without ?version= to get the next free version."
            )
        model_dir = self.root / name
        created = not model_dir.exists()
        model_dir.mkdir(exist_ok=True)
        try:
            os.rename(staging, model_dir / version)
        except OSError:
            if created:
                with contextlib.suppress(OSError):
                    model_dir.rmdir()
            raise Conflict(
                f"Model {name!r} version {version} appeared while uploading; retry."
            ) from None
        return version

    def delete(self, name: str, version: str | None = None) -> None:
        """Remove a version (or the whole model) from memory and from disk."""
        with self._lock:
            check_name(name)
            on_disk = self.scan().get(name, {})
            entry = self._models.get(name)
            if version is None:
                if not on_disk and entry is None:
                    raise self._not_loaded(name)
                self._swap(name, {})
                self._discard(self.root / name)
            else:
                check_version(version)
                if version not in on_disk and (entry is None or version not in entry.versions):
                    raise NotFound(f"Model {name!r} has no version {version!r}.")
                if entry is not None:
                    self._swap(name, {v: m for v, m in entry.versions.items() if v != version})
                path = on_disk.get(version)
                if path is not None:
                    self._discard(path)
            self._failures = {k: v for k, v in self._failures.items()
                              if k[0] != name or version not in (None, k[1])}
            self._bump()

    def _discard(self, path: Path) -> None:
        if not path.exists():
            return
        trash = path.with_name(f".deleted-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(path, trash)  # gone from the repository at once
        shutil.rmtree(trash, ignore_errors=True)

    # -- several processes ----------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _bump(self) -> None:
        """Record a change so that other server processes pick it up."""
        state = self._read_state()
        self._generation = int(state.get("generation", 0)) + 1
        state = {"generation": self._generation, "unloaded": sorted(self._unloaded)}
        tmp = self.root / f".{STATE_FILE}.{os.getpid()}"
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.root / STATE_FILE)
        except OSError as err:
            log.warning("cannot record the repository state in %s: %s", self.root, err)

    def sync(self) -> bool:
        """Reload when another process changed the repository; True if it did."""
        state = self._read_state()
        generation = int(state.get("generation", 0))
        if generation == self._generation:
            return False
        with self._lock:
            self._generation = generation
            self._unloaded = set(state.get("unloaded", []))
            on_disk = self.scan()
            for name in list(self._models):
                if name not in on_disk or name in self._unloaded:
                    self._swap(name, {})
            self.load_all()
        return True
