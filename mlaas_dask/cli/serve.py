"""``mlaas serve``: HTTP predictions over a model repository (Open Inference Protocol)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mlaas_dask.errors import MlaasError

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


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve",
        help="serve model bundles over HTTP (Open Inference Protocol + raw events)",
        description="Serve model bundles over HTTP: the Open Inference Protocol (KServe v2) "
                    "and raw events through each bundle's FeatureSpec.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", required=True, type=Path, metavar="DIR",
                        help="model repository: DIR/<name>/<version>/ bundles")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="server processes (default: 1); they share the repository")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="prediction threads per process (default: one per core)")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="bearer token for upload/load/unload/delete (default: the "
                             "MLAAS_SERVE_TOKEN variable; without either they are disabled)")
    parser.add_argument("--protect-reads", action="store_true",
                        help="require the token on inference and metadata endpoints too")
    parser.add_argument("--max-batch-size", type=int, default=1024, metavar="ROWS",
                        help="rows merged into one prediction by dynamic batching")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, metavar="MS",
                        help="time a batch waits for more requests (default: 0, merge only "
                             "what arrives while the threads are busy)")
    parser.add_argument("--max-request-rows", type=int, default=100_000, metavar="ROWS",
                        help="largest number of events per request (413 above)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB",
                        help="largest request body (413 above)")
    parser.add_argument("--max-upload-mb", type=float, default=256.0, metavar="MB",
                        help="largest bundle upload")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds allowed to receive a body and to predict")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201 - ServeConfig, imported lazily
    """The :class:`~mlaas_dask.serve.config.ServeConfig` for parsed arguments."""
    from mlaas_dask.serve.config import ServeConfig

    positive = {"--port": args.port, "--workers": args.workers,
                "--max-batch-size": args.max_batch_size,
                "--max-request-rows": args.max_request_rows}
    for flag, value in positive.items():
        if value < 1:
            raise MlaasError(f"{flag} must be at least 1, not {value}.")
    if args.timeout <= 0 or args.max_body_mb <= 0 or args.max_upload_mb <= 0:
        raise MlaasError("--timeout, --max-body-mb and --max-upload-mb must be positive.")
    if not args.models.is_dir():
        raise MlaasError(
            f"Model repository {args.models} is not a directory. Create it and put bundles "
            "in <name>/<version>/ folders, e.g. 'mlaas train job.yaml --out "
            f"{args.models}/mymodel/1'."
        )
    return ServeConfig(
        models=args.models.resolve(),
        token_file=args.token_file,
        protect_reads=args.protect_reads,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        max_request_rows=args.max_request_rows,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        timeout_s=args.timeout,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlaas_dask.serve.auth import read_token
    from mlaas_dask.serve.config import CONFIG_ENV

    config = config_from_args(args)
    token = read_token(config.token_file)  # fail early on an unreadable token file
    if args.protect_reads and token is None:
        raise MlaasError("--protect-reads needs a token: give --token-file or set "
                         "MLAAS_SERVE_TOKEN.")
    options = dict(host=args.host, port=args.port, log_level=args.log_level,
                   timeout_keep_alive=30, access_log=args.log_level == "debug")
    if args.workers == 1:
        from mlaas_dask.serve.app import create_app

        uvicorn.run(create_app(config, token=token), **options)
    else:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run("mlaas_dask.serve.app:create_app_from_env", factory=True,
                    workers=args.workers, **options)
    return 0
