"""Cluster files (``clusters/*.yaml``): find them by name, validate them, show examples.

A cluster is named on the command line as ``--cluster NAME|PATH|tcp://host:port``:

- ``tcp://host:port`` (or ``tls://``): an existing Dask scheduler;
- a path to a YAML file;
- a NAME, looked up as ``NAME.yaml`` in ``$MLAAS_CLUSTERS`` (folders separated by
  ``os.pathsep``), then ``./clusters/``, then the cluster files installed with the package
  (``clusters/`` of the source tree);
  ``local`` works without any file (one worker process per core);
- ``NAME:N``: that cluster with N workers (local) or N batch jobs (SLURM, HTCondor, PBS),
  e.g. ``local:2`` or ``slurm:8``.

Every file has a ``type`` (a registered backend: local, address, slurm, htcondor, pbs; see
:mod:`mlaas_dask.cluster.backend`) and the keys of that type; unknown keys and impossible
combinations are errors naming the line, followed by a valid example of the same type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlaas_dask.cluster.backend import (
    DEFAULT_TYPE,
    ClusterConfig,
    backend_names,
    get_backend,
    with_example,
)
from mlaas_dask.cluster.fields import SCHEMES, Validator, address_value
from mlaas_dask.config import load_yaml, parse_yaml
from mlaas_dask.errors import ConfigError, did_you_mean

__all__ = [
    "ClusterConfig", "available_clusters", "builtin_local", "cluster_from_dict",
    "cluster_from_text", "example", "find_cluster_file", "load_cluster",
    "load_cluster_file", "packaged_clusters", "search_path",
]


def example(type_name: str) -> str:
    """A valid cluster file of this type (shown after every validation error).

    Raises
    ------
    ConfigError
        No backend has that name.
    """
    return get_backend(type_name).example.strip()


def cluster_from_dict(data: Any, validator: Validator, name: str,
                      source: str | None = None) -> ClusterConfig:
    """Validate a parsed cluster mapping.

    Parameters
    ----------
    data
        The parsed file: a mapping with ``type`` and that type's keys.
    validator
        Names the file and its lines in errors.
    name
        The cluster's name (the file's stem).
    source
        The file, if any.

    Raises
    ------
    ConfigError
        Naming the line, followed by a valid example of the type.
    """
    if data is None or not isinstance(data, dict) or "type" not in data:
        what = ("is empty" if data is None else
                "must be a mapping of keys to values" if not isinstance(data, dict) else
                "has no 'type'")
        raise with_example(validator.error(
            (), f"the cluster file {what}; it needs 'type: "
                f"{'|'.join(backend_names())}' and that type's keys."), DEFAULT_TYPE)
    return ClusterConfig(data["type"], name, data, source, validator=validator)


def load_cluster_file(path: str | os.PathLike[str]) -> ClusterConfig:
    """Load and validate one cluster file.

    Parameters
    ----------
    path
        A YAML cluster file; the cluster is named after its stem.

    Raises
    ------
    ConfigError
        The file is missing, is not YAML, or is not a valid cluster file (naming the line,
        with a valid example of its type).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Cluster file {path} does not exist. Known clusters: "
                          f"{', '.join(available_clusters()) or 'local'}.")
    data, lines = load_yaml(path)
    validator = Validator(str(path), lines, file=str(path))
    return cluster_from_dict(data, validator, path.stem, str(path))


def cluster_from_text(text: str, name: str = "<cluster>") -> ClusterConfig:
    """:func:`load_cluster_file` for YAML text (notebooks, tests).

    Parameters
    ----------
    text
        The YAML of a cluster file.
    name
        The cluster's name, also used for the text in error messages.
    """
    data, lines = parse_yaml(text, name)
    return cluster_from_dict(data, Validator(name, lines), name)


def search_path() -> list[Path]:
    """Folders searched for ``NAME.yaml``, in order."""
    dirs = [Path(p) for p in os.environ.get("MLAAS_CLUSTERS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "clusters", packaged_clusters()]
    unique: list[Path] = []
    for folder in dirs:
        if folder.resolve() not in [u.resolve() for u in unique]:
            unique.append(folder)
    return unique


def packaged_clusters() -> Path:
    """The cluster files installed with the package (``clusters/`` of the source tree,
    shipped as ``mlaas_dask.clusters``)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "clusters"
    return installed if installed.is_dir() else package.parent / "clusters"


def find_cluster_file(name: str) -> Path | None:
    """The first ``NAME.yaml`` (or ``.yml``) on the search path, or None."""
    for folder in search_path():
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def available_clusters() -> dict[str, Path | None]:
    """Cluster names found on the search path (first one wins), plus the built-in local."""
    found: dict[str, Path | None] = {}
    for folder in search_path():
        if folder.is_dir():
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                found.setdefault(path.stem, path)
    found.setdefault("local", None)
    return dict(sorted(found.items()))


def builtin_local() -> ClusterConfig:
    """The embedded default: one single-threaded worker process per core on 127.0.0.1."""
    return cluster_from_dict({"type": DEFAULT_TYPE}, Validator("<built-in local>"),
                             DEFAULT_TYPE)


def load_cluster(spec: Any) -> ClusterConfig:
    """A :class:`ClusterConfig` from a name, ``NAME:N``, a path, an address, a mapping or a
    ClusterConfig.

    Parameters
    ----------
    spec
        ``NAME`` (a cluster file on :func:`search_path`, or the built-in ``local``),
        ``NAME:N`` (sized by its backend: N workers or N jobs), a path to a YAML file, a
        scheduler address ``tcp://host:port``, a mapping with a cluster file's keys, or a
        ClusterConfig (returned as it is).

    Raises
    ------
    ConfigError
        An unknown name (with the closest known ones), a bad ``:N`` or address, or an
        invalid cluster file.
    """
    if isinstance(spec, ClusterConfig):
        return spec
    if isinstance(spec, dict):
        return cluster_from_dict(spec, Validator("<cluster mapping>"),
                                 str(spec.get("type", "cluster")))
    if isinstance(spec, os.PathLike):
        return load_cluster_file(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"Unknown cluster {spec!r}. {_how_to_name()}")
    spec = spec.strip()
    if spec.startswith(SCHEMES):
        problem = address_value(spec)
        if problem:
            raise ConfigError(f"Cluster address {problem[0].lower()}{problem[1:]}")
        return cluster_from_dict({"type": "address", "address": spec},
                                 Validator("--cluster"), spec)
    path = Path(spec).expanduser()
    if spec.endswith((".yaml", ".yml")) or os.sep in spec or path.is_file():
        return load_cluster_file(path)
    name, _, count = spec.partition(":")
    if (count and not count.isdigit()) or count == "0":
        raise ConfigError(f"Unknown cluster {spec!r}: after ':' comes a positive number of "
                          f"workers or jobs, e.g. {name}:2. {_how_to_name()}")
    found = find_cluster_file(name)
    if found is not None:
        config = load_cluster_file(found)
    elif name == "local":
        config = builtin_local()
    else:
        raise ConfigError(f"Unknown cluster {name!r}." + did_you_mean(
            name, available_clusters(), "clusters") + f" {_how_to_name()}")
    return config.with_size(int(count)) if count else config


def _how_to_name() -> str:
    return ("Name a cluster file (clusters/NAME.yaml, e.g. local, local-gpu, slurm), give a "
            "path to one, 'local:N' for N local workers, or a scheduler address such as "
            "tcp://127.0.0.1:8786.")
