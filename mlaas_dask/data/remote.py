"""Dependable reading of local and remote ROOT files.

- **Locations.** A local path, a ``root://`` URL (XRootD through ``fsspec-xrootd``), an
  ``https://`` / ``davs://`` URL (HTTP range requests), or a CMS logical file name
  (``/store/...``) resolved against an ordered list of redirectors (regional first, then
  global): every file has an ordered list of places to read it from.
- **Retries.** Transient errors (connection refused or reset, timeouts, server busy) are
  retried at the same place with exponential backoff and jitter, up to ``retries`` times;
  permanent ones (no such file, permission denied, not a ROOT file) are not. Then the next
  place is tried (per file, per partition). Every request has a timeout, so nothing waits
  forever.
- Errors name the file, every place tried and the cause -- never a credential
  (:func:`mlaas_dask.data.credentials.scrub`).
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlaas_dask.data.credentials import bearer_token, scrub, ssl_context
from mlaas_dask.data.rootio import read_entries
from mlaas_dask.errors import DataError, first_line

T = TypeVar("T")

ON_ERROR = ("fail", "skip")
LFN_PREFIX = "/store/"
_REMOTE = ("root://", "xroot://", "roots://", "https://", "http://", "davs://", "dav://")


@dataclass(frozen=True)
class ReadPolicy:
    """How files are found and read, and what happens when they cannot be.

    Parameters
    ----------
    redirectors
        XRootD (or HTTPS) redirectors for CMS logical file names (``/store/...``), in the
        order they are tried, e.g. ``["root://xrootd-cms.infn.it/",
        "root://cms-xrd-global.cern.ch/"]``.
    timeout
        Seconds one request (open, read) may take before it counts as failed.
    retries
        Retries of a transient error at one place before the next place is tried.
    backoff
        First retry delay in seconds; doubled each retry (with jitter), up to
        ``max_backoff``.
    on_error
        ``fail``: stop at the first file or partition that cannot be read. ``skip``: go on
        without it and report it.
    min_fraction
        With ``skip``: the least fraction of the events *in the files that opened* that
        must be read. A file that cannot be opened has an unknown number of events, so it
        is counted apart, by files: at most ``(1 - min_fraction)`` of the files listed
        may fail to open, and always one (none when ``min_fraction`` is 1); see
        :func:`max_files_unopened`.
    """

    redirectors: tuple[str, ...] = ()
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    on_error: str = "fail"
    min_fraction: float = 0.9

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {self.on_error!r}")
        object.__setattr__(self, "redirectors", tuple(self.redirectors))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Backoff before retry number ``attempt`` (1-based): exponential, with jitter
        between half and all of it."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def describe(self) -> dict[str, Any]:
        return {"redirectors": [scrub(r) for r in self.redirectors], "timeout": self.timeout,
                "retries": self.retries, "backoff": self.backoff,
                "on_error": self.on_error, "min_fraction": self.min_fraction}


def max_files_unopened(files_listed: int, min_fraction: float) -> int:
    """How many of ``files_listed`` files may fail to open under ``min_fraction``:
    ``(1 - min_fraction)`` of them, rounded down, but always one file (none when
    ``min_fraction`` is 1). So at the default 0.9 one bad file of 4 is skipped, 2 of 4
    are too many, and 2 of 20 may be skipped."""
    if min_fraction >= 1:
        return 0
    return max(1, math.floor((1 - min_fraction) * files_listed + 1e-9))


# -- locations ---------------------------------------------------------------------------

def is_remote(path: str) -> bool:
    return path.startswith(_REMOTE)


def is_lfn(path: str) -> bool:
    return path.startswith(LFN_PREFIX)


def normalise_url(url: str) -> str:
    """``davs://`` is WebDAV over TLS, i.e. HTTPS; ``dav://`` is HTTP; ``xroot://`` is
    ``root://``."""
    for old, new in (("davs://", "https://"), ("dav://", "http://"), ("xroot://", "root://")):
        if url.startswith(old):
            return new + url[len(old):]
    return url


def join_redirector(redirector: str, lfn: str) -> str:
    """``root://host:port/`` + ``/store/x.root`` -> ``root://host:port//store/x.root``
    (the XRootD convention: an absolute path after the host); HTTPS redirectors are
    prefixes (``https://host/path`` + ``/store/...``)."""
    redirector = normalise_url(redirector.strip())
    if redirector.startswith(("root://", "roots://")):
        scheme, rest = redirector.split("://", 1)
        host, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        path = f"/{prefix}{lfn}" if prefix else lfn
        return f"{scheme}://{host}/{path}"
    return redirector.rstrip("/") + lfn


def locations(path: str, policy: ReadPolicy) -> tuple[str, ...]:
    """The places to read ``path`` from, in order."""
    if is_lfn(path) and policy.redirectors:
        return tuple(join_redirector(r, path) for r in policy.redirectors)
    return (normalise_url(path),)


def display(url: str) -> str:
    """A URL fit for messages and metadata (credential query values removed)."""
    return scrub(url)


# -- errors ------------------------------------------------------------------------------

#: XRootD server error codes (XProtocol.hh) that are worth retrying
_XRD_TRANSIENT = {3007, 3008, 3012, 3014, 3017, 3020, 3024, 3033, 3034, 3035}
_XRD_CODE = re.compile(r"\[(3\d{3})\]")
_XRD_CLIENT_TRANSIENT = ("operation expired", "connection error", "socket error",
                         "socket timeout", "stream is broken", "socket disconnected",
                         "connection refused", "connection reset", "broken pipe",
                         "operation interrupted", "invalid session", "redirect limit",
                         "poller error", "stream disconnect", "handshake")
_HTTP_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


def classify(err: BaseException) -> tuple[bool, str]:
    """``(transient, cause)``: whether retrying may help, and a one-line description
    fit for users (never a request header, never a credential)."""
    import asyncio

    hidden = _hidden_exception(err)
    if hidden is not None:
        return hidden
    cause = _cause(err)
    status = getattr(err, "status", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status in _HTTP_TRANSIENT, cause
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return False, cause
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True, cause
    name = type(err).__name__
    if "Certificate" in name or isinstance(err, ssl.SSLCertVerificationError):
        return False, cause  # not trusted: retrying will not help
    if isinstance(err, ssl.SSLError):
        return True, cause  # e.g. a TLS record cut short by a dropped connection
    if name in _TRANSIENT_NAMES:
        return True, cause
    text = str(err).lower()
    code = _XRD_CODE.search(str(err))
    if code:
        return int(code.group(1)) in _XRD_TRANSIENT, cause
    if any(marker in text for marker in _XRD_CLIENT_TRANSIENT):
        return True, cause
    if isinstance(err, OSError) and err.errno in (errno.ECONNREFUSED, errno.ECONNRESET,
                                                   errno.ETIMEDOUT, errno.EPIPE,
                                                   errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                   errno.EAGAIN, errno.EBUSY):
        return True, cause
    return False, cause


_TRANSIENT_NAMES = {"ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
                    "ClientConnectorError", "ClientOSError", "ContentLengthError",
                    "TransferEncodingError", "FSTimeoutError", "IncompleteRead",
                    "RemoteProtocolError", "ReadTimeout", "ConnectTimeout", "TimeoutError",
                    "ConnectionResetError", "ConnectionRefusedError", "ConnectionError",
                    "BrokenPipeError", "SSLError"}
_HIDDEN = re.compile(r"'(\w+)' object (?:is not subscriptable|has no len|"
                     r"cannot be interpreted|is not iterable)|object of type '(\w+)'")


def _hidden_exception(err: BaseException) -> tuple[bool, str] | None:
    """uproot's vector reads over fsspec get failed ranges back as exception objects and
    trip over them (``TypeError: 'ClientPayloadError' object is not subscriptable``):
    classify by the exception that was really raised."""
    if not isinstance(err, TypeError):
        return None
    match = _HIDDEN.search(str(err))
    name = match and (match.group(1) or match.group(2))
    if not name or not (name.endswith(("Error", "Exception", "Timeout")) or
                        name in _TRANSIENT_NAMES):
        return None
    transient = name in _TRANSIENT_NAMES or name.endswith("TimeoutError")
    what = {"FileNotFoundError": "no such file", "PermissionError": "permission denied"}.get(
        name, f"{name} during a vector read (the transfer failed)")
    return transient, what


def _cause(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and 100 <= status < 600:
        # aiohttp's repr carries the request headers (the token): use status + reason only
        reason = getattr(err, "message", "") or ""
        text = f"HTTP {status} {reason}".strip()
        meaning = {401: "not authorised: no or wrong bearer token / proxy",
                   403: "permission denied", 404: "no such file",
                   429: "server busy", 503: "server busy / unavailable"}.get(status)
        return scrub(f"{text} ({meaning})" if meaning else text)
    name = type(err).__name__
    if name in {"ClientConnectorError", "ClientConnectorCertificateError"}:
        inner = getattr(err, "os_error", None) or err.__cause__
        base = f"{name}: cannot connect ({first_line(inner) if inner else 'no connection'})"
        return scrub(base)
    if isinstance(err, FileNotFoundError | PermissionError):
        what = "no such file" if isinstance(err, FileNotFoundError) else "permission denied"
        detail = err.strerror if err.strerror else first_line(err)
        if not detail or "://" in detail or detail.startswith("/") or detail == what:
            return what  # the detail would only repeat the path
        return scrub(f"{what} ({detail})")
    text = first_line(err) or name
    if isinstance(err, NotRootFile):  # its text says what is wrong: no class name
        return scrub(text)
    text = text.removeprefix("Failed to open file: ")
    return scrub(f"{name}: {text}")


@dataclass
class Attempt:
    """One try at one place."""

    url: str
    cause: str
    transient: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"url": display(self.url), "error": self.cause, "transient": self.transient,
                "seconds": round(self.seconds, 3)}


@dataclass
class Outcome:
    """How a read went: where it finally succeeded and every failed attempt before."""

    url: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def tries(self) -> int:
        return len(self.attempts) + (1 if self.url else 0)

    @property
    def fallbacks(self) -> int:
        """How many places were given up on before the one that worked."""
        failed_places = list(dict.fromkeys(a.url for a in self.attempts))
        return len([u for u in failed_places if u != self.url])


class ReadFailure(DataError):
    """A file or partition that could not be read at any of its places.

    ``summary`` says what and where (every place and its cause), ``advice`` what to do
    (which depends on ``on_error``: with ``skip`` there is no advice to set it)."""

    def __init__(self, what: str, outcome: Outcome, on_error: str = "fail") -> None:
        self.what = what
        self.outcome = outcome
        self.on_error = on_error
        super().__init__(self._message())

    def __reduce__(self) -> tuple[Any, ...]:
        # travels from a worker to the client: rebuild from its parts, not from args
        return (ReadFailure, (self.what, self.outcome, self.on_error))

    @property
    def cause(self) -> str:
        return self.outcome.attempts[-1].cause if self.outcome.attempts else "unknown"

    @property
    def summary(self) -> str:
        """What could not be read and every place tried, with its cause (no advice)."""
        places: dict[str, list[Attempt]] = {}
        for attempt in self.outcome.attempts:
            places.setdefault(attempt.url, []).append(attempt)
        tried = "; ".join(
            f"{display(url)}: {tries[-1].cause}"
            + (f" (after {len(tries)} attempts)" if len(tries) > 1 else "")
            for url, tries in places.items())
        return scrub(f"Cannot read {self.what}. Tried {tried}.")

    @property
    def advice(self) -> str:
        """What to do about it, in one sentence."""
        return _hint(self.outcome.attempts[-1], self.on_error) if self.outcome.attempts else ""

    def _message(self) -> str:
        return f"{self.summary} {self.advice}".strip()


def _hint(attempt: Attempt, on_error: str = "fail") -> str:
    cause = attempt.cause.lower()
    if "no such file" in cause or "[3011]" in cause or "http 404" in cause:
        return "Check the path, or add a redirector that has the file (dataset.redirectors)."
    if "permission denied" in cause or "[3010]" in cause or "http 403" in cause:
        return "The server refuses access: check your proxy (voms-proxy-info) or token."
    if "http 401" in cause or "[3030]" in cause:
        return "Authentication failed: set X509_USER_PROXY or BEARER_TOKEN(_FILE)."
    if "certificate" in cause:
        return "The server's certificate is not trusted: set X509_CERT_DIR to the CA folder."
    if attempt.transient:
        return ("The server did not answer in time or dropped the connection; retry "
                "later" + (", or raise dataset.retries / dataset.timeout." if on_error == "skip"
                           else ", raise dataset.retries / dataset.timeout, or set "
                           "dataset.on_error: skip to go on without this file."))
    return ("The file may be truncated, corrupt or not a ROOT file; re-copy it or "
            + ("remove it from the dataset." if on_error == "skip"
               else "set dataset.on_error: skip."))


def failure_record(err: ReadFailure) -> dict[str, Any]:
    """What a report says of a read that failed: the cause, the summary (what and where),
    the advice, and every attempt."""
    return {"error": err.cause, "message": err.summary, "advice": err.advice,
            "attempts": [a.to_dict() for a in err.outcome.attempts]}


def first_failure(records: Sequence[Mapping[str, Any]]) -> str:
    """The first of a report's failed reads (:func:`failure_record` entries) as messages
    quote it, what and where then the advice; ``none`` when there is none."""
    return f"{records[0]['message']} {records[0]['advice']}" if records else "none"


class NotRootFile(ValueError):
    """A file that opens but is not a (whole) ROOT file: not worth retrying."""


def with_fallback(places: Sequence[str], action: Callable[..., T], policy: ReadPolicy,
                  what: str, sleep: Callable[[float], None] = time.sleep) -> tuple[T, Outcome]:
    """Run ``action(url, fresh)`` at each place in turn: transient errors are retried at
    the same place with backoff, then (and after a permanent error) the next place is
    tried. ``fresh`` is true after an error: open new connections, not cached ones.

    Raises :class:`ReadFailure` naming every place and cause when all fail.
    """
    outcome = Outcome()
    for url in places:
        for attempt in range(policy.retries + 1):
            start = time.monotonic()
            try:
                result = action(url, bool(outcome.attempts))
            except DataError:
                raise
            except Exception as err:  # noqa: BLE001 - classified below
                transient, cause = classify(err)
                outcome.attempts.append(Attempt(url, cause, transient,
                                                time.monotonic() - start))
                _forget(url)
                if not transient or attempt == policy.retries:
                    break
                sleep(policy.delay(attempt + 1))
                continue
            outcome.url = url
            return result, outcome
    raise ReadFailure(what, outcome, policy.on_error)


# -- opening -----------------------------------------------------------------------------

_xrootd_lock = threading.Lock()
_xrootd_settings: tuple[int, ...] | None = None


def _configure_xrootd(timeout: float) -> None:
    """Make the XRootD client fail fast and let us retry: by default it reconnects for
    minutes and, after a stream error, refuses to reconnect for half an hour."""
    global _xrootd_settings  # noqa: PLW0603 - once per process, under _xrootd_lock
    seconds = max(1, round(timeout))
    wanted = (seconds,)
    if _xrootd_settings == wanted:
        return
    with _xrootd_lock:
        from mlaas_dask.extras import require

        env = require("XRootD.client")
        for key, value in (("ConnectionRetry", 1), ("ConnectionWindow", seconds),
                           ("RequestTimeout", seconds), ("StreamTimeout", seconds),
                           ("StreamErrorWindow", 0), ("TimeoutResolution", 1)):
            env.EnvPutInt(key, value)
        _xrootd_settings = wanted


def open_options(url: str, policy: ReadPolicy) -> dict[str, Any]:
    """``uproot.open`` keyword arguments for reading ``url``."""
    if url.startswith(("root://", "roots://")):
        from mlaas_dask.extras import require

        require("fsspec_xrootd")
        _configure_xrootd(policy.timeout)
        return {"timeout": max(1, round(policy.timeout))}
    if url.startswith(("https://", "http://")):
        from mlaas_dask.extras import require

        aiohttp = require("aiohttp")

        options: dict[str, Any] = {
            "client_kwargs": {"timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=policy.timeout, sock_read=policy.timeout)},
        }
        if url.startswith("https://"):
            options["ssl"] = ssl_context()
        token = bearer_token()
        if token:
            options["headers"] = {"Authorization": f"Bearer {token}"}
        return options
    return {}


def _forget(url: str) -> None:
    """After an error, drop the XRootD file handle that fsspec-xrootd keeps for ``url``
    (without talking to the server, which may be gone), so that later reads of the file
    open it anew instead of failing on a dead handle."""
    if not url.startswith(("root://", "roots://")):
        return
    try:
        import fsspec

        cls = fsspec.get_filesystem_class("root")
        for instance in list(getattr(cls, "_cache", {}).values()):
            handles = getattr(getattr(instance, "_readonly_filehandle_cache", None),
                              "_cache", None)
            if isinstance(handles, dict):
                for key in [k for k in handles if k == url or url.endswith(k.split("//", 2)[-1])]:
                    handles.pop(key, None)
    except Exception:  # noqa: BLE001 - best effort; a fresh filesystem is used anyway
        pass


def open_root(url: str, policy: ReadPolicy, fresh: bool = False) -> Any:
    """``uproot.open`` with the policy's timeout, TLS and credentials; ``fresh``: with a
    new filesystem object (new connections), not the cached one."""
    import uproot

    from mlaas_dask.data.decompression import use_fastest_zlib

    use_fastest_zlib()
    if not is_remote(url) and not os.path.exists(url):
        raise FileNotFoundError(errno.ENOENT, "no such file", url)
    if not is_remote(url) and not os.access(url, os.R_OK):
        raise PermissionError(errno.EACCES, "permission denied", url)
    options = open_options(url, policy)
    if fresh and is_remote(url):
        options["skip_instance_cache"] = True
    return uproot.open({url: None}, **options)  # a dict: no 'file.root:tree' splitting


def read_range(places: Sequence[str], tree: str, branches: Sequence[str], start: int,
               stop: int, entries: int, policy: ReadPolicy, what: str) -> tuple[Any, Outcome]:
    """Events ``[start, stop)`` of ``branches`` of ``tree``, from the first place that
    works (the one that worked when the dataset was opened comes first)."""

    def action(url: str, fresh: bool) -> Any:
        with open_root(url, policy, fresh) as handle:
            ttree = handle[tree]
            if ttree.num_entries != entries:
                raise ReplicaMismatch(
                    f"this copy's tree {tree!r} has {ttree.num_entries} entries, not "
                    f"{entries} as when the dataset was opened")
            return read_entries(ttree, branches, start, stop)  # a TTree or an RNTuple

    return with_fallback(places, action, policy, what)


class ReplicaMismatch(ValueError):
    """A copy of a file that differs from the one the dataset was planned on."""
