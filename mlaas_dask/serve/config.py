"""Server settings, shared by the CLI, the app factory and the worker processes."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        Largest bundle archive upload.
    timeout_s
        Time allowed to receive a body and to compute a prediction.
    threads
        Prediction threads (XGBoost releases the GIL); 0 means one per core.
    max_queue_rows
        Rows waiting for a prediction thread above which requests are refused (503).
    poll_s
        With several worker processes, how often each checks the repository for changes
        made through another process.
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

    def __post_init__(self) -> None:
        self.models = Path(self.models)
        if self.token_file is not None:
            self.token_file = Path(self.token_file)

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
