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

Every file has a ``type`` (local, address, slurm, htcondor, pbs) and the keys of that type;
unknown keys and impossible combinations are errors naming the line, followed by a valid
example of the same type.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from mlaas_dask.cluster.placement import KEYWORDS, Placement
from mlaas_dask.config import Field, Validator, load_yaml, parse_yaml
from mlaas_dask.errors import ConfigError, did_you_mean

TYPE_NAMES = ("local", "address", "slurm", "htcondor", "pbs")
SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")
_NUMBER = (int, float)


def _types() -> dict[str, ModuleType]:
    from mlaas_dask.cluster import address, htcondor, local, pbs, slurm

    return {"local": local, "address": address, "slurm": slurm, "htcondor": htcondor,
            "pbs": pbs}


# ---------------------------------------------------------------- shared field checks


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive, got {value}."


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}."


def positive_or_auto(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return None
    return f"must be a positive number or 'auto', got {value!r}."


def non_negative_or_auto(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return None
    return f"must be 0 or more, or 'auto', got {value!r}."


def byte_size(value: Any) -> str | None:
    from dask.utils import parse_bytes

    if value == "auto":
        return None
    try:
        size = parse_bytes(value)
    except (ValueError, TypeError):
        return f"must be a size such as '4GiB' or '16GB', got {value!r}."
    return None if size > 0 else f"must be positive, got {value!r}."


def walltime(value: Any) -> str | None:
    if isinstance(value, int):  # YAML reads an unquoted 01:00:00 as 3600 (base 60)
        return None if value > 0 else f"must be positive, got {value}."
    if re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", value):
        return None
    return f"must look like '01:30:00' (hours:minutes:seconds), got {value!r}."


def as_walltime(value: str | int) -> str:
    """``01:00:00`` as written, or the seconds YAML made of an unquoted one, as H:MM:SS."""
    if isinstance(value, int):
        return f"{value // 3600:02d}:{value // 60 % 60:02d}:{value % 60:02d}"
    return value


def placement_rule(value: str) -> str | None:
    if value in KEYWORDS or re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return None
    return f"must be one of {', '.join(KEYWORDS)} or a resource tag name, got {value!r}."


def address_value(value: str) -> str | None:
    if value.startswith(SCHEMES) and ":" in value.split("://", 1)[1]:
        return None
    return f"must be a scheduler address such as tcp://10.0.0.5:8786, got {value!r}."


def tags(doc: str) -> Field:
    return Field((dict,), doc, default={},
                 values=Field(_NUMBER, "how many of this resource a worker has",
                              check=positive))


ADAPT_SCHEMA = {
    "minimum": Field((int,), "fewest workers (local) or jobs (batch) to keep", default=0,
                     check=non_negative),
    "maximum": Field((int,), "most workers (local) or jobs (batch) to start", required=True,
                     check=positive),
}

WAIT_SCHEMA = {
    "workers": Field((int,), "workers to wait for before computing (default: the number "
                     "asked for, or adapt.minimum)", check=non_negative),
    "timeout": Field(_NUMBER, "seconds to wait for them", check=positive),
}

SCHEDULER_SCHEMA = {
    "host": Field((str,), "address the scheduler listens on (127.0.0.1: this machine only)"),
    "port": Field((int,), "scheduler port; 0 picks a free one", default=0,
                  check=non_negative),
    "dashboard_address": Field((str,), "dashboard address, e.g. ':8787' or "
                               "'127.0.0.1:0'"),
}

PLACEMENT_SCHEMA = {
    "read": Field((str,), "workers for reading + features: auto, any, cpu, gpu or a tag",
                  default="auto", check=placement_rule),
    "train": Field((str,), "workers for training: auto, any, cpu, gpu or a tag",
                   default="auto", check=placement_rule),
}

COMMON_SCHEMA = {
    "type": Field((str,), "the kind of cluster", required=True, choices=TYPE_NAMES),
    "description": Field((str,), "a line saying what this cluster is for"),
    "placement": Field((dict,), "which workers run each stage", default=None,
                       schema=PLACEMENT_SCHEMA),
    "wait": Field((dict,), "workers to wait for before computing", default=None,
                  schema=WAIT_SCHEMA),
}

ADAPT_FIELD = Field((dict,), "adaptive scaling between minimum and maximum", default=None,
                    schema=ADAPT_SCHEMA)
SCHEDULER_FIELD = Field((dict,), "where the Dask scheduler listens", default=None,
                        schema=SCHEDULER_SCHEMA)


# ---------------------------------------------------------------- the validated config


@dataclass
class ClusterConfig:
    """A validated cluster description: its type, every key with defaults filled in, and
    where it came from."""

    type: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def placement(self) -> Placement:
        return Placement.from_value(self.options.get("placement"))

    @property
    def module(self) -> ModuleType:
        return _types()[self.type]

    def with_size(self, count: int) -> ClusterConfig:
        """This cluster with a fixed number of workers (local) or jobs (batch systems)."""
        return self.module.with_size(self, count)

    def summary(self) -> dict[str, Any]:
        """For metadata: name, type, file, and the keys as given or defaulted."""
        return {"name": self.name, "type": self.type, "source": self.source,
                "options": {k: v for k, v in self.options.items() if v not in (None, {}, [])}}


def example(type_name: str) -> str:
    """A valid cluster file of this type (shown after every validation error)."""
    return _types()[type_name].EXAMPLE.strip()


def _with_example(err: ConfigError, type_name: str) -> ConfigError:
    text = textwrap.indent(example(type_name), "    ")
    return ConfigError(f"{err}\nA valid {type_name} cluster file looks like this:\n{text}")


def cluster_from_dict(data: Any, validator: Validator, name: str,
                      source: str | None = None) -> ClusterConfig:
    """Validate a parsed cluster mapping."""
    types = _types()
    if data is None or not isinstance(data, dict) or "type" not in data:
        what = ("is empty" if data is None else
                "must be a mapping of keys to values" if not isinstance(data, dict) else
                "has no 'type'")
        raise _with_example(validator.error(
            (), f"the cluster file {what}; it needs 'type: "
                f"{'|'.join(TYPE_NAMES)}' and that type's keys."), "local")
    type_name = data["type"]
    if type_name not in types:
        raise _with_example(validator.error(
            ("type",), f"unknown cluster type {type_name!r}."
            + did_you_mean(str(type_name), TYPE_NAMES, "types")), "local")
    module = types[type_name]
    schema = {**COMMON_SCHEMA, **module.SCHEMA}
    try:
        for key in data:
            owners = [t for t, m in types.items() if key in m.SCHEMA]
            if key not in schema and owners:
                raise validator.error(
                    (key,), f"{key!r} is a key of {' and '.join(owners)} clusters, not of "
                            f"{type_name} ones." + did_you_mean(key, schema, "keys"))
        options = validator.mapping(data, schema)
        config = ClusterConfig(type_name, name, options, source)
        module.check(config, validator)
    except ConfigError as err:
        raise _with_example(err, type_name) from None
    return config


def load_cluster_file(path: str | Path) -> ClusterConfig:
    """Load and validate one cluster file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Cluster file {path} does not exist. Known clusters: "
                          f"{', '.join(available_clusters()) or 'local'}.")
    data, lines = load_yaml(path)
    return cluster_from_dict(data, Validator(str(path), lines), path.stem, str(path))


def cluster_from_text(text: str, name: str = "<cluster>") -> ClusterConfig:
    """:func:`load_cluster_file` for YAML text (notebooks, tests)."""
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
    return cluster_from_dict({"type": "local"}, Validator("<built-in local>"), "local")


def load_cluster(spec: Any) -> ClusterConfig:
    """A :class:`ClusterConfig` from a name, ``NAME:N``, a path, an address, a mapping or a
    ClusterConfig."""
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
    if count and not count.isdigit() or count == "0":
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
