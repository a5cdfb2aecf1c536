"""``mlaas cluster [NAME|PATH]``: list, check and try the clusters jobs can run on."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlaas_dask.cluster import ClusterConfig

EPILOG = """\
examples:
  mlaas cluster                        # the known clusters (clusters/*.yaml, $MLAAS_CLUSTERS)
  mlaas cluster slurm                  # validate clusters/slurm.yaml, show every setting
  mlaas cluster slurm --job-script     # the batch script dask-jobqueue would submit
  mlaas cluster local-gpu --start      # start it, show the workers and their tags, stop it
  mlaas cluster --example htcondor     # a valid htcondor cluster file to start from

Any computing command takes the same names: --cluster NAME, NAME:N (N workers or jobs),
a PATH to a YAML file, or a scheduler address tcp://host:port.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cluster", help="list, validate or try cluster files",
        description="Cluster files describe where Dask runs: local processes, GPU workers, "
                    "an existing scheduler, SLURM, HTCondor or PBS jobs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cluster", nargs="?", help="NAME, NAME:N, PATH or tcp://host:port")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--job-script", action="store_true",
                        help="print the batch job script (SLURM, HTCondor, PBS); submits "
                             "nothing")
    action.add_argument("--start", action="store_true",
                        help="start the cluster, list its workers, stop it")
    action.add_argument("--example", metavar="TYPE",
                        help="print a valid cluster file of TYPE (local, address, slurm, "
                             "htcondor, pbs, or any other registered backend)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the known clusters, or validate, show, start or script one."""
    from mlaas_dask.cluster import example, load_cluster
    from mlaas_dask.errors import ConfigError

    if args.example:
        print(example(args.example))
        return 0
    if not args.cluster:
        if args.job_script or args.start:
            raise ConfigError("Name the cluster, e.g. 'mlaas cluster slurm --job-script'.")
        _list()
        return 0
    config = load_cluster(args.cluster)
    if args.job_script:
        return _job_script(config)
    if args.start:
        return _start(config)
    _show(config)
    return 0


def _list() -> None:
    from mlaas_dask.cluster import available_clusters, load_cluster
    from mlaas_dask.errors import ConfigError

    for name, path in available_clusters().items():
        try:
            config = load_cluster(path or name)
            what = f"{config.type:<9} {config.options.get('description') or ''}"
        except ConfigError as err:
            what = f"invalid: {str(err).splitlines()[0]}"
        print(f"{name:<14} {what}  [{path or 'built-in'}]")


def _show(config: ClusterConfig) -> None:
    import yaml

    print(f"# {config.name} ({config.source or 'built-in'}): valid")
    shown = {k: v for k, v in config.options.items() if v is not None}
    print(yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).rstrip())


def _job_script(config: ClusterConfig) -> int:
    from mlaas_dask.errors import ConfigError

    script = config.backend.job_script(config)
    if script is None:
        raise ConfigError(f"Cluster {config.name!r} is of type {config.type}: no batch jobs, "
                          "so no job script. Try --start.")
    print(script)
    return 0


def _start(config: ClusterConfig) -> int:
    from mlaas_dask.cluster import describe, start, stop

    client = start(config)
    try:
        info = describe(client)
        print(f"Cluster {config.name!r}: {info['workers']} workers, {info['threads']} threads; "
              f"scheduler {info['scheduler']}; dashboard {info['dashboard']}")
        for worker in info["worker_list"]:
            tags = ", ".join(f"{k}={v:g}" for k, v in worker["resources"].items()) or "-"
            print(f"  {worker['name']:<24} {worker['address']:<28} threads "
                  f"{worker['threads']}  resources {tags}")
    finally:
        stop(client)
    return 0
