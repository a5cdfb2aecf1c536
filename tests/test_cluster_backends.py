"""The cluster-backend protocol: every registered backend declares all of it; a backend
registered here (a real LocalCluster behind a new type) is found by name, validated,
sized, started and listed by ``mlaas cluster`` like the built-in ones; cluster configs made
in Python get the checks and defaults of cluster files; the modules of mlaas_dask.cluster
import each other without a circle, and nothing outside the backends asks a cluster's
type."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from mlaas_dask.cli import main
from mlaas_dask.cluster import (
    ClusterBackend,
    ClusterConfig,
    backend_names,
    backends,
    cluster_from_text,
    get_backend,
    load_cluster,
    register_backend,
    unregister_backend,
)
from mlaas_dask.cluster.backend import COMMON_KEYS, common_schema
from mlaas_dask.cluster.fields import Field, Validator, positive
from mlaas_dask.errors import ConfigError

from conftest import REPO

BUILT_IN = ("local", "address", "slurm", "htcondor", "pbs")
PACKAGE = REPO / "mlaas_dask"


def _fields(schema: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, spec in schema.items():
        yield prefix + key, spec
        if isinstance(spec, Field) and spec.schema is not None:
            yield from _fields(spec.schema, f"{prefix}{key}.")


# ------------------------------------------------------------------------ the protocol


def test_the_built_in_backends_are_registered_in_order() -> None:
    assert backend_names()[:len(BUILT_IN)] == BUILT_IN
    assert all(backends()[name].name == name for name in backend_names())


@pytest.mark.parametrize("name", backend_names())
def test_every_registered_backend_implements_the_protocol(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, ClusterBackend) and backend.name == name
    for method in ("check", "size", "start"):
        assert getattr(type(backend), method) is not getattr(ClusterBackend, method), method
    # the schema: every key documented, the common keys first
    assert tuple(backend.schema)[:len(COMMON_KEYS)] == COMMON_KEYS
    for key, spec in _fields(backend.schema):
        assert isinstance(spec, Field) and spec.doc and spec.types, key
    defaults = backend.defaults()
    assert list(defaults) == list(backend.schema)
    assert all(defaults[k] == f.default for k, f in backend.schema.items() if not f.schema)
    # the example is a valid file of this type, and every key it leaves out is defaulted
    config = cluster_from_text(backend.example, f"{name}-example.yaml")
    assert config.type == name and config.backend is backend
    assert list(config.options) == list(backend.schema)
    given = yaml.safe_load(backend.example)
    for key, spec in backend.schema.items():
        if key not in given:
            assert config.options[key] == spec.default, key
    assert backend.status_command is None or backend.status_command.strip()


@pytest.mark.parametrize("name", backend_names())
def test_size_is_n_workers_or_n_jobs_or_refused(name: str) -> None:
    backend = get_backend(name)
    config = cluster_from_text(backend.example, "c")
    if name == "address":
        with pytest.raises(ConfigError, match="its size is set where its workers are started"):
            config.with_size(3)
        return
    sized = config.with_size(3)
    assert (sized.type, sized.name) == (name, "c:3")
    assert sized.options["adapt"] is None
    counted = {key: sized.options.get(key) for key in ("workers", "jobs")}
    assert 3 in counted.values(), counted


def test_the_status_command_of_each_batch_system() -> None:
    programs = {name: (get_backend(name).status_command or "").split()[:1]
                for name in BUILT_IN}
    assert programs == {"local": [], "address": [], "slurm": ["squeue"],
                        "htcondor": ["condor_q"], "pbs": ["qstat"]}


def test_only_batch_backends_have_a_job_script() -> None:
    assert get_backend("local").job_script(load_cluster("local")) is None
    assert get_backend("address").job_script(load_cluster("tcp://10.0.0.5:8786")) is None
    script = get_backend("slurm").job_script(load_cluster("slurm:1"))
    assert script is not None and "#SBATCH -J mlaas-worker" in script


def test_wait_timeouts_are_the_schemas_defaults() -> None:
    timeouts = {name: load_cluster(config).block("wait")["timeout"] for name, config in {
        "local": {"type": "local"}, "address": "tcp://10.0.0.5:8786",
        "slurm": {"type": "slurm", "cores": 1, "memory": "1GB"}}.items()}
    assert timeouts == {"local": 60, "address": 60, "slurm": 300}
    given = load_cluster({"type": "local", "wait": {"workers": 1}})
    assert given.block("wait") == {"workers": 1, "timeout": 60}


# ------------------------------------------------------------------------ a new backend


class ToyBackend(ClusterBackend):
    """A kind of cluster made in this test: a real LocalCluster of at most four workers."""

    name = "toy"
    status_command = None
    schema: ClassVar[dict[str, Field]] = {
        **common_schema(wait_timeout=30),
        "workers": Field((int,), "worker processes", default=1, check=positive),
        "label": Field((str,), "a word for the log", default="toy"),
    }
    example = "type: toy\nworkers: 2\n"

    def check(self, config: ClusterConfig, validator: Validator) -> None:
        if config.options["workers"] > 4:
            raise validator.error(("workers",), "a toy runs at most 4 workers.")

    def size(self, config: ClusterConfig, count: int) -> ClusterConfig:
        return dataclasses.replace(config, name=f"{config.name}:{count}",
                                   options={**config.options, "workers": count})

    def start(self, config: ClusterConfig, **options: Any) -> Any:
        from distributed import LocalCluster

        return LocalCluster(n_workers=config.options["workers"], threads_per_worker=1,
                            processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")

    def wanted_workers(self, config: ClusterConfig) -> int:
        return int(config.options["workers"])


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """ToyBackend registered, and a cluster file ``toy.yaml`` on the search path."""
    register_backend(ToyBackend())
    path = tmp_path / "toy.yaml"
    path.write_text("# a toy cluster\ntype: toy\ndescription: a toy cluster\nworkers: 2\n")
    monkeypatch.setenv("MLAAS_CLUSTERS", str(tmp_path))
    try:
        yield path
    finally:
        unregister_backend("toy")


def test_a_new_backend_is_found_by_name_and_sized(toy: Path) -> None:
    assert "toy" in backend_names()
    config = load_cluster("toy")
    assert (config.type, config.source, config.options["workers"]) == ("toy", str(toy), 2)
    assert config.options["label"] == "toy"  # the schema's default
    assert config.block("wait")["timeout"] == 30
    assert load_cluster("toy:3").options["workers"] == 3
    assert ClusterConfig("toy", options={"workers": 4}).options["label"] == "toy"


def test_a_new_backend_validates_its_files(toy: Path) -> None:
    def error(text: str) -> str:
        with pytest.raises(ConfigError) as caught:
            cluster_from_text(text, "t.yaml")
        return str(caught.value)

    message = error("type: toy\nworkers: 9\n")
    assert message.startswith("t.yaml, line 2: a toy runs at most 4 workers.")
    assert "A valid toy cluster file looks like this:\n    type: toy\n" in message
    assert "line 2: unknown key 'lable' in the top level. Did you mean 'label'?" in error(
        "type: toy\nlable: x\n")
    assert "'disk' is a key of htcondor clusters, not of toy ones" in error(
        "type: toy\ndisk: 1GB\n")
    assert "'cores' is a key of slurm and htcondor and pbs clusters" in error(
        "type: toy\ncores: 1\n")
    assert "needs 'type: local|address|slurm|htcondor|pbs|toy'" in error("workers: 1\n")
    assert "unknown cluster type 'tyo'. Did you mean 'toy'?" in error("type: tyo\n")
    with pytest.raises(ConfigError, match="'workers': must be positive, got 0"):
        ClusterConfig("toy", options={"workers": 0})
    with pytest.raises(ConfigError, match="a toy runs at most 4 workers"):
        load_cluster("toy:5")


def test_a_new_backend_is_listed_shown_and_started_by_the_cli(
        toy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^toy +toy +a toy cluster +\[{re.escape(str(toy))}\]$", listing,
                     re.MULTILINE), listing
    assert "\nslurm " in listing  # the built-in ones are still there
    assert main(["cluster", "toy"]) == 0
    shown = capsys.readouterr().out
    head, settings = shown.split("\n", 1)
    assert head == f"# toy ({toy}): valid"
    assert yaml.safe_load(settings) == {"type": "toy", "description": "a toy cluster",
                                        "workers": 2, "label": "toy"}
    assert main(["cluster", "--example", "toy"]) == 0
    assert capsys.readouterr().out == "type: toy\nworkers: 2\n"
    assert main(["cluster", "toy", "--job-script"]) == 2
    assert "is of type toy: no batch jobs, so no job script" in capsys.readouterr().err
    assert main(["cluster", "toy:1", "--start"]) == 0
    assert "Cluster 'toy:1': 1 workers, 1 threads; scheduler tcp://127.0.0.1:" in \
        capsys.readouterr().out


def test_a_forgotten_backend_is_an_unknown_type(toy: Path) -> None:
    unregister_backend("toy")
    try:
        with pytest.raises(ConfigError, match="unknown cluster type 'toy'"):
            load_cluster("toy")
        assert main(["cluster", "--example", "toy"]) == 2
    finally:
        register_backend(ToyBackend())  # for the fixture to remove


def _backend(**attributes: Any) -> ClusterBackend:
    return type("Broken", (ToyBackend,), attributes)()  # type: ignore[no-any-return]


@pytest.mark.parametrize("attributes, expected", [
    ({"name": "Toy Cluster"}, "name must be lower-case letters"),
    ({"name": "local"}, "a backend named 'local' is already registered (LocalBackend)"),
    ({"schema": {"workers": Field((int,), "workers")}}, "lacks the common keys"),
    ({"schema": {**common_schema(30), "workers": Field((int,), "")}},
     "every key needs a Field with a doc; not ['workers']"),
    ({"example": "type: toy\nworkers: many\n"},
     "its example is not a valid toy cluster file: the toy example, line 2: 'workers' "
     "must be an integer"),
    ({"example": None}, "example must be a cluster file"),
    ({"status_command": ["squeue"]}, "status_command must be a shell command or None"),
])
def test_register_backend_refuses_incomplete_backends(attributes: dict[str, Any],
                                                      expected: str) -> None:
    before = backends()
    with pytest.raises(ValueError, match=re.escape(expected)):
        register_backend(_backend(**attributes))
    assert backends() == before  # nothing registered, nothing replaced


def test_a_backend_must_be_a_complete_cluster_backend() -> None:
    with pytest.raises(TypeError, match="is not a ClusterBackend"):
        register_backend(object())  # type: ignore[arg-type]

    class NoStart(ClusterBackend):
        name = "nostart"

        def check(self, config: ClusterConfig, validator: Validator) -> None: ...

        def size(self, config: ClusterConfig, count: int) -> ClusterConfig: ...

    with pytest.raises(TypeError, match=r"abstract method '?start"):
        NoStart()  # type: ignore[abstract]


def test_replacing_a_backend_is_explicit(toy: Path) -> None:
    class LabelledToy(ToyBackend):
        schema: ClassVar[dict[str, Field]] = {
            **ToyBackend.schema, "label": Field((str,), "a word", default="replaced")}

    register_backend(LabelledToy(), replace=True)
    assert load_cluster("toy").options["label"] == "replaced"


# ------------------------------------------------------------------------ Python = YAML


SLURM_TEXT = """\
type: slurm
cores: 4
memory: 16GB
jobs: 2
scheduler: {host: 127.0.0.1}
"""


def test_a_config_made_in_python_gets_the_files_defaults() -> None:
    from_file = cluster_from_text(SLURM_TEXT, "slurm")
    made = ClusterConfig("slurm", options={"cores": 4, "memory": "16GB", "jobs": 2,
                                           "scheduler": {"host": "127.0.0.1"}})
    assert made.options == from_file.options
    assert made.name == "slurm" and made.summary() == from_file.summary()
    schema = get_backend("slurm").schema
    for key in set(schema) - {"type", "cores", "memory", "jobs", "scheduler"}:
        assert made.options[key] == schema[key].default, key
    assert made.block("scheduler") == {"host": "127.0.0.1", "port": 0,
                                       "dashboard_address": None}


BAD = {
    "a wrong value": "type: pbs\ncores: 4\nmemory: lots\n",
    "a missing key": "type: htcondor\ncores: 1\nmemory: 1GB\n",
    "another type's key": "type: slurm\ncores: 4\nmemory: 1GB\ndisk: 10GB\n",
    "an impossible combination": "type: slurm\ncores: 1\nmemory: 1GB\njobs: 2\n"
                                 "adapt: {minimum: 0, maximum: 4}\n",
    "a local one": "type: local\nplacement: {read: gpu}\n",
    "an unknown type": "type: slrum\n",
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_config_made_in_python_gets_the_files_checks(case: str) -> None:
    text = BAD[case]
    with pytest.raises(ConfigError) as from_file:
        cluster_from_text(text, "c.yaml")
    data = yaml.safe_load(text)
    with pytest.raises(ConfigError) as made:
        ClusterConfig(data.pop("type"), "c", data)
    # the same message and example; only where it is ("c.yaml, line 3" / "Cluster 'c'")
    file_prefix, file_message = str(from_file.value).split(": ", 1)
    python_prefix, python_message = str(made.value).split(": ", 1)
    assert file_prefix.startswith("c.yaml, line ") and python_prefix == "Cluster 'c'"
    assert python_message == file_message
    assert "cluster file looks like this:" in python_message


def test_errors_carry_the_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("type: slurm\ncores: 4\nmemory: 1GB\nscheduler: {port: -1}\n")
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    assert caught.value.details() == {"file": str(path), "key": "scheduler.port", "line": 4}
    with pytest.raises(ConfigError) as caught:
        ClusterConfig("slurm", options={"cores": 4, "memory": "1GB", "jobs": 0})
    assert caught.value.details() == {"key": "jobs"}


def test_configs_do_not_share_their_defaults() -> None:
    first = ClusterConfig("local")
    first.options["resources"]["IO"] = 1
    assert ClusterConfig("local").options["resources"] == {}
    assert get_backend("local").schema["resources"].default == {}


def test_a_sized_config_is_checked_again() -> None:
    waiting = ClusterConfig("slurm", options={"cores": 1, "memory": "1GB", "jobs": 4,
                                              "wait": {"workers": 4}})
    with pytest.raises(ConfigError, match="waiting for 4 workers can never end: at most 2"):
        waiting.with_size(2)


def test_options_naming_another_type_are_refused() -> None:
    with pytest.raises(ConfigError, match="the options say type 'pbs', the cluster is of "
                                          "type 'slurm'"):
        ClusterConfig("slurm", options={"type": "pbs", "cores": 1, "memory": "1GB"})


# ------------------------------------------------------------------------ the modules


def _cluster_imports(path: Path) -> set[str]:
    """The mlaas_dask.cluster submodules a module imports (at the top, inside functions,
    or for type checking)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mlaas_dask.cluster":
                found |= {f"mlaas_dask.cluster.{a.name}" for a in node.names
                          if (PACKAGE / "cluster" / f"{a.name}.py").is_file()}
                found.add("mlaas_dask.cluster")
            elif node.module.startswith("mlaas_dask.cluster."):
                found.add(node.module)
    return found


def test_the_field_checks_are_a_leaf_and_the_cluster_modules_import_no_circle() -> None:
    modules = {f"mlaas_dask.cluster.{p.stem}": _cluster_imports(p)
               for p in (PACKAGE / "cluster").glob("*.py") if p.stem != "__init__"}
    assert modules["mlaas_dask.cluster.fields"] == set()
    # the package itself (which registers the built-in backends) is where users enter;
    # a module asking the package for a function (placement: config_of) is no circle
    graph = {name: imports - {"mlaas_dask.cluster"} for name, imports in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    backend_modules = ("local", "address", "jobqueue", "slurm", "htcondor", "pbs")
    for stem in backend_modules:  # backends never reach for the file loading / registry
        assert "mlaas_dask.cluster.config" not in graph[f"mlaas_dask.cluster.{stem}"], stem


#: comparing a cluster's type with a type name, or looking a table up by a config's type
TYPE_DISPATCH = re.compile(
    r"""(\btype(_name)?|\[["']type["']\])\s*(==|!=|\bin\b|\bnot in\b)\s*[(\[{]?\s*["']"""
    rf"""({'|'.join(BUILT_IN)})["']"""
    r"""|(\[|\.get\()\s*\w*config\.type\b""")


def test_nothing_outside_the_backends_asks_a_clusters_type() -> None:
    # the backends, and the registry that finds them by type
    allowed = {PACKAGE / "cluster" / f"{stem}.py" for stem in
               ("local", "address", "jobqueue", "slurm", "htcondor", "pbs", "backend")}
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if TYPE_DISPATCH.search(line)]
    assert found == []
    for dispatch in ('if config.type == "local":', "if options['type'] in ('slurm', 'pbs'):",
                     "timeout = DEFAULT_TIMEOUT.get(config.type, 300)",
                     "check '{status[config.type]}'"):
        assert TYPE_DISPATCH.search(dispatch), dispatch  # the pattern finds them


def test_batch_jobs_write_their_output_outside_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without log_directory, SLURM would write slurm-*.out where mlaas runs (a source
    tree, often): the jobs get ~/.cache/mlaas_dask/logs/<cluster> instead."""
    from mlaas_dask.cluster.jobqueue import base_kwargs

    monkeypatch.setenv("HOME", str(tmp_path))
    default = cluster_from_text("type: slurm\ncores: 1\nmemory: 1GB\n", "gpu-queue")
    assert base_kwargs(default)["log_directory"] == str(
        tmp_path / ".cache" / "mlaas_dask" / "logs" / "gpu-queue")
    chosen = cluster_from_text("type: slurm\ncores: 1\nmemory: 1GB\nlog_directory: /x/l\n")
    assert base_kwargs(chosen)["log_directory"] == "/x/l"
    script = get_backend("slurm").job_script(default)
    assert str(tmp_path / ".cache" / "mlaas_dask" / "logs" / "gpu-queue") in script
