"""Connections: what keeps idle, slow or too many clients from starving the server.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 to
requests beyond ``limit_concurrency`` open connections, but it never limits how long a
client may take to send its request head, nor (with httptools) how large that head may be:
a client sending one header byte per second holds its connection forever, and enough of
them exhaust the server's file descriptors. :class:`GuardedProtocol` adds that to uvicorn's
httptools protocol:

- the request head (request line and headers) must arrive within ``header_timeout_s`` of
  the connection being opened, or of the head's first byte on a kept-alive connection;
  otherwise the server answers 408 and closes the connection;
- a head larger than ``max_header_bytes`` is answered 431 and the connection closed;
- beyond ``max_connections`` open connections, requests get uvicorn's 503 at once, the
  new connection gets only :data:`OVER_LIMIT_GRACE_S` to send its head, and the
  connection idle the longest on keep-alive (if any) is closed to make room, so idle
  clients never lock out active ones.

A request *body* is bounded by the app itself (size and ``timeout_s``, see
:func:`mlaas_dask.serve.app.read_body`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlaas_dask.serve.config import CONFIG_ENV, ServeConfig

log = logging.getLogger("mlaas_dask.serve")

#: seconds a connection opened beyond the connection limit may take to send its head
OVER_LIMIT_GRACE_S = 1.0


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on request heads.

    The limits are class attributes: :func:`protocol_class` makes a subclass with them.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True
        self._heads = 0  # request heads completed on this connection
        self._head_bytes = 0
        self._head_deadline: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None

    # -- uvicorn's protocol interface ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        timeout = self.header_timeout_s
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            # uvicorn answers 503 unless fewer than ``limit`` connections (this one included)
            # are open: make room by closing idle ones, and give this one little time
            self._close_idle(len(self.connections) - limit + 1)
            timeout = min(timeout, OVER_LIMIT_GRACE_S)
        self._arm(timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        counting = self._awaiting_head
        if counting and self._head_deadline is None:  # a kept-alive connection's next head
            self._arm(self.header_timeout_s)
        heads = self._heads
        super().data_received(data)
        # bytes of a head still incomplete (a head completed in this piece: not counted)
        if counting and self._heads == heads and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"The request head is larger than {self.max_header_bytes} bytes.")

    # -- httptools parser callbacks ----------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True  # what arrives next is the next request's head
        if self.cycle is not None and self.cycle.response_complete:
            # answered before its body ended (a refused upload): uvicorn's keep-alive
            # timer was cancelled by the rest of the body, so bound the wait here
            self._arm(self.header_timeout_s)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._awaiting_head and self._head_bytes == 0:
            self._idle_since = time.monotonic()

    # -- the guard -------------------------------------------------------------------------

    def _arm(self, timeout: float) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(timeout, self._head_timed_out, timeout)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self, timeout: float) -> None:
        self._head_deadline = None
        if not self._awaiting_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm(timeout)  # a response is still being produced: close only after it
            return
        if self._head_bytes == 0 and self._idle_since is not None:
            return  # idle on keep-alive: uvicorn's keep-alive timeout closes it
        self._refuse(408, "Request Timeout",
                     f"The request head did not arrive within {timeout:g} s.")

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        self._disarm()
        client = "{}:{:d}".format(*self.client) if self.client else "a client"
        log.debug("closing the connection of %s: %s", client, message)
        body = f'{{"error": "{message}"}}'.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body)
        )
        self.transport.close()

    def _close_idle(self, count: int) -> None:
        """Close up to ``count`` kept-alive connections idle between requests, the
        longest idle first."""
        idle = [c for c in self.connections
                if isinstance(c, GuardedProtocol) and c._idle_since is not None]
        idle.sort(key=lambda c: c._idle_since or 0.0)
        for connection in idle[:count]:
            connection._idle_since = None
            connection.transport.close()
            # uvloop reports the close after the next reads: count it as gone now
            self.connections.discard(connection)


def protocol_class(config: ServeConfig) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` with ``config``'s head timeout and size limit."""
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout_s": config.header_timeout_s,
        "max_header_bytes": config.max_header_bytes,
    })


@functools.cache
def _class_from_env() -> type[GuardedProtocol]:
    return protocol_class(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def protocol_from_env(**kwargs: Any) -> GuardedProtocol:
    """The protocol for worker processes (``mlaas serve --workers N``), whose settings
    come through the environment: uvicorn imports this by name in each process."""
    return _class_from_env()(**kwargs)


def uvicorn_options(config: ServeConfig, *, from_env: bool = False) -> dict[str, Any]:
    """The ``uvicorn.Config`` / ``uvicorn.run`` options that enforce ``config``'s
    connection limits (``from_env``: for worker processes started by uvicorn)."""
    http: Any = ("mlaas_dask.serve.connections:protocol_from_env" if from_env
                 else protocol_class(config))
    return {
        "http": http,
        "limit_concurrency": config.max_connections,
        "timeout_keep_alive": config.keep_alive_s,
    }
