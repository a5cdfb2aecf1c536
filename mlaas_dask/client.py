"""A small Python client for ``mlaas serve``: raw events, OIP inference, model management.

Examples
--------
>>> from mlaas_dask.client import Client
>>> with Client("http://127.0.0.1:8080") as client:                    # doctest: +SKIP
...     client.score_events("higgs", [{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0]}])
array([0.73], dtype=float32)

Standard Open Inference Protocol clients (``tritonclient.http``, KServe) work against the
same server; this one adds the event endpoint and bundle uploads.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas_dask.errors import MlaasError
from mlaas_dask.serve import protocol


class ServerError(MlaasError):
    """The server answered with an error.

    Attributes
    ----------
    status
        The HTTP status.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """Client of an ``mlaas serve`` server.

    Parameters
    ----------
    url
        Base URL, e.g. ``http://127.0.0.1:8080``.
    token
        Bearer token for model management (and for reads, if the server protects them).
    timeout
        Seconds per request.
    http
        An ``httpx.Client`` to use instead of a new one (e.g. Starlette's TestClient).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        timeout: float = 60.0,
        http: Any = None,
    ) -> None:
        import httpx

        self._owns = http is None
        self.http = http if http is not None else httpx.Client(base_url=url, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        if self._owns:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def _request(self, method: str, path: str, content: bytes | None = None,
                 headers: Mapping[str, str] | None = None,
                 params: Mapping[str, str] | None = None) -> Any:
        response = self.http.request(method, path, content=content, params=params,
                                     headers={**self.headers, **(headers or {})})
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ServerError(response.status_code, message)
        return response

    def _json(self, method: str, path: str, data: Any = None, **kwargs: Any) -> Any:
        content = None if data is None else protocol.dumps(data)
        headers = {"content-type": "application/json"} if content is not None else None
        return protocol.loads(self._request(method, path, content, headers, **kwargs).content,
                              "response")

    @staticmethod
    def _model_path(model: str, version: str | int | None) -> str:
        return f"/v2/models/{model}" + ("" if version is None else f"/versions/{version}")

    # -- health and metadata --------------------------------------------------------------

    def live(self) -> bool:
        """Whether the server process answers."""
        return self.http.get("/v2/health/live").status_code == 200

    def ready(self) -> bool:
        """Whether the server has loaded its models."""
        return self.http.get("/v2/health/ready").status_code == 200

    def metadata(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """Model metadata: inputs, outputs, feature names, branches, classes, metrics."""
        return self._json("GET", self._model_path(model, version))

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model version in the repository with its state."""
        return self._json("POST", "/v2/repository/index", {"ready": ready_only})

    # -- predictions ----------------------------------------------------------------------

    def score_events(
        self, model: str, events: Any, version: str | int | None = None
    ) -> np.ndarray:
        """Scores of raw events, through the model's own FeatureSpec on the server.

        Parameters
        ----------
        events
            A list of per-event dicts (``{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0]}``), a
            mapping of branch name -> per-event values (numpy, awkward or lists), or an
            awkward record array as read by uproot.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` for a binary model, ``(n, classes)`` otherwise.
        """
        payload = _events_payload(events)
        result = self._json("POST", self._model_path(model, version) + "/events", payload)
        return np.asarray(result["scores"], dtype=np.float32)

    def infer(
        self, model: str, matrix: np.ndarray, version: str | int | None = None,
        binary: bool = True,
    ) -> dict[str, np.ndarray]:
        """Open Inference Protocol inference on a feature matrix ``(n, F)``.

        Returns output name -> scores. ``binary`` uses the binary tensor extension.
        """
        body, headers = protocol.encode_infer_request(np.asarray(matrix), binary=binary)
        response = self._request("POST", self._model_path(model, version) + "/infer", body,
                                 headers)
        return protocol.decode_infer_response(
            response.content, response.headers.get(protocol.HEADER_LENGTH)
        )

    # -- model management -----------------------------------------------------------------

    def upload(
        self, model: str, bundle: str | os.PathLike[str] | bytes, version: int | None = None
    ) -> str:
        """Upload a bundle (directory, ``.tar.gz`` file, or its bytes) as a new version.

        Returns the version the server gave it.
        """
        data = _archive_bytes(bundle)
        params = None if version is None else {"version": str(version)}
        result = self._json_raw("POST", f"/v2/repository/models/{model}/upload", data, params)
        return str(result["version"])

    def _json_raw(self, method: str, path: str, data: bytes,
                  params: Mapping[str, str] | None) -> Any:
        response = self._request(method, path, data, {"content-type": "application/gzip"},
                                 params=params)
        return protocol.loads(response.content, "response")

    def load(self, model: str) -> dict[str, Any]:
        """(Re)load a model from the repository; new versions are swapped in atomically."""
        return self._json("POST", f"/v2/repository/models/{model}/load", {})

    def unload(self, model: str) -> None:
        """Stop serving a model (it stays in the repository)."""
        self._json("POST", f"/v2/repository/models/{model}/unload", {})

    def delete(self, model: str, version: str | int | None = None) -> None:
        """Delete a model version (or the whole model) from the server and its disk."""
        path = f"/v2/repository/models/{model}"
        self._json("DELETE", path if version is None else f"{path}/versions/{version}")


def _events_payload(events: Any) -> dict[str, Any]:
    if isinstance(events, Sequence) and not isinstance(events, (str, bytes)):
        return {"events": list(events)}
    fields = getattr(events, "fields", None)
    if fields is not None:  # an awkward record array
        return {"columns": {name: _column(events[name]) for name in fields}}
    if isinstance(events, Mapping):
        return {"columns": {name: _column(values) for name, values in events.items()}}
    raise MlaasError(
        "events must be a list of per-event dicts, a mapping of branch -> values, or an "
        f"awkward record array, not {type(events).__name__}."
    )


def _column(values: Any) -> Any:
    if isinstance(values, np.ndarray):
        return values
    if type(values).__module__.startswith("awkward"):
        import awkward as ak

        try:
            return ak.to_numpy(values)
        except (ValueError, TypeError):
            return ak.to_list(values)
    return list(values)


def _archive_bytes(bundle: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(bundle, bytes):
        return bundle
    path = Path(bundle)
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise MlaasError(f"Bundle {path} is neither a directory nor a .tar.gz file.")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for item in sorted(path.iterdir()):
            if item.is_file() and not item.is_symlink():
                tar.add(item, arcname=f"{path.name}/{item.name}")
    return buffer.getvalue()
