"""Server settings, shared by the CLI, the app factory and the worker processes."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas_dask.archive import MAX_MEMBER_BYTES, MAX_MEMBERS, MAX_UNPACKED_BYTES, ArchiveLimits

#: environment variable holding the bearer token when no token file is given
TOKEN_ENV = "MLAAS_SERVE_TOKEN"
#: environment variable through which ``--workers N`` passes the settings to each process
CONFIG_ENV = "MLAAS_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """Settings of one server.

    Parameters
    ----------
    models
        The model repository: ``models/<name>/<version>/`` hold bundles.
    token_file
        File holding the bearer token for write endpoints; without it, the token comes from
        the ``MLAAS_SERVE_TOKEN`` environment variable; without either, write endpoints are
        disabled (403), never open.
    protect_reads
        Require the token on read endpoints too (health and metrics stay open).
    max_batch_size
        Rows merged into one prediction by the dynamic batcher.
    max_delay_ms
        How long the batcher may wait for more requests before predicting (0: predict as
        soon as a thread is free; requests that arrive meanwhile are merged).
    max_request_rows
        Largest number of rows (events) one request may hold (413 above).
    max_body_bytes
        Largest request body (413 above), uploads excepted.
    max_upload_bytes
        Largest bundle archive upload (compressed, as sent).
    max_upload_members, max_upload_file_bytes, max_upload_unpacked_bytes
        What an uploaded archive may hold: members, unpacked bytes of one file and of all
        files (413 at the first member over a limit, while the upload streams in).
    timeout_s
        Time allowed to receive a body and to compute a prediction.
    threads
        Prediction threads (XGBoost releases the GIL); 0 means one per core.
    max_queue_rows
        Rows waiting for a prediction thread above which requests are refused (503).
    poll_s
        With several worker processes, how often each checks the repository for changes
        made through another process.
    max_connections
        Open connections per process beyond which requests get 503 at once (and the
        connection idle the longest is closed to make room).
    header_timeout_s
        Time a client has to send its request head (line and headers) once it connects or
        starts the next request; then 408 and the connection is closed.
    max_header_bytes
        Largest request head (431 above).
    keep_alive_s
        How long an idle kept-alive connection stays open.
    """

    models: Path
    token_file: Path | None = None
    protect_reads: bool = False
    max_batch_size: int = 1024
    max_delay_ms: float = 0.0
    max_request_rows: int = 100_000
    max_body_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 256 * 1024 * 1024
    timeout_s: float = 30.0
    threads: int = 0
    max_queue_rows: int = 1_000_000
    poll_s: float = 1.0
    max_upload_members: int = MAX_MEMBERS
    max_upload_file_bytes: int = MAX_MEMBER_BYTES
    max_upload_unpacked_bytes: int = MAX_UNPACKED_BYTES
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    keep_alive_s: float = 30.0

    def __post_init__(self) -> None:
        self.models = Path(self.models)
        if self.token_file is not None:
            self.token_file = Path(self.token_file)

    @property
    def upload_limits(self) -> ArchiveLimits:
        """What an uploaded archive may hold."""
        return ArchiveLimits(self.max_upload_members, self.max_upload_file_bytes,
                             self.max_upload_unpacked_bytes)

    @property
    def n_threads(self) -> int:
        """Prediction threads: ``threads``, or one per core."""
        return self.threads or max(1, len(os.sched_getaffinity(0)))

    def to_json(self) -> str:
        """JSON form, for passing the settings to worker processes."""
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)
