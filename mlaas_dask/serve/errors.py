"""HTTP errors: a status and a message that says what was expected.

Every error a client can cause is one of these (or a :class:`~mlaas_dask.errors.MlaasError`
from the feature or bundle code, which the app maps to 400). The app turns them into
``{"error": "..."}`` with the status; nothing a client sends ends in a 500.
"""

from __future__ import annotations

from mlaas_dask.errors import MlaasError


class ServeError(MlaasError):
    """An error answered with ``status`` and ``{"error": message}``."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class BadRequest(ServeError):
    """Malformed body, wrong shape or datatype, missing feature (400)."""

    status = 400


class Unauthorized(ServeError):
    """Missing or wrong bearer token (401)."""

    status = 401


class Forbidden(ServeError):
    """The endpoint is disabled (403): no token is configured for write endpoints."""

    status = 403


class NotFound(ServeError):
    """Unknown model, version or path (404)."""

    status = 404


class MethodNotAllowed(ServeError):
    """Known path, wrong HTTP method (405)."""

    status = 405


class RequestTimeout(ServeError):
    """The body did not arrive in time (408)."""

    status = 408


class Conflict(ServeError):
    """The version to create already exists (409)."""

    status = 409


class PayloadTooLarge(ServeError):
    """Body or batch larger than the configured limit (413)."""

    status = 413


class UnsupportedMediaType(ServeError):
    """A content encoding the server does not read (415)."""

    status = 415


class Unavailable(ServeError):
    """Not ready, overloaded, or a prediction that ran past the timeout (503)."""

    status = 503
