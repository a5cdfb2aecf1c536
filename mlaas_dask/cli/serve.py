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
                        help="largest bundle upload, compressed (413 above)")
    parser.add_argument("--max-unpacked-mb", type=float, default=512.0, metavar="MB",
                        help="most bytes an uploaded archive may unpack to, all files "
                             "together, checked while it streams in (default: 512; 413 at "
                             "the first file beyond)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds allowed to receive a body and to predict")
    limits = parser.add_argument_group(
        "connection limits", "What keeps idle, slow or too many clients from starving the "
        "server (per process).")
    limits.add_argument("--max-connections", type=int, default=1000, metavar="N",
                        help="open connections beyond which requests get 503 at once and the "
                             "longest-idle kept-alive connection is closed (default: 1000; "
                             "keep it well under the open-file limit, 'ulimit -n')")
    limits.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                        help="seconds a client has to send its request line and headers, "
                             "else 408 and the connection is closed (default: 10)")
    limits.add_argument("--keep-alive", type=float, default=30.0, metavar="S",
                        help="seconds an idle kept-alive connection stays open (default: 30)")
    limits.add_argument("--max-header-kb", type=float, default=64.0, metavar="KB",
                        help="largest request head, line and headers (431 above; default: 64)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201 - ServeConfig, imported lazily
    """The :class:`~mlaas_dask.serve.config.ServeConfig` for parsed arguments."""
    from mlaas_dask.serve.config import ServeConfig

    positive = {"--port": args.port, "--workers": args.workers,
                "--max-batch-size": args.max_batch_size,
                "--max-request-rows": args.max_request_rows,
                "--max-connections": args.max_connections}
    for flag, value in positive.items():
        if value < 1:
            raise MlaasError(f"{flag} must be at least 1, not {value}.")
    sizes = {"--timeout": args.timeout, "--max-body-mb": args.max_body_mb,
             "--max-upload-mb": args.max_upload_mb, "--max-unpacked-mb": args.max_unpacked_mb,
             "--header-timeout": args.header_timeout, "--keep-alive": args.keep_alive,
             "--max-header-kb": args.max_header_kb}
    for flag, value in sizes.items():
        if not value > 0:
            raise MlaasError(f"{flag} must be positive, not {value:g}.")
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
        max_upload_file_bytes=int(args.max_unpacked_mb * 1024 * 1024),
        max_upload_unpacked_bytes=int(args.max_unpacked_mb * 1024 * 1024),
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout,
        max_header_bytes=int(args.max_header_kb * 1024),
        keep_alive_s=args.keep_alive,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlaas_dask.serve.auth import read_token
    from mlaas_dask.serve.config import CONFIG_ENV
    from mlaas_dask.serve.connections import uvicorn_options

    config = config_from_args(args)
    token = read_token(config.token_file)  # fail early on an unreadable token file
    if args.protect_reads and token is None:
        raise MlaasError("--protect-reads needs a token: give --token-file or set "
                         "MLAAS_SERVE_TOKEN.")
    _raise_open_file_limit(config.max_connections)
    options = dict(host=args.host, port=args.port, log_level=args.log_level,
                   access_log=args.log_level == "debug")
    if args.workers == 1:
        from mlaas_dask.serve.app import create_app

        uvicorn.run(create_app(config, token=token), **options, **uvicorn_options(config))
    else:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run("mlaas_dask.serve.app:create_app_from_env", factory=True,
                    workers=args.workers, **options,
                    **uvicorn_options(config, from_env=True))
    return 0


def _raise_open_file_limit(connections: int) -> None:
    """Raise the soft open-file limit towards the hard one so that ``connections`` fit
    with room to spare (models, threads, logs); refuse a cap that cannot fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raise MlaasError(
            f"--max-connections {connections} does not fit the open-file limit of this "
            f"process ({soft}, 'ulimit -n'): give at most {max(1, soft - 256)}, or raise "
            "the limit."
        )
