"""Cluster files and the factory: names, validation with examples, impossible combinations,
dask-jobqueue keyword mapping and the job scripts it generates, local clusters, adaptive
scaling, existing schedulers, and the ``mlaas cluster`` command."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from mlaas_dask.cli import main
from mlaas_dask.cluster import (
    ClusterConfig,
    available_clusters,
    backend_names,
    cluster_from_text,
    connect,
    describe,
    example,
    htcondor,
    load_cluster,
)
from mlaas_dask.cluster.config import builtin_local
from mlaas_dask.cluster.htcondor import HTCondorBackend
from mlaas_dask.cluster.local import visible_gpus
from mlaas_dask.cluster.pbs import PBSBackend
from mlaas_dask.cluster.slurm import SlurmBackend
from mlaas_dask.errors import ConfigError

from conftest import REPO

CLUSTER_FILES = sorted((REPO / "clusters").glob("*.yaml"))
#: the built-in kinds of cluster (a test may register more)
TYPE_NAMES = backend_names()
SLURM, PBS, HTCONDOR_BACKEND = SlurmBackend(), PBSBackend(), HTCondorBackend()


def config(text: str) -> ClusterConfig:
    return cluster_from_text(textwrap.dedent(text), "c.yaml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config(text)
    return str(caught.value)


# ------------------------------------------------------------------------ the files


def test_the_project_ships_every_kind_of_cluster_file() -> None:
    names = {p.stem for p in CLUSTER_FILES}
    assert {"local", "local-gpu", "scheduler", "slurm", "htcondor", "pbs"} <= names
    types = {load_cluster(p).type for p in CLUSTER_FILES}
    assert types == set(TYPE_NAMES)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_are_valid_and_commented(path: Path) -> None:
    loaded = load_cluster(path)
    assert loaded.name == path.stem and loaded.source == str(path)
    text = path.read_text()
    assert text.startswith("#") and text.count("#") >= 5  # defaults explained in comments


DEFAULT_MARK = "# (default)"


def _leaves(data: dict[str, Any], schema: Any, path: tuple[str, ...] = ()) -> Any:
    """Key paths of the values a file gives (the keys of blocks such as scheduler)."""
    for key, value in data.items():
        spec = schema.get(key)
        if spec is not None and spec.schema is not None and isinstance(value, dict):
            yield from _leaves(value, spec.schema, (*path, key))
        else:
            yield (*path, key)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_mark_exactly_the_schemas_defaults(path: Path) -> None:
    """A value commented '(default)' is the schema's default, and a value equal to the
    schema's default says so: the files cannot drift from the one source of defaults."""
    from mlaas_dask.cluster.fields import field_at
    from mlaas_dask.config import parse_yaml

    text = path.read_text()
    rows = text.splitlines()
    data, lines = parse_yaml(text, str(path))
    loaded = load_cluster(path)
    schema = loaded.backend.schema
    marked = {number for number, row in enumerate(rows, 1) if DEFAULT_MARK in row}
    defaults = set()
    wrong = []
    for leaf in _leaves(data, schema):
        spec = field_at(schema, leaf)
        value: Any = loaded.options
        for key in leaf:
            value = value[key]
        is_default = spec.default is not None and value == spec.default
        if is_default:
            defaults.add(lines[leaf])
        if is_default != (lines[leaf] in marked):
            wrong.append(f"line {lines[leaf]}: {'.'.join(leaf)}: {value!r} (default "
                         f"{spec.default!r}) {'is' if lines[leaf] in marked else 'is not'} "
                         "marked '(default)'")
    wrong += [f"line {number}: marked '(default)' but sets no default"
              for number in sorted(marked - defaults)]
    assert wrong == []
    assert defaults, "each file shows some defaults"


def test_local_file_is_the_embedded_default() -> None:
    """clusters/local.yaml documents the built-in 'local': the same settings."""
    from_file = load_cluster(REPO / "clusters" / "local.yaml").options
    built_in = builtin_local().options
    for key in ("type", "workers", "threads_per_worker", "memory_limit", "gpu_workers",
                "resources", "adapt"):
        assert from_file[key] == built_in[key], key
    assert from_file["scheduler"]["host"] == "127.0.0.1"


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_the_examples_shown_in_errors_are_valid(type_name: str) -> None:
    assert config(example(type_name)).type == type_name


# ------------------------------------------------------------------------ names


def test_names_paths_addresses_and_sizes() -> None:
    assert load_cluster("local").options["workers"] == "auto"
    assert load_cluster("local:3").options["workers"] == 3
    four = load_cluster("slurm:4")
    assert (four.type, four.options["jobs"], four.options["adapt"]) == ("slurm", 4, None)
    assert four.name == "slurm:4"
    assert load_cluster(str(REPO / "clusters" / "pbs.yaml")).type == "pbs"
    address = load_cluster("tcp://10.0.0.5:8786")
    assert (address.type, address.options["address"]) == ("address", "tcp://10.0.0.5:8786")
    assert load_cluster({"type": "local", "workers": 2}).options["workers"] == 2


@pytest.mark.parametrize("spec, expected", [
    ("slrum", "Unknown cluster 'slrum'. Did you mean 'slurm'?"),
    ("local:x", "after ':' comes a positive number"),
    ("local:0", "after ':' comes a positive number"),
    ("tcp://10.0.0.5", "must be a scheduler address such as tcp://"),
    ("scheduler:2", "its size is set where its workers are started"),
    ("nowhere/cluster.yaml", "Cluster file nowhere/cluster.yaml does not exist"),
])
def test_bad_names_say_what_exists(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_cluster(spec)
    assert expected in str(caught.value)


def test_clusters_are_found_on_the_search_path_first(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local.yaml").write_text("type: local\nworkers: 1\n")
    (tmp_path / "site.yml").write_text("type: address\naddress: tcp://10.1.2.3:8786\n")
    monkeypatch.setenv("MLAAS_CLUSTERS", str(tmp_path))
    assert load_cluster("local").options["workers"] == 1
    assert load_cluster("site").options["address"] == "tcp://10.1.2.3:8786"
    assert available_clusters()["site"] == tmp_path / "site.yml"


# ------------------------------------------------------------------------ validation


def test_unknown_key_names_line_suggestion_and_a_valid_example() -> None:
    message = error("""\
        type: slurm
        coers: 4
        memory: 16GB
        """)
    assert message.startswith("c.yaml, line 2: unknown key 'coers'")
    assert "Did you mean 'cores'?" in message
    assert "A valid slurm cluster file looks like this:" in message
    shown = textwrap.dedent(message.split("looks like this:\n", 1)[1])
    assert config(shown).type == "slurm"  # the example in the message itself is valid


def test_a_key_of_another_type_says_whose_it_is() -> None:
    message = error("""\
        type: slurm
        cores: 4
        memory: 16GB
        disk: 10GB
        """)
    assert "line 4: 'disk' is a key of htcondor clusters, not of slurm ones" in message


def test_missing_or_unknown_type() -> None:
    assert "needs 'type: local|address|slurm|htcondor|pbs'" in error("cores: 4\n")
    message = error("type: slrum\n")
    assert "line 1: unknown cluster type 'slrum'. Did you mean 'slurm'?" in message
    assert "A valid local cluster file" in message
    assert "is empty" in error("")


def test_wrong_types_and_values() -> None:
    assert "'memory': must be a size such as '4GiB'" in error(
        "type: pbs\ncores: 4\nmemory: lots\n")
    assert "'walltime': must look like '01:30:00'" in error(
        "type: slurm\ncores: 1\nmemory: 1GB\nwalltime: one hour\n")
    assert "'cores' must be an integer" in error("type: slurm\ncores: four\nmemory: 1GB\n")
    assert "missing the required key 'disk'" in error(
        "type: htcondor\ncores: 1\nmemory: 1GB\n")
    assert "'placement.train': must be one of auto, any, cpu, gpu or a resource tag" in error(
        "type: local\nplacement: {train: 'GPU please'}\n")


IMPOSSIBLE = {
    "jobs and adapt": ("type: slurm\ncores: 1\nmemory: 1GB\njobs: 2\n"
                       "adapt: {minimum: 0, maximum: 4}\n",
                       "line 4: give either 'jobs'"),
    "adapt upside down": ("type: htcondor\ncores: 1\nmemory: 1GB\ndisk: 1GB\n"
                          "adapt: {minimum: 5, maximum: 2}\n",
                          "adapt.minimum (5) is above adapt.maximum (2)"),
    "two GPUs per worker": ("type: slurm\ncores: 2\nmemory: 1GB\ngpus: 2\n",
                            "a Dask worker uses one GPU"),
    "GPU shared by processes": ("type: slurm\ncores: 2\nmemory: 1GB\ngpus: 1\nprocesses: 2\n",
                                "each job runs one worker process"),
    "uneven cores": ("type: pbs\ncores: 3\nmemory: 1GB\nprocesses: 2\n",
                     "3 cores cannot be shared evenly among 2"),
    "GPU placement without GPUs": ("type: slurm\ncores: 1\nmemory: 1GB\n"
                                   "placement: {train: gpu}\n",
                                   "placement.train is 'gpu' but these jobs have no GPU"),
    "waiting for too many": ("type: slurm\ncores: 1\nmemory: 1GB\njobs: 2\n"
                             "wait: {workers: 3}\n", "can never end: at most 2 can start"),
    "local adapt with GPU workers": ("type: local\ngpu_workers: 1\n"
                                     "adapt: {minimum: 1, maximum: 4}\n",
                                     "could retire the GPU workers"),
    "local GPU placement without GPU workers": ("type: local\nplacement: {read: gpu}\n",
                                                "this cluster has no GPU workers"),
    "local GPU tag by hand": ("type: local\nresources: {GPU: 1}\n",
                              "use gpu_workers: N"),
    "PBS GPU twice": ("type: pbs\ncores: 1\nmemory: 1GB\ngpus: 1\n"
                      "resource_spec: select=1:ncpus=1\n", "write the GPU into it"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE, ids=list(IMPOSSIBLE))
def test_impossible_combinations_are_errors_with_an_example(case: str) -> None:
    text, expected = IMPOSSIBLE[case]
    message = error(text)
    assert expected in message
    assert "cluster file looks like this:" in message


# ------------------------------------------------------------------------ dask-jobqueue


def _slurm_file(tmp_path: Path, extra: str = "") -> ClusterConfig:
    path = tmp_path / "site-slurm.yaml"
    path.write_text(textwrap.dedent("""\
        type: slurm
        cores: 8
        memory: 32GB
        processes: 1
        walltime: 2:00:00          # unquoted: YAML reads it as 7200 seconds
        queue: gpu
        account: cms
        gpus: 1
        resources: {highmem: 1}
        job_extra_directives: ["--qos=short"]
        job_script_prologue: ["module load cuda"]
        log_directory: /scratch/logs
        scheduler: {host: 127.0.0.1}
        """) + extra)
    return load_cluster(path)


def test_slurm_job_script_from_the_file(tmp_path: Path) -> None:
    """The batch script dask-jobqueue's SLURMCluster generates from our kwargs (no job is
    submitted: nothing here needs sbatch)."""
    loaded = _slurm_file(tmp_path)
    kwargs = SLURM.job_kwargs(loaded)
    assert kwargs["walltime"] == "02:00:00"
    assert kwargs["scheduler_options"] == {"host": "127.0.0.1", "port": 0,
                                           "dashboard_address": "127.0.0.1:0"}
    cluster = SLURM.build(loaded)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -J mlaas-worker", "#SBATCH -p gpu", "#SBATCH -A cms",
                 "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00", "#SBATCH --qos=short",
                 "#SBATCH --gres=gpu:1", "#SBATCH -o /scratch/logs/mlaas-worker-%J.out",
                 "module load cuda"):
        assert line in script, line
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert "--resources highmem=1,GPU=1" in script
    assert "--nthreads 8" in script


def test_pbs_builds_the_gpu_resource_spec(tmp_path: Path) -> None:
    loaded = config("type: pbs\ncores: 4\nmemory: 16GB\ngpus: 1\nqueue: workq\n"
                    "walltime: '00:30:00'\nscheduler: {host: 127.0.0.1}\n")
    cluster = PBS.build(loaded)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS -l select=1:ncpus=4:ngpus=1:mem=16GB" in script
    assert "#PBS -q workq" in script and "#PBS -l walltime=00:30:00" in script
    assert "--resources GPU=1" in script


# HTCondor: there is no HTCondor pool (no package, no schedd) on these machines, so these
# tests check, as dask-jobqueue's own tests do, the submit description that HTCondorCluster
# generates from a cluster file, and -- with stand-in condor_submit / condor_rm scripts
# that record what they are given -- that mlaas submits and cancels through them. The
# stand-ins replace the missing pool, not any mlaas code.

HTCONDOR = """\
type: htcondor
cores: 4
memory: 8GB
disk: 10GB
x509_proxy: {proxy}
token: {token}
container_image: /cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/python:3.11
python: python3
requirements: 'OpSysAndVer == "AlmaLinux9"'
max_runtime: 7200
accounting_group: group_u_CMS.u_zh
gpus: 1
job_extra_directives:
  +JobFlavour: '"workday"'
  transfer_input_files: extra.txt
submit_command_extra: ["-name", "schedd.example.org"]
job_script_prologue: ["source /cvmfs/sft.cern.ch/setup.sh"]
scheduler: {{host: 127.0.0.1}}
{extra}"""


def _htcondor(tmp_path: Path, extra: str = "", proxy: str | None = None,
              token: str | None = None) -> ClusterConfig:
    proxy_file = tmp_path / "x509up_u1000"
    proxy_file.write_text("-----BEGIN CERTIFICATE-----\n")
    token_file = tmp_path / "bt_u1000"
    token_file.write_text("eyJhbGciOi...")
    path = tmp_path / "wlcg.yaml"
    path.write_text(HTCONDOR.format(proxy=proxy or proxy_file, token=token or token_file,
                                    extra=extra))
    return load_cluster(path)


def test_htcondor_wlcg_keys_become_submit_description_lines(tmp_path: Path) -> None:
    loaded = _htcondor(tmp_path)
    kwargs = HTCONDOR_BACKEND.job_kwargs(loaded)
    directives = kwargs["job_extra_directives"]
    assert directives["use_x509userproxy"] == "true"
    assert directives["x509userproxy"] == str(tmp_path / "x509up_u1000")
    assert directives["MY.SingularityImage"] == (
        '"/cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/python:3.11"')
    assert directives["request_GPUs"] == 1
    assert directives["transfer_input_files"] == f"{tmp_path / 'bt_u1000'}, extra.txt"
    assert kwargs["job_script_prologue"][0] == (
        "export BEARER_TOKEN_FILE=$_CONDOR_SCRATCH_DIR/bt_u1000")
    assert kwargs["submit_command_extra"] == ["-name", "schedd.example.org"]
    cluster = HTCONDOR_BACKEND.build(loaded)
    try:
        script = cluster.job_script()
        submit = cluster._dummy_job.submit_command
    finally:
        cluster.close()
    assert script.startswith("#!/usr/bin/env condor_submit")
    for line in ("RequestCpus = MY.DaskWorkerCores", "MY.DaskWorkerDisk = 10000000000",
                 "use_x509userproxy = true", "should_transfer_files = YES",
                 "requirements = OpSysAndVer == \"AlmaLinux9\"", "MY.MaxRuntime = 7200",
                 "accounting_group = group_u_CMS.u_zh", "+JobFlavour = \"workday\"",
                 "MY.SingularityImage = \"/cvmfs/unpacked.cern.ch/",
                 "Executable = /bin/sh", "Queue"):
        assert line in script, line
    arguments = next(line for line in script.splitlines() if line.startswith("Arguments"))
    assert "source /cvmfs/sft.cern.ch/setup.sh; python3 -m distributed.cli.dask_worker" \
        in arguments
    assert "--resources GPU=1" in arguments
    assert submit == "condor_submit -name schedd.example.org"


def test_htcondor_user_directives_win(tmp_path: Path) -> None:
    loaded = _htcondor(tmp_path, extra="")
    loaded.options["job_extra_directives"]["requirements"] = "TARGET.HasGPU"
    assert HTCONDOR_BACKEND.job_kwargs(loaded)["job_extra_directives"]["requirements"] == \
        "TARGET.HasGPU"


def test_wlcg_credentials_are_discovered_or_explained(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "my-token"
    token.write_text("eyJ...")
    proxy = tmp_path / "my-proxy"
    proxy.write_text("cert")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token))
    monkeypatch.setenv("X509_USER_PROXY", str(proxy))
    assert htcondor.find_token("auto") == token
    assert htcondor.find_proxy("auto") == proxy
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "expired-and-gone"))
    with pytest.raises(ConfigError, match="voms-proxy-init"):
        htcondor.find_proxy("auto")
    with pytest.raises(ConfigError, match="htgettoken"):
        htcondor.find_token(str(tmp_path / "no-token"))


def test_htcondor_jobs_are_submitted_and_removed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The submission path, with stand-in condor_submit / condor_rm (no pool here)."""
    from mlaas_dask.cluster import start, stop

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    record.mkdir()
    # the job id is the stand-in's pid: submissions run concurrently
    (bin_dir / "condor_submit").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" > {record}/submit-$$.args
        for last in "$@"; do :; done
        cat "$last" > {record}/submit-$$.jdl
        echo "1 job(s) submitted to cluster $$."
        """))
    (bin_dir / "condor_rm").write_text(f"#!/bin/sh\necho \"$@\" >> {record}/rm.args\n")
    for script in bin_dir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    loaded = _htcondor(tmp_path, extra="jobs: 2\nwait: {workers: 0}\n")
    client = start(loaded)
    try:
        deadline = time.monotonic() + 30
        while len(list(record.glob("submit-*.jdl"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert describe(client)["cluster"]["type"] == "htcondor"
    finally:
        stop(client)
    submitted = sorted(record.glob("submit-*.jdl"))
    assert len(submitted) == 2
    for jdl in submitted:
        assert "x509userproxy = " in jdl.read_text()
        args = jdl.with_suffix(".args").read_text()
        assert args.startswith("-name schedd.example.org ")
    job_ids = {f"{jdl.stem.removeprefix('submit-')}.0" for jdl in submitted}
    removed = set((record / "rm.args").read_text().split())
    assert job_ids <= removed


def test_no_submit_command_is_a_clear_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlaas_dask.cluster import start

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="'sbatch' is not on PATH"):
        start("slurm:1")


# ------------------------------------------------------------------------ running clusters


def test_gpu_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert visible_gpus() == []
    from mlaas_dask.cluster import start

    with pytest.raises(ConfigError, match=r"asks for one worker per GPU .* shows none"):
        start("local-gpu")


def test_existing_scheduler_by_address(client: Any) -> None:
    address = client.scheduler.address
    with connect(address) as joined:
        info = describe(joined)
        assert info["scheduler"] == address
        assert info["workers"] == 2
        assert info["cluster"]["type"] == "address"
        assert joined.submit(sum, [1, 2]).result() == 3
    assert client.submit(sum, [3, 4]).result() == 7  # the cluster itself stays up


def test_unreachable_scheduler() -> None:
    with (
        pytest.raises(ConfigError, match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        connect({"type": "address", "address": "tcp://127.0.0.1:9", "connect_timeout": 1}),
    ):
        pass


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _malloc_trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.parametrize("trim,expected", [(False, None), (True, "65536")])
def test_local_workers_keep_glibc_memory_tuning_unless_asked(trim: bool,
                                                             expected: str | None) -> None:
    # Dask's MALLOC_TRIM_THRESHOLD_ makes every array over 128 KiB a fresh mmap: slower
    with connect({"type": "local", "workers": 1, "trim_memory": trim}) as client:
        assert list(client.run(_malloc_trim).values()) == [expected]


def test_adaptive_local_cluster_scales_up_under_load() -> None:
    with connect({"type": "local", "adapt": {"minimum": 1, "maximum": 2},
                  "scheduler": {"host": "127.0.0.1"}}) as adaptive:
        assert len(adaptive.scheduler_info()["workers"]) == 1
        futures = adaptive.map(_sleep, [0.5] * 24, pure=False)
        deadline = time.monotonic() + 20
        peak = 1
        while time.monotonic() < deadline and peak < 2:
            peak = max(peak, len(adaptive.scheduler_info()["workers"]))
            time.sleep(0.2)
        assert peak == 2, "the adaptive cluster did not add its second worker"
        assert sum(adaptive.gather(futures)) == 12
        # a worker added later keeps glibc's own memory tuning too
        assert set(adaptive.run(_malloc_trim).values()) == {None}
        assert describe(adaptive)["cluster"]["options"]["adapt"] == {"minimum": 1,
                                                                     "maximum": 2}


# ------------------------------------------------------------------------ mlaas cluster


def test_cli_lists_validates_and_prints_job_scripts(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    assert main(["cluster"]) == 0
    listing = capsys.readouterr().out
    for name in ("local", "local-gpu", "scheduler", "slurm", "htcondor", "pbs"):
        assert f"\n{name} " in f"\n{listing}"
    assert main(["cluster", "pbs"]) == 0
    assert "# pbs (" in capsys.readouterr().out
    assert main(["cluster", "slurm:3", "--job-script"]) == 0
    assert "#SBATCH -J mlaas-worker" in capsys.readouterr().out
    assert main(["cluster", "--example", "htcondor"]) == 0
    assert "x509_proxy: auto" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: pbs\ncores: 2\nmemroy: 4GB\n")
    assert main(["cluster", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 3: unknown key 'memroy'" in err and "A valid pbs cluster file" in err


def test_every_computing_command_takes_cluster_names(capsys: pytest.CaptureFixture[str]) -> None:
    from mlaas_dask.cli import COMMANDS, build_parser

    parser = build_parser()
    for command in ("train", "predict", "tune", "bench"):
        assert command in COMMANDS
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--cluster" in capsys.readouterr().out


def test_a_job_names_its_cluster_relative_to_itself(tmp_path: Path) -> None:
    from mlaas_dask.job import job_from_text

    base = """
dataset:
  groups:
    - {name: s, files: [s.root], label: 1}
    - {name: b, files: [b.root], label: 0}
features: {flat: [MET_pt]}
"""
    assert job_from_text(base + "cluster: clusters/site.yaml\n", base=tmp_path).cluster == \
        str(tmp_path / "clusters" / "site.yaml")
    for kept in ("slurm:4", "local", "tcp://10.0.0.5:8786"):
        assert job_from_text(base + f"cluster: '{kept}'\n", base=tmp_path).cluster == kept


def test_cli_start_shows_workers_and_tags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "local:1", "--start"]) == 0
    out = capsys.readouterr().out
    assert "Cluster 'local:1': 1 workers, 1 threads; scheduler tcp://127.0.0.1:" in out
