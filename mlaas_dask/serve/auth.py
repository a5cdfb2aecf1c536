"""Bearer tokens: required on write endpoints, optionally on read endpoints.

The token comes from a file (``--token-file``) or the ``MLAAS_SERVE_TOKEN`` environment
variable. Without a token, write endpoints (upload, load, unload, delete) are disabled
(403), never open.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from mlaas_dask.errors import MlaasError
from mlaas_dask.serve.config import TOKEN_ENV
from mlaas_dask.serve.errors import Forbidden, Unauthorized

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mlaas"'}


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The configured token: the file's content, else the environment variable, else None.

    Raises
    ------
    MlaasError
        When the file cannot be read or is empty.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise MlaasError(f"Cannot read the token file {token_file}: {err.strerror}.") from None
        if not token:
            raise MlaasError(f"The token file {token_file} is empty; put the token in it.")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` headers.

    Parameters
    ----------
    token
        The expected token, or ``None`` (write endpoints disabled, reads open).
    protect_reads
        Whether read endpoints need the token too.
    """

    def __init__(self, token: str | None, protect_reads: bool = False) -> None:
        self._token = token.encode() if token else None
        self.protect_reads = protect_reads and token is not None

    @property
    def writes_enabled(self) -> bool:
        return self._token is not None

    def check_write(self, authorization: str | None) -> None:
        """Raise unless the header carries the token (403 when writes are disabled)."""
        if self._token is None:
            raise Forbidden(
                "Model management is disabled on this server: no token is configured. Start "
                f"it with --token-file FILE or the {TOKEN_ENV} environment variable to enable "
                "upload, load, unload and delete."
            )
        self._check(authorization)

    def check_read(self, authorization: str | None) -> None:
        """Raise unless reads are open or the header carries the token."""
        if self.protect_reads:
            self._check(authorization)

    def _check(self, authorization: str | None) -> None:
        assert self._token is not None
        scheme, _, credentials = (authorization or "").partition(" ")
        if not authorization or scheme.lower() != "bearer":
            raise Unauthorized(
                "This endpoint needs a bearer token: send the header "
                "'Authorization: Bearer <token>'.", headers=CHALLENGE,
            )
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise Unauthorized("The bearer token is not valid.", headers=CHALLENGE)
