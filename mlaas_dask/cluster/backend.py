"""The cluster-backend protocol, the validated cluster description, and the registry.

A backend is one kind of cluster (``type:`` in a cluster file): local worker processes,
an existing scheduler, SLURM, HTCondor, PBS... It declares everything mlaas needs to know
about that kind (:class:`ClusterBackend`): its schema (keys, types, defaults, docs), an
example file, the batch system's status command, the checks beyond the schema, what
``NAME:N`` means, and how to start it. Nothing outside the backends asks which type a
cluster is: it asks the cluster's backend.

Backends are found by name in one registry (:func:`register_backend`, :func:`backends`);
the built-in ones are registered by :mod:`mlaas_dask.cluster`. A new kind of cluster is a
subclass registered there (or by the code that uses it), after which its cluster files are
found, validated, started and listed by ``mlaas cluster`` like the built-in ones.

:class:`ClusterConfig` validates itself against its backend's schema when it is made, so a
notebook building one in Python gets the checks and defaults a cluster file gets::

    ClusterConfig("slurm", options={"cores": 4, "memory": "16GB", "jobs": 2})
"""

from __future__ import annotations

import copy
import re
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from mlaas_dask.cluster.fields import Field, Validator, schema_defaults, wait_field
from mlaas_dask.cluster.placement import KEYWORDS, Placement
from mlaas_dask.config import parse_yaml
from mlaas_dask.errors import ConfigError, did_you_mean

__all__ = [
    "COMMON_KEYS", "DEFAULT_TYPE", "ClusterBackend", "ClusterConfig", "backend_names",
    "backends", "common_schema", "get_backend", "register_backend", "unregister_backend",
    "with_example",
]

#: the backend whose example is shown when a file names no (known) type
DEFAULT_TYPE = "local"


def placement_rule(value: str) -> str | None:
    """``auto``, ``any``, ``cpu``, ``gpu`` or a resource tag name."""
    if value in KEYWORDS or re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return None
    return f"must be one of {', '.join(KEYWORDS)} or a resource tag name, got {value!r}."


PLACEMENT_SCHEMA = {
    "read": Field((str,), "workers for reading + features: auto, any, cpu, gpu or a tag",
                  default="auto", check=placement_rule),
    "train": Field((str,), "workers for training: auto, any, cpu, gpu or a tag",
                   default="auto", check=placement_rule),
}


def common_schema(wait_timeout: float) -> dict[str, Field]:
    """The keys every cluster file has (``type``, ``description``, ``placement``,
    ``wait``), for the start of a backend's schema.

    Parameters
    ----------
    wait_timeout
        The default of ``wait.timeout``: seconds for the workers to join.

    Returns
    -------
    dict
        Key -> :class:`~mlaas_dask.config.Field`.
    """
    return {
        "type": Field((str,), "the kind of cluster", required=True),
        "description": Field((str,), "a line saying what this cluster is for"),
        "placement": Field((dict,), "which workers run each stage", default=None,
                           schema=PLACEMENT_SCHEMA),
        "wait": wait_field(wait_timeout),
    }


COMMON_KEYS = tuple(common_schema(60))


# ---------------------------------------------------------------- the protocol


class ClusterBackend(ABC):
    """One kind of cluster: how its files look, are checked, sized and started.

    Subclasses set the class attributes and implement :meth:`check`, :meth:`size` and
    :meth:`start`; the other methods have defaults. Instances hold no state.

    Attributes
    ----------
    name
        The ``type:`` of its cluster files, e.g. ``"slurm"``.
    schema
        Key -> :class:`~mlaas_dask.config.Field` (types, default, doc, check): every key
        its files may have, starting with :func:`common_schema`. The one source of the
        defaults.
    example
        A valid cluster file of this type (YAML), shown after every validation error and
        by ``mlaas cluster --example NAME``.
    status_command
        The shell command that shows the jobs of this batch system (``squeue --me``), or
        None when there are no batch jobs (local processes, an existing scheduler).
    takes_options
        Whether :meth:`start` takes extra keyword arguments (LocalCluster's).
    """

    name: ClassVar[str]
    schema: ClassVar[Mapping[str, Field]]
    example: ClassVar[str]
    status_command: ClassVar[str | None]
    takes_options: ClassVar[bool] = False

    @abstractmethod
    def check(self, config: ClusterConfig, validator: Validator) -> None:
        """Refuse impossible combinations that the schema cannot express.

        Parameters
        ----------
        config
            The cluster, its options validated against :attr:`schema` (defaults filled).
        validator
            For errors naming the file and line: ``raise validator.error(path, message)``.

        Raises
        ------
        ConfigError
            What is impossible, and what to change.
        """

    @abstractmethod
    def size(self, config: ClusterConfig, count: int) -> ClusterConfig:
        """``NAME:N``: this cluster with a fixed size -- N workers, or N batch jobs.

        Parameters
        ----------
        config
            The cluster as its file describes it.
        count
            N, at least 1.

        Returns
        -------
        ClusterConfig
            A copy named ``NAME:N``, without adaptive scaling.

        Raises
        ------
        ConfigError
            When this kind of cluster cannot be sized from here.
        """

    @abstractmethod
    def start(self, config: ClusterConfig, **options: Any) -> Any:
        """Start the cluster (or join it).

        Parameters
        ----------
        config
            The validated cluster.
        options
            Extra keyword arguments of the Dask cluster class (only when
            :attr:`takes_options`).

        Returns
        -------
        Any
            The Dask cluster object mlaas now owns (a LocalCluster, a SLURMCluster...,
            closed with the client), or a connected :class:`distributed.Client` of a
            cluster that someone else runs (left running).
        """

    def wanted_workers(self, config: ClusterConfig) -> int:
        """How many workers to wait for when ``wait.workers`` is not given (0: none)."""
        return 0

    def hint(self, config: ClusterConfig, cluster: Any) -> str:
        """What to look at when the workers did not join in time.

        Parameters
        ----------
        config
            The cluster.
        cluster
            What :meth:`start` returned when it was a cluster object, else None.
        """
        return "Check that its workers can start and reach the scheduler."

    def job_script(self, config: ClusterConfig) -> str | None:
        """The batch job script that starting would submit, or None (no batch jobs)."""
        return None

    def defaults(self) -> dict[str, Any]:
        """Every key's default, from :attr:`schema` (blocks expanded to their keys)."""
        return schema_defaults(self.schema)

    def validate(self, options: Mapping[str, Any], validator: Validator) -> dict[str, Any]:
        """``options`` checked against :attr:`schema`, every key present (defaults filled).

        Raises
        ------
        ConfigError
            For an unknown key (naming the backends that do have it), a missing required
            one, or a value of the wrong type or range.
        """
        for key in options:
            owners = [name for name, other in _BACKENDS.items() if key in other.schema]
            if key not in self.schema and owners:
                raise validator.error(
                    (key,), f"{key!r} is a key of {' and '.join(owners)} clusters, not of "
                            f"{self.name} ones." + did_you_mean(key, self.schema, "keys"))
        # a copy: the defaults ({}, []) are the schema's own objects
        return copy.deepcopy(validator.mapping(options, self.schema))


# ---------------------------------------------------------------- the registry

_BACKENDS: dict[str, ClusterBackend] = {}
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def register_backend(backend: ClusterBackend, *, replace: bool = False) -> ClusterBackend:
    """Make a kind of cluster known by its name: files with ``type: NAME`` use it.

    Parameters
    ----------
    backend
        An instance of a :class:`ClusterBackend` subclass.
    replace
        Replace a backend registered under the same name (else that is an error).

    Returns
    -------
    ClusterBackend
        ``backend``.

    Raises
    ------
    TypeError
        ``backend`` is not a ClusterBackend.
    ValueError
        Its name is taken or malformed, its schema lacks the common keys or a doc, its
        status command is not a string or None, or its example is not a valid file.
    """
    if not isinstance(backend, ClusterBackend):
        raise TypeError(f"{backend!r} is not a ClusterBackend: subclass "
                        "mlaas_dask.cluster.ClusterBackend.")
    what = f"Cluster backend {type(backend).__name__}"
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what}: name must be lower-case letters, digits, '-' or '_', "
                         f"got {name!r}.")
    if name in _BACKENDS and not replace:
        raise ValueError(f"{what}: a backend named {name!r} is already registered "
                         f"({type(_BACKENDS[name]).__name__}); pass replace=True.")
    _check_declarations(backend, what)
    previous = _BACKENDS.get(name)
    _BACKENDS[name] = backend
    try:
        data, lines = parse_yaml(backend.example, f"the {name} example")
        ClusterConfig(name, name, data, validator=Validator(f"the {name} example", lines))
    except ConfigError as err:
        _restore(name, previous)
        raise ValueError(f"{what}: its example is not a valid {name} cluster file: "
                         f"{str(err).splitlines()[0]}") from None
    return backend


def _check_declarations(backend: ClusterBackend, what: str) -> None:
    schema = getattr(backend, "schema", None)
    if not isinstance(schema, Mapping):
        raise ValueError(f"{what}: schema must be a mapping of keys to Fields.")
    missing = [key for key in COMMON_KEYS if key not in schema]
    if missing:
        raise ValueError(f"{what}: schema lacks the common keys {missing}: start it with "
                         "common_schema(...).")
    undocumented = _undocumented(schema)
    if undocumented:
        raise ValueError(f"{what}: every key needs a Field with a doc; not {undocumented}.")
    if not isinstance(getattr(backend, "example", None), str):
        raise ValueError(f"{what}: example must be a cluster file (a YAML string).")
    status = getattr(backend, "status_command", ...)
    if status is not None and not isinstance(status, str):
        raise ValueError(f"{what}: status_command must be a shell command or None, got "
                         f"{status!r}.")


def _undocumented(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, spec in schema.items():
        if not isinstance(spec, Field) or not spec.doc:
            found.append(prefix + key)
        elif spec.schema is not None:
            found += _undocumented(spec.schema, f"{prefix}{key}.")
    return found


def _restore(name: str, previous: ClusterBackend | None) -> None:
    if previous is None:
        _BACKENDS.pop(name, None)
    else:
        _BACKENDS[name] = previous


def unregister_backend(name: str) -> ClusterBackend:
    """Forget a backend (returns it); cluster files of its type are then unknown."""
    try:
        return _BACKENDS.pop(name)
    except KeyError:
        raise ValueError(f"No cluster backend named {name!r} is registered.") from None


def backends() -> dict[str, ClusterBackend]:
    """The registered backends by name, in the order they were registered."""
    return dict(_BACKENDS)


def backend_names() -> tuple[str, ...]:
    """The cluster types known now, in the order they were registered."""
    return tuple(_BACKENDS)


def _unknown_type(name: Any) -> str:
    return f"unknown cluster type {name!r}." + did_you_mean(str(name), _BACKENDS, "types")


def get_backend(name: str) -> ClusterBackend:
    """The backend of a cluster type.

    Raises
    ------
    ConfigError
        No backend has that name (with the closest names).
    """
    if not isinstance(name, str) or name not in _BACKENDS:
        message = _unknown_type(name)
        raise ConfigError(message[0].upper() + message[1:])
    return _BACKENDS[name]


def with_example(err: ConfigError, type_name: str) -> ConfigError:
    """``err`` followed by a valid cluster file of ``type_name`` (same file, key, line)."""
    text = textwrap.indent(_BACKENDS[type_name].example.strip(), "    ")
    return ConfigError(f"{err}\nA valid {type_name} cluster file looks like this:\n{text}",
                       **err.details())


# ---------------------------------------------------------------- the validated config


@dataclass
class ClusterConfig:
    """A validated cluster description: its type, every key with defaults filled in, and
    where it came from.

    Made from a cluster file (:func:`~mlaas_dask.cluster.load_cluster`) or directly: the
    options are checked against the type's schema either way, and every key the options
    leave out gets the schema's default.

    Parameters
    ----------
    type
        The cluster type: a registered backend's name (``local``, ``address``, ``slurm``,
        ``htcondor``, ``pbs``...).
    name
        How it is called in messages and metadata (default: the type).
    options
        The keys of a cluster file of that type (``type`` may be left out).
    source
        The file it came from, if any.
    validator
        Names the file and lines in errors (default: the cluster's name).

    Raises
    ------
    ConfigError
        An unknown type, key or value, or an impossible combination; the message ends
        with a valid example of the type.

    Examples
    --------
    >>> config = ClusterConfig("slurm", options={"cores": 4, "memory": "16GB", "jobs": 2})
    >>> config.options["walltime"], config.options["processes"]
    ('01:00:00', 1)
    """

    type: str
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    validator: InitVar[Validator | None] = None

    def __post_init__(self, validator: Validator | None) -> None:
        self.name = self.name or str(self.type)
        validator = validator or Validator(f"Cluster {self.name!r}")
        if not isinstance(self.type, str) or self.type not in _BACKENDS:
            raise with_example(validator.error(("type",), _unknown_type(self.type)),
                               DEFAULT_TYPE)
        backend = _BACKENDS[self.type]
        data = {"type": self.type, **self.options}
        try:
            if data["type"] != self.type:
                raise validator.error(("type",), f"the options say type {data['type']!r}, "
                                      f"the cluster is of type {self.type!r}.")
            self.options = backend.validate(data, validator)
            backend.check(self, validator)
        except ConfigError as err:
            raise with_example(err, self.type) from None

    @property
    def backend(self) -> ClusterBackend:
        """The backend of this cluster's type."""
        return get_backend(self.type)

    @property
    def placement(self) -> Placement:
        """Which workers read and which train."""
        return Placement.from_value(self.options.get("placement"))

    def block(self, key: str) -> dict[str, Any]:
        """A block of keys (``wait``, ``scheduler``, ``placement``) as given, or its keys'
        defaults when the cluster leaves it out."""
        given = self.options.get(key)
        if given is not None:
            return dict(given)
        return schema_defaults(self.backend.schema[key].schema or {})

    def with_size(self, count: int) -> ClusterConfig:
        """``NAME:N``: this cluster with a fixed number of workers (local) or jobs (batch
        systems); see :meth:`ClusterBackend.size`."""
        return self.backend.size(self, count)

    def summary(self) -> dict[str, Any]:
        """For metadata: name, type, file, and the keys as given or defaulted."""
        return {"name": self.name, "type": self.type, "source": self.source,
                "options": {k: v for k, v in self.options.items() if v not in (None, {}, [])}}
