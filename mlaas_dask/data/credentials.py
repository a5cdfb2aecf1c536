"""Grid credentials: X.509 proxies and WLCG bearer tokens, carried to the Dask workers.

The client reads them where WLCG tools put them (``X509_USER_PROXY`` or
``/tmp/x509up_u<uid>``; ``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``,
``$XDG_RUNTIME_DIR/bt_u<uid>`` or ``/tmp/bt_u<uid>``) and a Dask worker plugin writes them
on every worker -- which may be on another machine, where the client's files do not
exist -- into files only the worker's user can read, and points the same variables at
them. The XRootD client finds them there itself; HTTPS reads send the token as
``Authorization: Bearer`` and the proxy as the TLS client certificate.

Their values never reach a log, an error message or the bundle metadata: every object
holding them prints as ``<redacted>``, and :func:`scrub` blanks any known value out of a
text before it is shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN_NAME = "mlaas-credentials"
REDACTED = "<redacted>"

_known_secrets: set[str] = set()
_lock = threading.Lock()

# URL query keys that carry credentials (XRootD authz, S3/DAV signatures, macaroons, ...)
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:xrd\.authz|authz|access_token|token|bearer_token|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|sig|macaroon|key|password)=)"
    r"[^&#\s'\"]*")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def remember_secret(value: str | bytes | None) -> None:
    """Add a value to those :func:`scrub` removes from texts."""
    if not value:
        return
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    with _lock:
        for piece in {text, text.strip()}:
            if len(piece) >= 8:
                _known_secrets.add(piece)
        # also every long line of a PEM proxy (certificate and key bodies)
        for line in text.splitlines():
            if len(line.strip()) >= 32:
                _known_secrets.add(line.strip())


def scrub(text: str) -> str:
    """``text`` without any known credential, URL password or credential query value."""
    text = _SECRET_QUERY.sub(r"\1" + REDACTED, text)
    text = _USERINFO.sub(r"\1" + REDACTED + "@", text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _default_proxy() -> str | None:
    path = Path(f"/tmp/x509up_u{os.getuid()}")
    return str(path) if path.is_file() else None


def _token_file_candidates(environ: Mapping[str, str]) -> list[str]:
    uid = os.getuid()
    out = []
    if environ.get("BEARER_TOKEN_FILE"):
        out.append(environ["BEARER_TOKEN_FILE"])
    if environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(environ["XDG_RUNTIME_DIR"], f"bt_u{uid}"))
    out.append(f"/tmp/bt_u{uid}")
    return out


def bearer_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The WLCG bearer token, found as the WLCG Bearer Token Discovery spec says."""
    environ = os.environ if environ is None else environ
    token = environ.get("BEARER_TOKEN", "").strip()
    if token:
        remember_secret(token)
        return token
    for candidate in _token_file_candidates(environ):
        try:
            token = Path(candidate).read_text().strip()
        except OSError:
            continue
        if token:
            remember_secret(token)
            return token
    return None


def proxy_path(environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    path = environ.get("X509_USER_PROXY") or _default_proxy()
    return path if path and os.path.isfile(path) else None


@dataclass(frozen=True, repr=False)
class Credentials:
    """What the client has: the proxy's bytes, the token and the CA folder (not secret)."""

    proxy: bytes | None = None
    token: str | None = None
    ca_dir: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        from mlaas_dask.errors import DataError

        environ = os.environ if environ is None else environ
        proxy = None
        if environ.get("X509_USER_PROXY") and not os.path.isfile(environ["X509_USER_PROXY"]):
            raise DataError(
                f"X509_USER_PROXY points to {environ['X509_USER_PROXY']}, which does not "
                "exist. Create a proxy (voms-proxy-init) or unset the variable.",
                file=environ["X509_USER_PROXY"])
        path = proxy_path(environ)
        if path:
            try:
                proxy = Path(path).read_bytes()
            except OSError as err:
                raise DataError(f"Cannot read the X.509 proxy {path} ({err.strerror}).",
                                file=str(path)) from None
            remember_secret(proxy)
        return cls(proxy=proxy, token=bearer_token(environ),
                   ca_dir=environ.get("X509_CERT_DIR") or None)

    def __bool__(self) -> bool:
        return bool(self.proxy or self.token or self.ca_dir)

    def __repr__(self) -> str:
        kinds = [k for k, v in (("proxy", self.proxy), ("token", self.token)) if v]
        return f"Credentials({', '.join(kinds) or 'none'}, ca_dir={self.ca_dir!r}: {REDACTED})"

    __str__ = __repr__

    def describe(self) -> dict[str, Any]:
        """For metadata: which kinds were used, never the values."""
        return {"x509_proxy": self.proxy is not None, "bearer_token": self.token is not None,
                "ca_dir": self.ca_dir}


def _plugin_class() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    class CredentialsPlugin(WorkerPlugin):
        """Writes the credentials on each worker (mode 0600) and sets the variables."""

        name = PLUGIN_NAME

        def __init__(self, credentials: Credentials) -> None:
            self.credentials = credentials
            self._saved: dict[str, str | None] = {}
            self._files: list[str] = []

        def __repr__(self) -> str:
            return f"CredentialsPlugin({REDACTED})"

        def setup(self, worker: Any) -> None:
            creds = self.credentials
            folder = os.path.join(getattr(worker, "local_directory", None) or "/tmp",
                                  "mlaas-credentials")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            values: dict[str, str] = {}
            if creds.proxy:
                values["X509_USER_PROXY"] = self._write(folder, "x509_proxy", creds.proxy)
                remember_secret(creds.proxy)
            if creds.token:
                values["BEARER_TOKEN_FILE"] = self._write(folder, "bearer_token",
                                                          creds.token.encode())
                values["BEARER_TOKEN"] = creds.token
                remember_secret(creds.token)
            if creds.ca_dir:
                values["X509_CERT_DIR"] = creds.ca_dir
            for key, value in values.items():
                self._saved.setdefault(key, os.environ.get(key))
                os.environ[key] = value
            clear_ssl_cache()

        def _write(self, folder: str, name: str, data: bytes) -> str:
            path = os.path.join(folder, name)
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
            self._files.append(path)
            return path

        def teardown(self, worker: Any) -> None:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for path in self._files:
                with contextlib.suppress(OSError):
                    os.remove(path)
            clear_ssl_cache()

    return CredentialsPlugin


@contextlib.contextmanager
def worker_credentials(client: Any,
                       credentials: Credentials | None = None) -> Iterator[Credentials]:
    """Install the client's credentials on every worker (also ones that join later) for
    the duration of the block."""
    credentials = Credentials.from_env() if credentials is None else credentials
    if not credentials:
        yield credentials
        return
    plugin = _plugin_class()(credentials)
    client.register_plugin(plugin, name=PLUGIN_NAME)
    try:
        yield credentials
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(PLUGIN_NAME)


_ssl_cache: dict[tuple[Any, ...], ssl.SSLContext] = {}


def _ssl_context_key() -> tuple[Any, ...]:
    proxy = proxy_path()
    stamp = None
    if proxy:
        with contextlib.suppress(OSError):
            stamp = os.stat(proxy).st_mtime_ns
    return (os.environ.get("X509_CERT_DIR"), proxy, stamp)


def _ssl_context() -> ssl.SSLContext:
    """The TLS context of HTTPS reads: system CAs plus ``X509_CERT_DIR``, and the proxy
    as client certificate. One object per setting (fsspec keys its clients by it)."""
    key = _ssl_context_key()
    with _lock:
        context = _ssl_cache.get(key)
    if context is not None:
        return context
    ca_dir, proxy, _ = key
    context = ssl.create_default_context()
    if ca_dir and os.path.isdir(ca_dir):
        context.load_verify_locations(capath=ca_dir)
    if proxy:
        # a proxy file holds the proxy certificate, its key and the chain
        context.load_cert_chain(proxy)
    with _lock:
        _ssl_cache[key] = context
    return context


def clear_ssl_cache() -> None:
    """Forget the TLS contexts made so far (credentials changed).

    The worker plugin calls this function rather than ``_ssl_cache.clear``: the plugin's
    class is made inside a function, so cloudpickle ships it by value with the globals it
    names, and the cache holds SSLContexts, which cannot be pickled.
    """
    _ssl_cache.clear()


def ssl_context() -> ssl.SSLContext:
    return _ssl_context()
