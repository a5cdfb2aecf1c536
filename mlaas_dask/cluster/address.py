"""``type: address``: an already running Dask scheduler (``dask scheduler`` plus workers
started by hand, by a site's Dask service, or on another machine)."""

from __future__ import annotations

from typing import Any

from mlaas_dask.cluster.config import ClusterConfig, address_value, positive
from mlaas_dask.config import Field, Validator
from mlaas_dask.errors import ConfigError

SCHEMA = {
    "address": Field((str,), "the scheduler, e.g. tcp://10.0.0.5:8786", required=True,
                     check=address_value),
    "connect_timeout": Field((int, float), "seconds to wait for the scheduler to answer",
                             default=20, check=positive),
}

EXAMPLE = """
type: address
address: tcp://127.0.0.1:8786   # from 'dask scheduler' (workers: 'dask worker ADDRESS')
connect_timeout: 20
wait: {workers: 1, timeout: 60}
"""


def check(config: ClusterConfig, validator: Validator) -> None:
    """Nothing can be impossible here: the workers are someone else's."""


def with_size(config: ClusterConfig, count: int) -> ClusterConfig:
    raise ConfigError(f"Cluster {config.name!r} is an existing scheduler: its size is set "
                      "where its workers are started, not with ':N'.")


def connect(config: ClusterConfig) -> Any:
    """A Client of the running scheduler."""
    from distributed import Client

    address = config.options["address"]
    try:
        return Client(address, timeout=f"{config.options['connect_timeout']}s")
    except OSError as err:
        raise ConfigError(
            f"Cannot reach the Dask scheduler at {address} ({err}). Is it running? Start "
            "one with 'dask scheduler' and workers with 'dask worker ADDRESS', or use "
            "--cluster local."
        ) from None


def wanted_workers(config: ClusterConfig) -> int:
    return 1
