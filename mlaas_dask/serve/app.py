"""The Starlette application: Open Inference Protocol, raw events, model management.

Endpoints (``{v}`` parts are optional: without them the newest version answers)::

    GET    /v2                                    server metadata
    GET    /v2/health/live | /v2/health/ready
    GET    /v2/models/{name}[/versions/{v}]       model metadata
    GET    /v2/models/{name}[/versions/{v}]/ready
    GET    /v2/models/{name}[/versions/{v}]/config  Triton's model configuration (JSON)
    POST   /v2/models/{name}[/versions/{v}]/infer   OIP inference (JSON or binary tensors)
    POST   /v2/models/{name}[/versions/{v}]/events  raw events -> FeatureSpec -> scores
    POST   /v2/repository/index
    POST   /v2/repository/models/{name}/load | /unload          (token)
    POST   /v2/repository/models/{name}/upload[?version=N]      (token; body: bundle .tar.gz)
    DELETE /v2/repository/models/{name}[/versions/{v}]          (token)
    GET    /metrics                               Prometheus

Errors are ``{"error": "..."}`` with a 4xx status (503 while not ready or overloaded). A
client that disconnects before its body is complete is logged in one line and counted with
status 499 (client closed request), as nginx does. Connection limits (head timeout,
connection cap) are enforced below the app, by :mod:`mlaas_dask.serve.connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas_dask import __version__
from mlaas_dask.archive import ArchiveError, ArchiveTooLarge
from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import MlaasError
from mlaas_dask.serve import protocol
from mlaas_dask.serve.auth import TokenAuth, read_token
from mlaas_dask.serve.batching import Batcher, PredictionPool
from mlaas_dask.serve.config import ServeConfig
from mlaas_dask.serve.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServeError,
    Unavailable,
    UnsupportedMediaType,
)
from mlaas_dask.serve.events import parse_events
from mlaas_dask.serve.metrics import Metrics
from mlaas_dask.serve.modelconfig import triton_config
from mlaas_dask.serve.repository import (
    ModelRepository,
    ModelVersion,
    check_name,
    check_version,
)
from mlaas_dask.serve.runtime import ModelRuntime

log = logging.getLogger("mlaas_dask.serve")

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "mlaas_events"]
#: status recorded for a request whose client went away before sending all of it (nginx's)
CLIENT_CLOSED = 499
Handler = Callable[[Request, "ServerState"], Awaitable[Response]]
_LABEL = "mlaas.model"  # scope key where handlers note the model and version they served


@dataclass
class ServerState:
    """Everything the handlers share."""

    config: ServeConfig
    auth: TokenAuth
    pool: PredictionPool
    metrics: Metrics
    repo: ModelRepository = field(init=False)
    ready: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: the gRPC server (grpc.aio.Server) when --grpc-port is given, and its port
    grpc: Any = None
    grpc_port: int | None = None

    def make_runtime(self, bundle: ModelBundle) -> ModelRuntime:
        return ModelRuntime(bundle, self.pool, self.config.max_batch_size,
                            self.config.max_delay_ms / 1000)

    def model(self, name: str, version: str | None) -> ModelVersion:
        """The loaded model version to serve (the newest for ``version`` None).

        Raises
        ------
        NotFound
            Unknown model or version (Unavailable while the models still load).
        BadRequest
            A version that is not a positive integer.
        """
        if version is not None:
            check_version(version)
        try:
            return self.repo.get(name, version)
        except NotFound:
            if not self.ready:
                raise Unavailable("The server is still loading its models; retry when "
                                  "/v2/health/ready answers 200.") from None
            raise

    async def predict(self, model: ModelVersion, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """Output name -> scores of ``matrix``, dynamically batched, counted in metrics."""
        if len(matrix):
            scores = await self.run(model.runtime.matrices, matrix, len(matrix))
        else:
            scores = model.bundle.predict_matrix(matrix)
        self.metrics.observe_events(model.name, model.version, len(matrix))
        return protocol.output_columns(scores, model.bundle.output_names)

    async def load(self, name: str) -> list[str]:
        """Load (or reload) model ``name``; its loaded versions.

        Raises
        ------
        BadRequest
            With every version's failure.
        Conflict
            When another request unloaded or deleted it meanwhile.
        """
        failures = await asyncio.to_thread(self.repo.load, check_name(name))
        if failures:
            raise BadRequest(" ".join(failures))
        entry = self.repo.loaded().get(name)
        if entry is None:  # unloaded or deleted by a concurrent request
            raise Conflict(f"Model {name!r} was unloaded or deleted by another request while "
                           "it loaded; load it again if it should be served.")
        return entry.sorted_versions()

    async def unload(self, name: str) -> None:
        """Unload model ``name`` (its versions stay on disk)."""
        await asyncio.to_thread(self.repo.unload, check_name(name))

    async def run(self, batcher: Batcher, payload: Any, rows: int) -> Any:
        """The batcher's result for ``payload``, within the timeout."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await batcher.submit(payload, rows)
        except TimeoutError:
            raise Unavailable(
                f"The prediction took longer than {self.config.timeout_s:g} s; the server is "
                "overloaded or the request is too large. Retry with fewer events."
            ) from None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(protocol.dumps(data), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


# -- request helpers ----------------------------------------------------------------------


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, decompressed (``Content-Encoding: gzip`` or ``deflate``), refusing
    other encodings, bodies over ``limit`` bytes (sent or decompressed) and slow senders."""
    encoding = check_body_headers(request, limit, ENCODINGS)
    inflate = Inflater(encoding, limit) if encoding else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(f"more than {limit} bytes", limit)
                chunks.append(inflate.feed(chunk) if inflate else chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout:g} s.") from None
    if inflate is not None:
        chunks.append(inflate.finish())
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: request Content-Encodings read_body decompresses (tritonclient's request compression)
ENCODINGS = ("gzip", "deflate")


class Inflater:
    """Decompresses a gzip or deflate body piece by piece, refusing more than ``limit``
    decompressed bytes (a gzip bomb) before producing them.

    ``deflate`` is the zlib format (RFC 9110); a raw deflate stream, which some clients
    send, is read too.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self._zlib = zlib.decompressobj(31 if encoding == "gzip" else 15)
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if not self._started and data:
            self._started = True
            zlib_header = (len(data) >= 2 and data[0] & 0x0F == 8
                           and (data[0] << 8 | data[1]) % 31 == 0)
            if self.encoding == "deflate" and not zlib_header:
                self._zlib = zlib.decompressobj(-15)  # no zlib header: raw deflate
        try:
            out = self._zlib.decompress(data, self.limit - self.size + 1)
        except zlib.error as err:
            raise BadRequest(f"The request body is not valid {self.encoding} data "
                             f"(Content-Encoding: {self.encoding}): {err}.") from None
        self.size += len(out)
        if self.size > self.limit or self._zlib.unconsumed_tail:
            raise PayloadTooLarge(
                f"The request body decompresses to more than {self.limit} bytes; this server "
                f"accepts at most {self.limit} bytes per request after decompression. Split "
                "it into smaller requests."
            )
        return out

    def finish(self) -> bytes:
        if not self._zlib.eof:
            raise BadRequest(f"The request body ends before its {self.encoding} stream does "
                             "(truncated compressed data).")
        return b""


def check_body_headers(request: Request, limit: int,
                       encodings: tuple[str, ...] = ()) -> str:
    """The body's content encoding ("" for none), refusing one not in ``encodings``, and a
    body declared over ``limit``."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        encoding = ""
    elif encoding not in encodings:
        accepted = ", ".join(encodings)
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
            + (f" or as {accepted}." if accepted else ".")
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Invalid Content-Length header {declared!r}.")
        if int(declared) > limit:
            raise _too_large(f"{declared} bytes", limit)
    return encoding


class BodyReader:
    """The request body as ``read(n)`` for a worker thread (uploads): each piece is
    received on the event loop as the thread asks for it, within ``limit`` bytes and
    ``timeout`` seconds, so the thread works on the body while it still arrives.

    Create it on the event loop; call :meth:`read` only from a thread started with
    ``anyio.to_thread``.
    """

    def __init__(self, request: Request, limit: int, timeout: float) -> None:
        check_body_headers(request, limit)
        self._stream = request.stream().__aiter__()
        self._limit = limit
        self._timeout = timeout
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._chunk = memoryview(b"")
        self._offset = 0
        self.size = 0

    def read(self, n: int) -> bytes:
        if self._offset >= len(self._chunk):
            self._chunk, self._offset = memoryview(anyio.from_thread.run(self._next)), 0
        piece = self._chunk[self._offset:self._offset + n]
        self._offset += len(piece)
        return bytes(piece)

    async def _next(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                chunk = await anext(self._stream, b"")
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self._timeout:g} s."
            ) from None
        self.size += len(chunk)
        if self.size > self._limit:
            raise _too_large(f"more than {self._limit} bytes", self._limit)
        return chunk


def _too_large(size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body has {size}; this server accepts at most {limit} bytes per "
        "request. Split it into smaller requests."
    )


def _model(request: Request, state: ServerState) -> ModelVersion:
    """The model version named by the path; records it for the metrics."""
    model = state.model(request.path_params["name"], request.path_params.get("version"))
    request.scope[_LABEL] = (model.name, model.version)
    return model


# -- inference ----------------------------------------------------------------------------


async def infer(request: Request, state: ServerState) -> Response:
    model = _model(request, state)
    config = state.config
    body = await read_body(request, config.max_body_bytes, config.timeout_s)
    parsed = protocol.parse_infer_request(
        body, request.headers.get(protocol.HEADER_LENGTH), model.runtime.feature_names,
        config.max_request_rows,
    )
    columns = await state.predict(model, parsed.matrix)
    content, headers = protocol.encode_infer_response(parsed, model.name, model.version, columns)
    return Response(content, headers=headers)


async def score_events(request: Request, state: ServerState) -> Response:
    model = _model(request, state)
    config = state.config
    body = await read_body(request, config.max_body_bytes, config.timeout_s)
    runtime: ModelRuntime = model.runtime
    columns = parse_events(protocol.loads(body), runtime.branches, config.max_request_rows)
    scores = await state.run(runtime.events, columns, columns.n_events)
    state.metrics.observe_events(model.name, model.version, columns.n_events)
    return json_response({
        "model_name": model.name,
        "model_version": model.version,
        "outputs": model.bundle.output_names,
        "scores": np.asarray(scores, dtype=np.float32),
    })


# -- metadata and health ------------------------------------------------------------------


async def server_metadata(request: Request, state: ServerState) -> Response:
    return json_response({"name": "mlaas_dask", "version": __version__,
                          "extensions": EXTENSIONS})


async def live(request: Request, state: ServerState) -> Response:
    return json_response({"live": True})


async def ready(request: Request, state: ServerState) -> Response:
    if not state.ready:
        return error_response(503, "The server is still loading its models.")
    return json_response({"ready": True})


async def model_metadata(request: Request, state: ServerState) -> Response:
    return json_response(metadata_of(state, _model(request, state)))


def metadata_of(state: ServerState, model: ModelVersion) -> dict[str, Any]:
    """The OIP model metadata of a loaded version (HTTP and gRPC)."""
    bundle = model.bundle
    entry = state.repo.loaded()[model.name]
    scalar_metrics = {k: v for k, v in bundle.metrics.items()
                      if isinstance(v, (int, float, str, bool))}
    return {
        "name": model.name,
        "versions": entry.sorted_versions(),
        "platform": bundle.kind,
        "inputs": [{"name": protocol.INPUT_NAME, "datatype": "FP32",
                    "shape": [-1, bundle.spec.n_features]}],
        "outputs": [{"name": name, "datatype": "FP32", "shape": [-1]}
                    for name in bundle.output_names],
        "parameters": {
            "version": model.version,
            "feature_names": bundle.feature_names,
            "branches": bundle.spec.branches(),
            "classes": bundle.classes,
            "features": bundle.spec.to_dict(),
            "metrics": scalar_metrics,
            "events_endpoint": f"/v2/models/{model.name}/versions/{model.version}/events",
        },
    }


async def model_config(request: Request, state: ServerState) -> Response:
    model = _model(request, state)
    return json_response(triton_config(model.bundle, model.name, model.version, state.config))


async def model_ready(request: Request, state: ServerState) -> Response:
    model = _model(request, state)
    return json_response({"name": model.name, "version": model.version, "ready": True})


async def metrics(request: Request, state: ServerState) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


# -- model management ---------------------------------------------------------------------


async def _json_body(request: Request, state: ServerState) -> dict[str, Any]:
    body = await read_body(request, state.config.max_body_bytes, state.config.timeout_s)
    if not body.strip():
        return {}
    data = protocol.loads(body)
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object (or empty).")
    return data


async def repository_index(request: Request, state: ServerState) -> Response:
    options = await _json_body(request, state)
    rows = state.repo.index()
    if options.get("ready"):
        rows = [row for row in rows if row["state"] == "READY"]
    return json_response(rows)


async def load_model(request: Request, state: ServerState) -> Response:
    name = check_name(request.path_params["name"])
    await _json_body(request, state)
    versions = await state.load(name)
    return json_response({"name": name, "versions": versions})


async def unload_model(request: Request, state: ServerState) -> Response:
    name = check_name(request.path_params["name"])
    await _json_body(request, state)
    await state.unload(name)
    return json_response({"name": name, "unloaded": True})


async def upload_model(request: Request, state: ServerState) -> Response:
    """Unpack the body as it arrives, in a worker thread (see ModelRepository.upload)."""
    name = check_name(request.path_params["name"])
    version = request.query_params.get("version")
    if version is not None:
        check_version(version)
    config = state.config
    body = BodyReader(request, config.max_upload_bytes, config.timeout_s)
    try:
        version = await anyio.to_thread.run_sync(
            state.repo.upload, name, body.read, version, config.upload_limits)
    except ArchiveTooLarge as err:
        raise PayloadTooLarge(str(err)) from None
    except ArchiveError:
        if body.size == 0:
            raise BadRequest("The upload is empty; send a bundle .tar.gz as the request "
                             "body.") from None
        raise
    return json_response({"name": name, "version": version}, status=201)


async def delete_model(request: Request, state: ServerState) -> Response:
    name = request.path_params["name"]
    version = request.path_params.get("version")
    await asyncio.to_thread(state.repo.delete, name, version)
    return json_response({"name": name, "version": version, "deleted": True})


# -- wiring -------------------------------------------------------------------------------


def _endpoint(state: ServerState, label: str, handler: Handler, access: str) -> Callable[
    [Request], Awaitable[Response]
]:
    """Wrap a handler: access check, error mapping, metrics."""

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        try:
            if access == "write":
                state.auth.check_write(request.headers.get("authorization"))
            elif access == "read":
                state.auth.check_read(request.headers.get("authorization"))
            response = await handler(request, state)
        except ServeError as err:
            response = error_response(err.status, str(err), err.headers)
        except ClientDisconnect:
            log.info("%s %s: the client disconnected before sending the whole body",
                     request.method, request.url.path)
            response = error_response(CLIENT_CLOSED, "The client closed the connection.")
        except MlaasError as err:  # FeatureError, BundleError: the client's input
            response = error_response(400, str(err))
        except Exception:  # logged; the server keeps serving
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            response = error_response(500, "Internal server error; see the server log.")
        model, version = request.scope.get(_LABEL, ("", ""))
        state.metrics.observe_request(model, version, label, response.status_code,
                                      time.perf_counter() - start)
        return response

    return endpoint


def _routes(state: ServerState) -> list[Route]:
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    repo = "/v2/repository/models/{name}"
    table: list[tuple[str, str, Handler, str, str]] = [
        ("/v2", "GET", server_metadata, "read", "server"),
        ("/v2/health/live", "GET", live, "open", "health"),
        ("/v2/health/ready", "GET", ready, "open", "health"),
        ("/metrics", "GET", metrics, "open", "metrics"),
        ("/v2/repository/index", "POST", repository_index, "read", "index"),
        (f"{repo}/load", "POST", load_model, "write", "load"),
        (f"{repo}/unload", "POST", unload_model, "write", "unload"),
        (f"{repo}/upload", "POST", upload_model, "write", "upload"),
        (repo, "DELETE", delete_model, "write", "delete"),
        (f"{repo}/versions/{{version}}", "DELETE", delete_model, "write", "delete"),
    ]
    for prefix in (model, versioned):
        table += [
            (prefix, "GET", model_metadata, "read", "metadata"),
            (f"{prefix}/ready", "GET", model_ready, "read", "ready"),
            (f"{prefix}/config", "GET", model_config, "read", "config"),
            (f"{prefix}/infer", "POST", infer, "read", "infer"),
            (f"{prefix}/events", "POST", score_events, "read", "events"),
        ]
    return [
        Route(path, _endpoint(state, label, handler, access), methods=[method])
        for path, method, handler, access, label in table
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (f"No endpoint {request.method} {request.url.path}. This server speaks the "
                   "Open Inference Protocol under /v2 (see GET /v2).")
        return error_response(NotFound.status, message)
    if exc.status_code == 405:
        return error_response(MethodNotAllowed.status,
                              f"{request.method} is not allowed on {request.url.path}.",
                              dict(exc.headers or {}))
    return error_response(exc.status_code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal server error; see the server log.")


def create_app(config: ServeConfig, token: str | None = None) -> Starlette:
    """The server application over ``config.models``.

    Models load in a worker thread once the app starts (the lifespan); ``/v2/health/ready``
    answers 503 until they are loaded.

    Parameters
    ----------
    config
        Server settings.
    token
        Bearer token for write endpoints; by default read from ``config.token_file`` or the
        ``MLAAS_SERVE_TOKEN`` environment variable.

    Raises
    ------
    ConfigError
        The repository is no longer a directory, or ``protect_reads`` has no token.
    """
    token = token if token is not None else read_token(config.token_file)
    config.check_start(token)  # the repository may have gone; protect_reads needs a token
    if config.grpc_port is not None:
        _check_grpc_installed()
    pool = PredictionPool(config.n_threads, config.max_queue_rows)
    metrics_obj = Metrics(
        queue_rows=lambda: pool.queued_rows,
        models_loaded=lambda: sum(len(e.versions) for e in state.repo.loaded().values()),
    )
    pool.observe_batch = metrics_obj.observe_batch
    state = ServerState(config, TokenAuth(token, config.protect_reads), pool, metrics_obj)
    state.repo = ModelRepository(config.models, state.make_runtime, metrics_obj.observe_load)
    app = Starlette(
        routes=_routes(state),
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=_lifespan(state),
    )
    app.state.server = state
    return app


def _check_grpc_installed() -> None:
    import importlib.util

    from mlaas_dask.errors import ConfigError

    missing = [name for name in ("grpc", "google.protobuf", "tritonclient")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--grpc-port needs {', '.join(missing)}, which is not installed: pip install "
            "'mlaas_dask[grpc]' (grpcio, protobuf and tritonclient[grpc]), or leave "
            "--grpc-port out to serve HTTP only.")


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def _lifespan(state: ServerState) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.tasks.append(asyncio.create_task(_load_models(state)))
        if state.config.poll_s > 0:
            state.tasks.append(asyncio.create_task(_poll(state)))
        if state.config.grpc_port is not None:
            from mlaas_dask.serve.grpc_service import start_grpc  # grpcio only when asked

            state.grpc = await start_grpc(state)
        try:
            yield
        finally:
            if state.grpc is not None:
                await state.grpc.stop(state.config.timeout_s)
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            state.pool.shutdown()
            state.metrics.close()

    return lifespan


async def _load_models(state: ServerState) -> None:
    started = time.perf_counter()
    try:
        failures = await asyncio.to_thread(state.repo.load_all)
    except Exception:  # the server still answers, with an empty repository
        log.exception("loading the repository %s failed", state.config.models)
        failures = []
    loaded = state.repo.loaded()
    log.info("loaded %d model(s), %d version(s) in %.1f s from %s", len(loaded),
             sum(len(e.versions) for e in loaded.values()), time.perf_counter() - started,
             state.config.models)
    for failure in failures:
        log.warning("%s", failure)
    # Move everything loaded so far (modules, models) out of the garbage collector's reach:
    # a full collection over it pauses the event loop for ~0.1 s, which is the p99 latency.
    gc.collect()
    gc.freeze()
    state.ready = True


async def _poll(state: ServerState) -> None:
    """Pick up changes made by other server processes on the same repository."""
    while True:
        await asyncio.sleep(state.config.poll_s)
        state.metrics.refresh()
        if not state.ready:
            continue
        try:
            if await asyncio.to_thread(state.repo.sync):
                log.info("reloaded the repository after a change by another process")
        except Exception:  # keep polling
            log.exception("repository sync failed")


def create_app_from_env() -> Starlette:
    """App factory for worker processes (``mlaas serve --workers N``)."""
    import os

    from mlaas_dask.serve.config import CONFIG_ENV

    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
