"""ServeConfig checks itself: the same message from Python, from ``mlaas serve`` flags and
from the environment of ``--workers N``; its defaults are the CLI's and ``--help`` shows
them. No server is started."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas_dask.cli import build_parser, main
from mlaas_dask.cli.serve import config_from_args
from mlaas_dask.errors import ConfigError
from mlaas_dask.serve import ServeConfig
from mlaas_dask.serve.config import CONFIG_ENV, REQUIRED, SETTINGS, TOKEN_ENV

MB = 1024 * 1024
ADDRESS = ("must be an address to listen on, such as 127.0.0.1 (this machine only) or 0.0.0.0 "
           "(every interface)")
LEVELS = "must be one of critical, error, warning, info, debug"

# setting, its flag, a bad value in Python, the same value as the flag takes it, the problem
BAD = [
    ("max_batch_size", "--max-batch-size", 0, "0", "must be at least 1, not 0."),
    ("max_delay_ms", "--max-delay-ms", -1.0, "-1", "must be 0 or more, not -1."),
    ("max_request_rows", "--max-request-rows", 0, "0", "must be at least 1, not 0."),
    ("max_body_bytes", "--max-body-mb", 0, "0", "must be at least 1, not 0."),
    ("max_upload_bytes", "--max-upload-mb", -MB, "-1", "must be at least 1, not -1048576."),
    ("timeout_s", "--timeout", 0.0, "0", "must be above 0, not 0."),
    ("timeout_s", "--timeout", math.inf, "inf", "must be a finite number, not inf (float)."),
    ("threads", "--threads", -1, "-1", "must be 0 or more, not -1."),
    ("max_queue_rows", "--max-queue-rows", 0, "0", "must be at least 1, not 0."),
    ("poll_s", "--poll", -0.5, "-0.5", "must be 0 or more, not -0.5."),
    ("max_upload_members", "--max-upload-members", 0, "0", "must be at least 1, not 0."),
    ("max_upload_file_bytes", "--max-upload-file-mb", 0, "0", "must be at least 1, not 0."),
    ("max_upload_unpacked_bytes", "--max-unpacked-mb", 0, "0", "must be at least 1, not 0."),
    ("max_connections", "--max-connections", 0, "0", "must be at least 1, not 0."),
    ("header_timeout_s", "--header-timeout", -1.0, "-1", "must be above 0, not -1."),
    # 0.0001 KB is 0.1 bytes: rounded to 0
    ("max_header_bytes", "--max-header-kb", 0, "0.0001", "must be at least 1, not 0."),
    ("keep_alive_s", "--keep-alive", math.nan, "nan", "must be a finite number, not nan (float)."),
    ("host", "--host", "", "", f"{ADDRESS}, not ''."),
    ("host", "--host", "0.0.0.0 x", "0.0.0.0 x", f"{ADDRESS}, not '0.0.0.0 x'."),
    ("port", "--port", 65536, "65536", "must be from 0 to 65535 (0: any free port), not 65536."),
    ("port", "--port", -1, "-1", "must be from 0 to 65535 (0: any free port), not -1."),
    ("workers", "--workers", 0, "0", "must be at least 1, not 0."),
    ("log_level", "--log-level", "loud", "loud", f"{LEVELS}, not 'loud'."),
    ("log_level", "--log-level", "INFO", "INFO", f"{LEVELS}, not 'INFO'."),
]


def _python_error(**settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        ServeConfig(**settings)
    return info.value


def _cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What ``mlaas serve ARGS`` prints, as the console script runs it: exit status 2,
    nothing on stdout."""
    assert main(["serve", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def _env_error(monkeypatch: pytest.MonkeyPatch, models: Path, name: str, value: Any) -> str:
    """The error of a worker process of ``--workers N`` given ``name=value`` in its
    environment (the app factory uvicorn calls there)."""
    from mlaas_dask.serve.app import create_app_from_env

    data = json.loads(ServeConfig(models=models).to_json())
    monkeypatch.setenv(CONFIG_ENV, json.dumps({**data, name: value}))
    with pytest.raises(ConfigError) as info:
        create_app_from_env()
    return str(info.value)


@pytest.mark.parametrize("name, flag, value, flag_value, problem", BAD,
                         ids=[f"{case[1]}={case[3]}" for case in BAD])
def test_bad_value_same_message_from_python_cli_and_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, flag: str, value: Any, flag_value: str, problem: str):
    err = _python_error(models=tmp_path, **{name: value})
    message = str(err)
    assert message == f"Server setting {name} ({flag}): {problem}"
    assert err.key == name and "\n" not in message
    assert _cli_error(capsys, "--models", str(tmp_path), flag, flag_value) == \
        f"mlaas serve: error: {message}\n"
    assert _env_error(monkeypatch, tmp_path, name, value) == message


def _bad_paths(tmp_path: Path) -> dict[str, tuple[str, Path | str, str]]:
    """Case -> (setting, path, what the message says about it)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    missing = tmp_path / "missing"
    create = (f"{missing} is not a directory: it does not exist. Create it (mkdir -p "
              f"{missing}) and put bundles in <name>/<version>/ folders, e.g. 'mlaas train "
              f"job.yaml --out {missing}/mymodel/1', or upload them once the server runs.")
    unreadable = (f"Cannot read the token file {missing}: No such file or directory. Or leave "
                  f"it out and set {TOKEN_ENV}.")
    return {
        "models-missing": ("models", missing, create),
        "models-a-file": ("models", a_file, f"{a_file} is not a directory: it is a file."),
        "models-empty": ("models", "", "must be a path, not '' (str)."),
        "token-missing": ("token_file", missing, unreadable),
        "token-a-folder": ("token_file", tmp_path,
                           f"Cannot read the token file {tmp_path}: Is a directory."),
        "token-empty": ("token_file", empty,
                        f"The token file {empty} is empty; put the token in it."),
    }


@pytest.mark.parametrize("case", ["models-missing", "models-a-file", "models-empty",
                                  "token-missing", "token-a-folder", "token-empty"])
def test_repository_and_token_file_same_message_from_python_and_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str):
    name, path, problem = _bad_paths(tmp_path)[case]
    settings: dict[str, Any] = {"models": tmp_path, name: path}
    message = str(_python_error(**settings))
    flag = {"models": "--models", "token_file": "--token-file"}[name]
    assert message.startswith(f"Server setting {name} ({flag}): ")
    assert problem in message and "\n" not in message
    args = ["--models", str(settings["models"]), "--token-file", str(settings.get(
        "token_file", ""))] if name == "token_file" else ["--models", str(path)]
    assert _cli_error(capsys, *args) == f"mlaas serve: error: {message}\n"


def test_file_limit_above_the_total_is_refused_the_same_way(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    message = str(_python_error(models=tmp_path, max_upload_file_bytes=2 * MB,
                                max_upload_unpacked_bytes=MB))
    assert message == (
        "Server setting max_upload_file_bytes (--max-upload-file-mb): must be at most "
        "max_upload_unpacked_bytes (--max-unpacked-mb, 1048576), not 2097152: one file "
        "cannot unpack to more than all files together.")
    assert _cli_error(capsys, "--models", str(tmp_path), "--max-upload-file-mb", "2",
                      "--max-unpacked-mb", "1") == f"mlaas serve: error: {message}\n"


def test_file_limit_follows_the_total_unless_given(tmp_path: Path):
    limits = ServeConfig(models=tmp_path, max_upload_unpacked_bytes=MB).upload_limits
    assert (limits.member_bytes, limits.unpacked_bytes) == (MB, MB)
    limits = ServeConfig(models=tmp_path, max_upload_file_bytes=1000,
                         max_upload_unpacked_bytes=MB).upload_limits
    assert (limits.member_bytes, limits.unpacked_bytes) == (1000, MB)
    equal = ServeConfig(models=tmp_path, max_upload_file_bytes=MB, max_upload_unpacked_bytes=MB)
    assert equal.upload_limits.member_bytes == MB


def test_max_connections_must_fit_the_open_file_limit(tmp_path: Path):
    """In a process whose hard open-file limit is 512 (lowered there, for good): 256
    connections fit (and are the default there), 257 do not, from Python and from the CLI."""
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))\n"
        "from mlaas_dask.cli import main\n"
        "from mlaas_dask.errors import ConfigError\n"
        "from mlaas_dask.serve import ServeConfig\n"
        "assert ServeConfig(models=sys.argv[1]).max_connections == 256  # default fits\n"
        "ServeConfig(models=sys.argv[1], max_connections=256)\n"
        "try:\n"
        "    ServeConfig(models=sys.argv[1], max_connections=257)\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
        "sys.exit(main(['serve', '--models', sys.argv[1], '--max-connections', '257']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                            capture_output=True, text=True, timeout=120, check=False)
    message = result.stdout.strip()
    assert message == (
        "Server setting max_connections (--max-connections): must be from 1 to 256, not 257: "
        "each connection is an open file, and this process may open 512 ('ulimit -Hn'), 256 "
        "of them kept for models, threads and logs. Give fewer, or raise the limit.")
    assert result.returncode == 2 and result.stderr == f"mlaas serve: error: {message}\n"


@pytest.mark.parametrize("name, value, problem", [
    ("max_batch_size", "big", "must be a whole number, not 'big' (str)."),
    ("max_batch_size", True, "must be a whole number, not True (bool)."),
    ("max_batch_size", 2.0, "must be a whole number, not 2.0 (float)."),
    ("timeout_s", "30", "must be a finite number, not '30' (str)."),
    ("protect_reads", "yes", "must be True or False, not 'yes' (str)."),
    ("models", 3, "must be a path, not 3 (int)."),
    ("token_file", 3, "must be a path or None, not 3 (int)."),
    ("host", None, "must be a string, not None (NoneType)."),
])
def test_wrong_types_from_python(tmp_path: Path, name: str, value: Any, problem: str):
    settings: dict[str, Any] = {"models": tmp_path, name: value}
    err = _python_error(**settings)
    assert str(err) == f"Server setting {name} ({SETTINGS[name].flag}): {problem}"
    assert err.key == name


def test_values_are_converted_to_the_setting_types(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("t\n")
    given: dict[str, Any] = {"models": str(tmp_path), "token_file": str(token),
                             "max_batch_size": np.int64(8), "timeout_s": 5,
                             "max_delay_ms": np.float32(2)}
    config = ServeConfig(**given)
    assert config.models == tmp_path and isinstance(config.models, Path)
    assert config.token_file == token and isinstance(config.token_file, Path)
    assert type(config.max_batch_size) is int and config.max_batch_size == 8
    assert type(config.timeout_s) is float and config.timeout_s == 5.0
    assert type(config.max_delay_ms) is float and config.max_delay_ms == 2.0


def test_json_round_trip(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("t\n")
    config = ServeConfig(models=tmp_path, token_file=token, max_upload_file_bytes=1000,
                         max_delay_ms=2.5, port=0, log_level="debug")
    assert ServeConfig.from_json(config.to_json()) == config


def test_protect_reads_needs_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch):
    from mlaas_dask.serve import create_app

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = ServeConfig(models=tmp_path, protect_reads=True)  # create_app may get a token
    with pytest.raises(ConfigError) as info:
        create_app(config)
    message = str(info.value)
    assert message == ("Server setting protect_reads (--protect-reads): needs a token: give "
                       f"token_file (--token-file) or set {TOKEN_ENV}.")
    assert _cli_error(capsys, "--models", str(tmp_path), "--protect-reads") == \
        f"mlaas serve: error: {message}\n"
    app = create_app(config, token="t")
    assert app.state.server.auth.protect_reads
    app.state.server.pool.shutdown()


def test_cli_defaults_are_the_dataclass_defaults(tmp_path: Path):
    args = build_parser().parse_args(["serve", "--models", str(tmp_path)])
    assert config_from_args(args) == ServeConfig(models=tmp_path.resolve())
    defaults = {field.name: field.default for field in dataclasses.fields(ServeConfig)}
    assert defaults["models"] is dataclasses.MISSING and set(SETTINGS) == set(defaults)
    assert ServeConfig.defaults() == {**defaults, "models": REQUIRED}
    for name, setting in SETTINGS.items():
        if name != "models":
            assert setting.from_flag(getattr(args, name)) == defaults[name], name
    # the flags' own units
    assert (args.max_body_bytes, args.max_header_bytes, args.port, args.max_connections,
            args.log_level) == (64.0, 64.0, 8080, 1000, "info")
    source = Path(sys.modules["mlaas_dask.cli.serve"].__file__ or "").read_text()
    assert not re.search(r"\bdefault\s*=", source), "a default written in cli/serve.py"


def _help_entries(text: str) -> dict[str, str]:
    """``mlaas serve --help`` as flag -> its help, wrapped lines joined."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        start = re.match(r"  (--[a-z-]+)", line)
        if start:
            flag = start.group(1)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += line
        else:
            flag = None
    return {flag: " ".join(help_text.split()) for flag, help_text in entries.items()}


def test_help_shows_the_dataclass_defaults(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    for field in dataclasses.fields(ServeConfig):
        setting = SETTINGS[field.name]
        text = entries[setting.flag]
        if field.default is dataclasses.MISSING:
            assert "default" not in text
            continue
        default = field.default
        if setting.scale != 1 and default is not None:
            default = default / setting.scale
        shown = ("off" if default is False else "" if default is None
                 else f"{default:g}" if isinstance(default, float) else str(default))
        assert f"default: {shown}" in text, (setting.flag, text)
    assert entries["--max-body-mb"].endswith("(413 above; default: 64)")
    assert entries["--max-connections"].endswith("(default: 1000)")
    assert entries["--threads"].endswith("default: 0, one per core)")
    assert entries["--host"].endswith("(default: 127.0.0.1, this machine only)")
    assert entries["--max-upload-file-mb"].endswith("(default: the limit on all files "
                                                    "together)")
    assert entries["--protect-reads"].endswith("default: off)")


def test_every_setting_is_declared_and_documented():
    flags = [setting.flag for setting in SETTINGS.values()]
    assert len(set(flags)) == len(flags)
    doc = ServeConfig.__doc__ or ""
    for name, setting in SETTINGS.items():
        assert setting.doc and setting.flag.startswith("--")
        assert f"\n    {name}\n" in doc and f"``{setting.flag}" in doc


def test_a_bundle_given_as_the_repository_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    """Found as a new user: --models pointed at a bundle answered ready with 0 models."""
    bundle = tmp_path / "higgs"
    bundle.mkdir()
    (bundle / "metadata.json").write_text("{}")
    message = str(_python_error(models=bundle))
    assert f"{bundle} is a model bundle, not a repository of bundles" in message
    assert f"--models {tmp_path} serves it as model 'higgs'" in message
    assert _cli_error(capsys, "--models", str(bundle)) == f"mlaas serve: error: {message}\n"


def test_an_empty_repository_is_said_at_start(tmp_path: Path) -> None:
    from mlaas_dask.serve.config import empty_repository_note

    (tmp_path / ".staging").mkdir()
    note = empty_repository_note(tmp_path, token=None)
    assert note is not None and "holds no model" in note and "restart it" in note
    assert "upload one" in str(empty_repository_note(tmp_path, token="secret"))
    (tmp_path / "higgs").mkdir()
    assert empty_repository_note(tmp_path, token=None) is None
