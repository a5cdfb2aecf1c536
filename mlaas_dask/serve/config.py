"""Server settings, shared by the CLI, the app factory and the worker processes.

Every setting is declared once, as a field of :class:`ServeConfig`: its default, what it
is, the values it may take and its ``mlaas serve`` flag (a :class:`Setting`). The
dataclass default, the flag's default and the "(default: ...)" of ``mlaas serve --help``
all come from that declaration (:data:`SETTINGS`).

:class:`ServeConfig` checks itself when it is made, so a notebook building one in Python,
``mlaas serve`` (which builds one from its flags) and the worker processes of
``--workers N`` (which rebuild it from the environment) get the same checks and the same
messages, which name the setting, its flag and what is allowed::

    >>> ServeConfig(models=".", max_batch_size=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlaas_dask.errors.ConfigError: Server setting max_batch_size (--max-batch-size): must...
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas_dask.archive import MAX_MEMBERS, MAX_UNPACKED_BYTES, ArchiveLimits
from mlaas_dask.errors import ConfigError, MlaasError

__all__ = ["CONFIG_ENV", "GROUPS", "GRPC_COMPRESSIONS", "LOG_LEVELS", "REQUIRED",
           "RESERVED_FILES", "SETTINGS", "TOKEN_ENV", "ServeConfig", "Setting"]

#: environment variable holding the bearer token when no token file is given
TOKEN_ENV = "MLAAS_SERVE_TOKEN"
#: environment variable through which ``--workers N`` passes the settings to each process
CONFIG_ENV = "MLAAS_SERVE_CONFIG"
#: the log levels a server may run at
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: open files a server process keeps besides its connections (models, threads, logs)
RESERVED_FILES = 256
#: the ``mlaas serve --help`` sections (after the main one) and what each is about
GROUPS = {
    "server process": "How 'mlaas serve' runs the server (create_app does not use these).",
    "upload limits": "What an uploaded bundle archive may be and hold, checked as it "
                     "streams in (413).",
    "connection limits": "What keeps idle, slow or too many clients from starving the "
                         "server (per process).",
}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a setting that has none
REQUIRED: Any = _Required()

MB = 1024 * 1024
KB = 1024

#: a check: the value (of the setting's type) -> None when allowed, else what is allowed
Check = Callable[[Any], "str | None"]


# ---------------------------------------------------------------- checks


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def at_least(low: int) -> Check:
    """Numbers from ``low`` up."""
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low}, not {_shown(value)}."
    return check


def non_negative(value: Any) -> str | None:
    """Numbers from 0 up."""
    return None if value >= 0 else f"must be 0 or more, not {_shown(value)}."


def above_zero(value: Any) -> str | None:
    """Numbers above 0."""
    return None if value > 0 else f"must be above 0, not {_shown(value)}."


def port_number(value: int) -> str | None:
    """A TCP port, 0 for any free one."""
    if 0 <= value <= 65535:
        return None
    return f"must be from 0 to 65535 (0: any free port), not {value}."


def listen_address(value: str) -> str | None:
    """A host name or IP address, without spaces."""
    if value and not any(c.isspace() for c in value):
        return None
    return (f"must be an address to listen on, such as 127.0.0.1 (this machine only) or "
            f"0.0.0.0 (every interface), not {value!r}.")


def known_log_level(value: str) -> str | None:
    """One of :data:`LOG_LEVELS`."""
    if value in LOG_LEVELS:
        return None
    return f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}."


#: the compressions a gRPC server may apply to its responses (--grpc-compression)
GRPC_COMPRESSIONS = ("none", "gzip", "deflate")


def known_compression(value: str) -> str | None:
    """One of :data:`GRPC_COMPRESSIONS`."""
    if value in GRPC_COMPRESSIONS:
        return None
    return f"must be one of {', '.join(GRPC_COMPRESSIONS)}, not {value!r}."


def is_repository(path: Path) -> str | None:
    """An existing folder, and not a model bundle itself."""
    if path.is_dir() and (path / "metadata.json").is_file():
        return (f"{path} is a model bundle, not a repository of bundles: give the folder "
                f"that holds it (--models {path.parent} serves it as model "
                f"{path.name!r}), or copy it into a repository as <name>/1/.")
    if path.is_dir():
        return None
    what = "it is a file" if path.exists() else "it does not exist"
    return (f"{path} is not a directory: {what}. Create it (mkdir -p {path}) and put "
            f"bundles in <name>/<version>/ folders, e.g. 'mlaas train job.yaml --out "
            f"{path}/mymodel/1', or upload them once the server runs.")


def empty_repository_note(path: Path, token: str | None) -> str | None:
    """What to say at start-up when the repository holds no model folder yet: the server
    runs (uploads may come), but it has nothing to score."""
    if any(child.is_dir() and not child.name.startswith(".") for child in path.iterdir()):
        return None
    how = ("upload one (POST /v2/repository/models/<name>/upload with the token)"
           if token else "put bundles in <name>/<version>/ folders and restart it (no "
           "token is set, so nothing can be uploaded or loaded while it runs)")
    return (f"the repository {path} holds no model: the server starts, but scores "
            f"nothing until you {how}.")


def readable_token(path: Path) -> str | None:
    """A readable file holding a token."""
    from mlaas_dask.serve.auth import read_token  # auth imports this module

    try:
        read_token(path)
    except MlaasError as err:
        return f"{err} Or leave it out and set {TOKEN_ENV}."
    return None


def _hard_file_limit() -> int | None:
    """This process's hard open-file limit ('ulimit -Hn'); None when unlimited."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def open_files(value: int) -> str | None:
    """Connections that fit the hard open-file limit, with :data:`RESERVED_FILES` to spare."""
    hard = _hard_file_limit()
    if value < 1 or hard is None or value <= hard - RESERVED_FILES:
        return at_least(1)(value)
    most = hard - RESERVED_FILES
    return (f"must be from 1 to {most}, not {value}: each connection is an open file, and "
            f"this process may open {hard} ('ulimit -Hn'), {RESERVED_FILES} of them kept "
            "for models, threads and logs. Give fewer, or raise the limit.")


def default_connections(wanted: int = 1000) -> int:
    """``wanted`` connections, or fewer where the open-file limit allows fewer (a notebook
    on a machine with 'ulimit -Hn' 1024 still gets a server that starts)."""
    hard = _hard_file_limit()
    return wanted if hard is None else max(1, min(wanted, hard - RESERVED_FILES))


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Setting:
    """The declaration of one server setting (a field of :class:`ServeConfig`).

    Attributes
    ----------
    doc
        What it is, a phrase: the ``--help`` text and the class documentation.
    flag
        The ``mlaas serve`` flag that sets it.
    check
        The values allowed (beyond its type), or None.
    metavar
        How ``--help`` names the flag's value.
    scale
        The flag's unit in the setting's (``MB`` for a setting in bytes: 1048576).
    note
        What the default means, after it in ``--help`` ("one per core").
    group
        Its ``--help`` section (a key of :data:`GROUPS`), or None for the main one.
    name, default, kind, optional
        The field's name, default (:data:`REQUIRED` when it has none), type (``int``,
        ``float``, ``bool``, ``str`` or ``Path``) and whether it may be None, filled in
        from the dataclass.
    """

    doc: str
    flag: str
    check: Check | None = None
    metavar: str | None = None
    scale: int = 1
    note: str = ""
    group: str | None = None
    name: str = ""
    default: Any = REQUIRED
    kind: type = object
    optional: bool = False

    @property
    def required(self) -> bool:
        """Whether the setting has no default."""
        return self.default is REQUIRED

    @property
    def flag_default(self) -> Any:
        """The default in the flag's unit."""
        if self.scale == 1 or self.default is None:
            return self.default
        return self.default / self.scale

    def from_flag(self, value: Any) -> Any:
        """The setting for a value of its flag (``--max-body-mb 64`` -> 67108864)."""
        if self.scale == 1 or value is None:
            return value
        scaled = value * self.scale
        return round(scaled) if math.isfinite(scaled) else scaled

    def help(self) -> str:
        """The ``--help`` text: the doc and the default."""
        if self.required:
            return self.doc
        value = self.flag_default
        shown = "off" if value is False else "" if value is None else (
            value if isinstance(value, str) else _shown(value))
        default = "default: " + ", ".join(part for part in (shown, self.note) if part)
        if self.doc.endswith(")"):  # "(413 above; default: 64)"
            return f"{self.doc[:-1]}; {default})"
        return f"{self.doc} ({default})"

    def error(self, problem: str) -> ConfigError:
        """A :class:`ConfigError` naming the setting and its flag."""
        return ConfigError(f"Server setting {self.name} ({self.flag}): {problem}",
                           key=self.name)


def _declare(doc: str, flag: str, **options: Any) -> dict[str, Setting]:
    return {"setting": Setting(doc, flag, **options)}


def setting(default: Any, doc: str, flag: str, **options: Any) -> Any:
    """A field of :class:`ServeConfig`: its default and its :class:`Setting`."""
    return dataclasses.field(default=default, metadata=_declare(doc, flag, **options))


# ---------------------------------------------------------------- the settings


@dataclass
class ServeConfig:
    """Settings of one server, checked when made (the parameters below are generated
    from the fields' declarations)."""

    models: Path = dataclasses.field(metadata=_declare(
        "the model repository: DIR/<name>/<version>/ hold bundles", "--models",
        check=is_repository, metavar="DIR"))
    token_file: Path | None = setting(  # noqa: RUF009 - a dataclasses.field, default None
        None, "file holding the bearer token for upload/load/unload/delete", "--token-file",
        check=readable_token, metavar="FILE",
        note=f"the {TOKEN_ENV} variable; without either, those endpoints are disabled "
             "(403), never open")
    protect_reads: bool = setting(
        False, "require the token on inference and metadata endpoints too (health and "
        "metrics stay open)", "--protect-reads")
    max_batch_size: int = setting(
        1024, "rows merged into one prediction by dynamic batching", "--max-batch-size",
        check=at_least(1), metavar="ROWS")
    max_delay_ms: float = setting(
        0.0, "time a batch waits for more requests before predicting", "--max-delay-ms",
        check=non_negative, metavar="MS",
        note="predict once a thread is free, merging what arrives while the threads are "
             "busy")
    max_request_rows: int = setting(
        100_000, "largest number of rows (events) per request (413 above)",
        "--max-request-rows", check=at_least(1), metavar="ROWS")
    max_body_bytes: int = setting(
        64 * MB, "largest request body, uploads excepted (413 above)", "--max-body-mb",
        check=at_least(1), metavar="MB", scale=MB)
    max_upload_bytes: int = setting(
        256 * MB, "largest bundle upload, compressed as sent (413 above)", "--max-upload-mb",
        check=at_least(1), metavar="MB", scale=MB, group="upload limits")
    timeout_s: float = setting(
        30.0, "seconds allowed to receive a body and to compute a prediction", "--timeout",
        check=above_zero, metavar="S")
    threads: int = setting(
        0, "prediction threads per process (XGBoost releases the GIL)", "--threads",
        check=non_negative, metavar="N", note="one per core")
    max_queue_rows: int = setting(
        1_000_000, "rows waiting for a prediction thread above which requests are refused "
        "(503)", "--max-queue-rows", check=at_least(1), metavar="ROWS")
    poll_s: float = setting(
        1.0, "with several server processes, how often each looks for changes made to the "
        "repository through another (0: never)", "--poll", check=non_negative, metavar="S")
    max_upload_members: int = setting(
        MAX_MEMBERS, "most members (files and folders) an uploaded archive may hold",
        "--max-upload-members", check=at_least(1), metavar="N", group="upload limits")
    max_upload_file_bytes: int | None = setting(
        None, "most bytes one file of an uploaded archive may unpack to",
        "--max-upload-file-mb", check=at_least(1), metavar="MB", scale=MB,
        note="the limit on all files together", group="upload limits")
    max_upload_unpacked_bytes: int = setting(
        MAX_UNPACKED_BYTES, "most bytes an uploaded archive may unpack to, all files "
        "together", "--max-unpacked-mb", check=at_least(1), metavar="MB", scale=MB,
        group="upload limits")
    max_connections: int = setting(
        default_connections(), "open connections beyond which requests get 503 at once and "
        "the longest-idle kept-alive connection is closed; each is an open file, so they must "
        "fit the open-file limit ('ulimit -Hn') with room to spare", "--max-connections",
        check=open_files, metavar="N", group="connection limits")
    header_timeout_s: float = setting(
        10.0, "seconds a client has to send its request line and headers, else 408 and the "
        "connection is closed (gRPC: its HTTP/2 preface and settings, else it is closed)",
        "--header-timeout", check=above_zero, metavar="S",
        group="connection limits")
    max_header_bytes: int = setting(
        64 * KB, "largest request head, line and headers (431 above)", "--max-header-kb",
        check=at_least(1), metavar="KB", scale=KB, group="connection limits")
    keep_alive_s: float = setting(
        30.0, "seconds an idle kept-alive connection stays open (gRPC: a connection "
        "without calls in flight; one with calls is pinged that often, and closed when the "
        "client does not answer within --header-timeout)", "--keep-alive",
        check=above_zero, metavar="S", group="connection limits")
    host: str = setting(
        "127.0.0.1", "address to listen on", "--host", check=listen_address,
        metavar="HOST", note="this machine only", group="server process")
    port: int = setting(
        8080, "port to listen on (0: any free port)", "--port", check=port_number,
        metavar="PORT", group="server process")
    grpc_port: int | None = setting(
        None, "port of the gRPC server (KServe v2 / Triton GRPCInferenceService) beside the "
        "HTTP one, on the same host, models, batching, token and metrics (0: any free port)",
        "--grpc-port", check=port_number, metavar="PORT", note="no gRPC server",
        group="server process")
    grpc_compression: str = setting(
        "none", "compression of gRPC responses for the clients that accept it (every gRPC "
        "client says which algorithms it does; one accepting only the other gets that one, "
        "one accepting neither none); compressed requests are always read: "
        f"{', '.join(GRPC_COMPRESSIONS)}", "--grpc-compression", check=known_compression,
        metavar="ALGORITHM", group="server process")
    workers: int = setting(
        1, "server processes; they share the repository", "--workers", check=at_least(1),
        metavar="N", group="server process")
    log_level: str = setting(
        "info", f"log level: {', '.join(LOG_LEVELS)} (debug also logs every request)",
        "--log-level", check=known_log_level, metavar="LEVEL", group="server process")

    def __post_init__(self) -> None:
        for name, spec in SETTINGS.items():
            value = _typed(spec, getattr(self, name))
            setattr(self, name, value)
            problem = spec.check(value) if spec.check and value is not None else None
            if problem:
                raise spec.error(problem)
        self._check_order()

    def _check_order(self) -> None:
        file_bytes, total = self.max_upload_file_bytes, self.max_upload_unpacked_bytes
        if file_bytes is not None and file_bytes > total:
            flag = SETTINGS["max_upload_unpacked_bytes"].flag
            raise SETTINGS["max_upload_file_bytes"].error(
                f"must be at most max_upload_unpacked_bytes ({flag}, {total}), not "
                f"{file_bytes}: one file cannot unpack to more than all files together.")

    def check_start(self, token: str | None) -> None:
        """Refuse to start a server that cannot work as configured: the repository must
        (still) be a folder, and ``protect_reads`` needs a token.

        Parameters
        ----------
        token
            The token the server will use (None: write endpoints disabled).

        Raises
        ------
        ConfigError
            Naming the setting and what to do.
        """
        problem = is_repository(self.models)
        if problem:
            raise SETTINGS["models"].error(problem)
        if self.protect_reads and token is None:
            raise SETTINGS["protect_reads"].error(
                f"needs a token: give token_file ({SETTINGS['token_file'].flag}) or set "
                f"{TOKEN_ENV}.")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default (:data:`REQUIRED` for ``models``)."""
        return {name: spec.default for name, spec in SETTINGS.items()}

    @property
    def upload_limits(self) -> ArchiveLimits:
        """What an uploaded archive may hold."""
        file_bytes = self.max_upload_file_bytes
        return ArchiveLimits(self.max_upload_members,
                             self.max_upload_unpacked_bytes if file_bytes is None
                             else file_bytes, self.max_upload_unpacked_bytes)

    @property
    def n_threads(self) -> int:
        """Prediction threads: ``threads``, or one per core."""
        return self.threads or max(1, len(os.sched_getaffinity(0)))

    def to_json(self) -> str:
        """JSON form, for passing the settings to worker processes."""
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The settings :meth:`to_json` wrote, checked again."""
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


#: the types a setting may have, by the name its annotation gives
_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str, "Path": Path}


def _declared(spec: dataclasses.Field[Any]) -> Setting:
    # the annotations are strings ("int", "Path | None": ``from __future__ import
    # annotations``), read here: typing.get_type_hints would add 7 ms to 'mlaas --help'
    names = [name.strip() for name in str(spec.type).split("|")]
    return dataclasses.replace(
        spec.metadata["setting"], name=spec.name,
        default=REQUIRED if spec.default is dataclasses.MISSING else spec.default,
        kind=next(_TYPES[name] for name in names if name != "None"),
        optional="None" in names)


#: every setting by name, in the order of :class:`ServeConfig`'s fields
SETTINGS: Mapping[str, Setting] = {spec.name: _declared(spec)
                                   for spec in dataclasses.fields(ServeConfig)}


# ---------------------------------------------------------------- types


_KINDS = {int: "a whole number", float: "a finite number", bool: "True or False",
          str: "a string", Path: "a path"}


def _typed(spec: Setting, value: Any) -> Any:
    """``value`` as the setting's type (a str as a Path, an int as a float)."""
    kind, optional = spec.kind, spec.optional
    if value is None and optional:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is Path and isinstance(value, str | os.PathLike) and os.fspath(value):
        return Path(value)
    if kind is float and number and math.isfinite(value):
        return float(value)
    if kind is int and number and isinstance(value, numbers.Integral):
        return int(value)
    if kind in (bool, str) and isinstance(value, kind):
        return value
    allowed = _KINDS[kind] + (" or None" if optional else "")
    raise spec.error(f"must be {allowed}, not {value!r} ({type(value).__name__}).")


def _parameters_doc() -> str:
    lines = ["", "", "    Parameters", "    ----------"]
    for name, spec in SETTINGS.items():
        default = "" if spec.required else f" Default: {spec.default!r}."
        flag = spec.flag + (f" {spec.metavar}" if spec.metavar else "")
        text = f"{spec.doc[0].upper()}{spec.doc[1:]}.{default} Flag: ``{flag}``."
        lines.append(f"    {name}")
        lines += textwrap.wrap(text, 84, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines)


_RAISES_DOC = """

    Raises
    ------
    ConfigError
        A value of the wrong type or out of range, a repository that is not a folder, an
        unreadable or empty token file, more connections than the open-file limit allows,
        or limits out of order; the message names the setting, its flag and what is
        allowed.
"""

ServeConfig.__doc__ = (ServeConfig.__doc__ or "").rstrip() + _parameters_doc() + _RAISES_DOC
