"""``type: address``: an already running Dask scheduler (``dask scheduler`` plus workers
started by hand, by a site's Dask service, or on another machine)."""

from __future__ import annotations

from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterBackend, ClusterConfig, common_schema
from mlaas_dask.cluster.fields import Field, Validator, address_value, positive
from mlaas_dask.errors import ConfigError


class AddressBackend(ClusterBackend):
    """``type: address``: join a scheduler that someone else runs (left running)."""

    name = "address"
    status_command = None
    schema: ClassVar[dict[str, Field]] = {
        **common_schema(wait_timeout=60),
        "address": Field((str,), "the scheduler, e.g. tcp://10.0.0.5:8786", required=True,
                         check=address_value),
        "connect_timeout": Field((int, float), "seconds to wait for the scheduler to "
                                 "answer", default=20, check=positive),
    }
    example = """
type: address
address: tcp://127.0.0.1:8786   # from 'dask scheduler' (workers: 'dask worker ADDRESS')
connect_timeout: 20
wait: {workers: 1, timeout: 60}
"""

    def check(self, config: ClusterConfig, validator: Validator) -> None:
        """Nothing can be impossible here: the workers are someone else's."""

    def size(self, config: ClusterConfig, count: int) -> ClusterConfig:
        """Refused: the workers are started elsewhere."""
        raise ConfigError(f"Cluster {config.name!r} is an existing scheduler: its size is "
                          "set where its workers are started, not with ':N'.")

    def start(self, config: ClusterConfig, **options: Any) -> Any:
        """A Client of the running scheduler."""
        from distributed import Client

        address = config.options["address"]
        try:
            return Client(address, timeout=f"{config.options['connect_timeout']}s")
        except OSError as err:
            raise ConfigError(
                f"Cannot reach the Dask scheduler at {address} ({err}). Is it running? "
                "Start one with 'dask scheduler' and workers with 'dask worker ADDRESS', "
                "or use --cluster local."
            ) from None

    def wanted_workers(self, config: ClusterConfig) -> int:
        """One: a scheduler without workers computes nothing."""
        return 1

    def hint(self, config: ClusterConfig, cluster: Any) -> str:
        return ("Start workers with 'dask worker ADDRESS', or lower wait.workers in the "
                "cluster file.")
