"""``mlaas serve``: HTTP predictions over a model repository (Open Inference Protocol)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# light (no Starlette, no uvicorn): every flag, default and help text comes from here
from mlaas_dask.serve.config import (
    CONFIG_ENV,
    GROUPS,
    RESERVED_FILES,
    SETTINGS,
    ServeConfig,
    Setting,
)

EPILOG = """\
The repository holds bundles as DIR/<name>/<version>/ (versions are 1, 2, ...; the newest
answers by default); a bundle folder DIR/<name>/ without versions is version 1.

Examples:
  mlaas serve --models repo/
  curl -s localhost:8080/v2/models/higgs
  curl -s localhost:8080/v2/models/higgs/events \\
       -d '{"events": [{"MET_pt": 41.2, "Jet_pt": [88.1, 45.0]}]}'
  MLAAS_SERVE_TOKEN=secret mlaas serve --models repo/    # enables upload/load/unload/delete
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve model bundles over HTTP (Open Inference Protocol + raw events)",
        description="Serve model bundles over HTTP: the Open Inference Protocol (KServe v2) "
                    "and raw events through each bundle's FeatureSpec.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sections: dict[str | None, Any] = {None: parser}
    for title, description in GROUPS.items():
        sections[title] = parser.add_argument_group(title, description)
    for name, setting in SETTINGS.items():
        _add_flag(sections[setting.group], name, setting)
    parser.set_defaults(run=run)


def _add_flag(parser: Any, name: str, setting: Setting) -> None:
    """The flag of one setting: its default and its help come from the setting."""
    options: dict[str, Any] = {"dest": name, "help": setting.help().replace("%", "%%")}
    if setting.kind is bool:
        options["action"] = "store_true" if not setting.default else \
            argparse.BooleanOptionalAction
    else:
        # paths as strings: ServeConfig refuses '' (which Path would make '.')
        kind = float if setting.scale != 1 else str if setting.kind is Path else setting.kind
        options.update(type=kind, metavar=setting.metavar)
    if setting.required:
        options["required"] = True
    else:
        options["default"] = setting.flag_default
    parser.add_argument(setting.flag, **options)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`~mlaas_dask.serve.config.ServeConfig` for parsed arguments (checked by
    it: a bad value is a :class:`~mlaas_dask.errors.ConfigError` naming the flag)."""
    values = {name: setting.from_flag(getattr(args, name))
              for name, setting in SETTINGS.items()}
    config = ServeConfig(**values)
    config.models = config.models.resolve()
    return config


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlaas_dask.serve.auth import read_token
    from mlaas_dask.serve.config import empty_repository_note
    from mlaas_dask.serve.connections import uvicorn_options

    config = config_from_args(args)
    token = read_token(config.token_file)
    config.check_start(token)
    note = empty_repository_note(config.models, token)
    if note:
        print(f"mlaas serve: note: {note}", file=sys.stderr)
    _raise_open_file_limit(config.max_connections)
    # SIGTERM: stop accepting, let the requests in flight finish (within --timeout), exit 0
    options: dict[str, Any] = {"host": config.host, "port": config.port,
                               "log_level": config.log_level,
                               "access_log": config.log_level == "debug",
                               "timeout_graceful_shutdown": config.timeout_s}
    if config.workers == 1:
        from mlaas_dask.serve.app import create_app

        uvicorn.run(create_app(config, token=token), **options, **uvicorn_options(config))
        return 0
    from mlaas_dask.serve.metrics import shared_metrics_dir

    os.environ[CONFIG_ENV] = config.to_json()
    with shared_metrics_dir():  # one /metrics view over the worker processes
        uvicorn.run("mlaas_dask.serve.app:create_app_from_env", factory=True,
                    workers=config.workers, **options,
                    **uvicorn_options(config, from_env=True))
    return 0


def _raise_open_file_limit(connections: int) -> None:
    """Raise the soft open-file limit towards the hard one so that ``connections`` fit
    with room to spare (ServeConfig has checked that the hard limit allows it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (wanted if hard == resource.RLIM_INFINITY else min(hard, wanted),
                            hard))
