"""``mlaas train`` end to end with its Dask workers as real SLURM batch jobs.

Needs the one-node SLURM cluster of .ci/start-slurm.sh (munged, slurmctld, slurmd), found
through ``MLAAS_SLURM_CONF`` (its slurm.conf). .ci/run starts it; when it could not, the
reason is in ``$MLAAS_SLURM_DIR/error``. Outside .ci/run, as root, the module installs
slurm-wlm + munge and starts (then stops) its own. In CI (``CI=true``, or when .ci/run has
set ``MLAAS_SLURM_DIR``) a missing SLURM fails this test with that reason; elsewhere it
skips.
The Dask scheduler and workers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, require_programs, skip_or_fail, write_events

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    """The environment for SLURM commands. Uses the cluster that .ci/run started
    (``MLAAS_SLURM_CONF``); otherwise, as root, installs slurm-wlm + munge and starts a
    one-node cluster for this module; otherwise skips (fails under CI=true) with why."""
    conf = os.environ.get("MLAAS_SLURM_CONF")
    state_dir = Path(os.environ.get("MLAAS_SLURM_DIR", "/tmp/mlaas-slurm"))
    started: Path | None = None
    if not conf and "MLAAS_SLURM_DIR" not in os.environ and os.geteuid() == 0:
        require_programs(("slurmctld", "slurm-wlm", "munge"), ("munged", "munge"))
        started = Path(tempfile.mkdtemp(prefix="mlaas-slurm-"))
        started.chmod(0o755)  # munged runs as the munge user (pytest's tmp_path is 0700)
        subprocess.run([str(REPO / ".ci" / "start-slurm.sh"), str(started)],
                       capture_output=True, timeout=120, check=False)
        state_dir = started
        if (started / "slurm.conf").is_file() and not (started / "error").is_file():
            conf = str(started / "slurm.conf")
    try:
        yield _checked_env(conf, state_dir)
    finally:
        if started is not None:
            subprocess.run([str(REPO / ".ci" / "stop-slurm.sh"), str(started)],
                           capture_output=True, timeout=120, check=False)
            shutil.rmtree(started, ignore_errors=True)


def _checked_env(conf: str | None, state_dir: Path) -> dict[str, str]:
    reason = None
    if not conf:
        why = (state_dir / "error").read_text().strip() if (state_dir / "error").is_file() \
            else "start it with .ci/start-slurm.sh and export MLAAS_SLURM_CONF"
        reason = f"SLURM is not up (MLAAS_SLURM_CONF is not set): {why}"
    elif not Path(conf).is_file():
        reason = f"MLAAS_SLURM_CONF={conf} does not exist"
    env = {**os.environ, "SLURM_CONF": conf or ""}
    if reason is None:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               env=env, timeout=30, check=False)
        state = probe.stdout.strip()
        if probe.returncode != 0 or not state.startswith(("idle", "mixed", "alloc")):
            reason = (f"SLURM does not answer: sinfo gave rc {probe.returncode}, state "
                      f"{state!r}, {probe.stderr.strip()[-300:]!r}")
    if reason is not None:
        if "MLAAS_SLURM_DIR" in os.environ or conf:
            pytest.fail(reason)
        skip_or_fail(reason)
    return env


def test_mlaas_train_with_workers_as_slurm_jobs(tmp_path: Path,
                                                slurm_env: dict[str, str]) -> None:
    env = slurm_env
    name = f"mlaas-test-{uuid.uuid4().hex[:8]}"
    sig = write_events(tmp_path / "sig.root", n=4000, seed=1)
    bkg = write_events(tmp_path / "bkg.root", n=4000, seed=2)
    job = tmp_path / "job.yaml"
    job.write_text(f"""
dataset:
  step_size: 1000
  groups:
    - {{name: signal, files: [{sig}], label: 1}}
    - {{name: background, files: [{bkg}], label: 0}}
features:
  flat: [MET_pt]
  collections: {{Jet: {{fields: [pt, eta], n: 3, sort_by: pt}}}}
model: {{num_boost_round: 20, early_stopping_rounds: 5}}
""")
    logs = tmp_path / "logs"
    cluster = tmp_path / "test-slurm.yaml"
    cluster.write_text(f"""
type: slurm
cores: 1
memory: 1GB
processes: 1
jobs: 2
walltime: "00:10:00"
job_name: {name}
log_directory: {logs}
local_directory: {tmp_path / "scratch"}
python: {sys.executable}
worker_extra_args: ["--host", "127.0.0.1"]
scheduler: {{host: 127.0.0.1, dashboard_address: "127.0.0.1:0"}}
wait: {{workers: 2, timeout: 120}}
""")
    logs.mkdir()
    command = [sys.executable, "-m", "mlaas_dask", "train", str(job), "--cluster",
               str(cluster), "--out", str(tmp_path / "bundle")]
    seen: dict[str, set[str]] = {}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i %T"],
                               capture_output=True, text=True, env=env, check=False)
        for line in queue.stdout.split("\n"):
            if line.strip():
                job_id, state = line.split()
                seen.setdefault(job_id, set()).add(state)
        time.sleep(0.3)
    if process.poll() is None:
        process.kill()
    output = process.communicate()[0]
    assert process.returncode == 0, output
    assert "Test AUC" in output and "Model bundle written" in output

    # squeue saw two jobs of ours, running
    assert len(seen) == 2, (seen, output)
    assert all("RUNNING" in states for states in seen.values()), seen
    # sacct (from the job completion log: no slurmdbd here) has them, ended by mlaas
    # cancelling its workers when training was done
    accounting = subprocess.run(
        ["sacct", "--completion", "-n", "-P", "-o", "JobID,JobName,State,NodeList"],
        capture_output=True, text=True, env=env, check=True).stdout
    finished = {line.split("|")[0]: line.split("|") for line in accounting.splitlines()
                if f"|{name}|" in line}
    assert set(finished) == set(seen), (accounting, seen)
    assert {row[2] for row in finished.values()} <= {"CANCELLED", "COMPLETED"}
    # the workers' own logs, written by the batch jobs
    assert len(list(logs.glob(f"{name}-*.err"))) == 2

    # the bundle says it trained on those workers, on loopback
    import json

    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    workers = meta["cluster"]["worker_list"]
    assert meta["cluster"]["cluster"]["type"] == "slurm" and len(workers) == 2
    assert all(w["address"].startswith("tcp://127.0.0.1:") for w in workers)
    assert meta["cluster"]["scheduler"].startswith("tcp://127.0.0.1:")
    addresses = {w["address"] for w in workers}
    assert set(meta["placement"]["train"]["addresses"]) <= addresses
    assert set(meta["placement"]["read_features"]["addresses"]) <= addresses


def test_adaptive_scaling_submits_slurm_jobs_under_load(tmp_path: Path,
                                                       slurm_env: dict[str, str]) -> None:
    """adapt: {minimum: 0, maximum: 2}: no job until there is work, then two."""
    env = slurm_env
    from mlaas_dask.cluster import cluster_from_text, start, stop

    name = f"mlaas-adapt-{uuid.uuid4().hex[:8]}"
    config = cluster_from_text(f"""
type: slurm
cores: 1
memory: 1GB
job_name: {name}
python: {sys.executable}
worker_extra_args: ["--host", "127.0.0.1"]
local_directory: {tmp_path}
log_directory: {tmp_path}
adapt: {{minimum: 0, maximum: 2}}
scheduler: {{host: 127.0.0.1, dashboard_address: "127.0.0.1:0"}}
""", "adaptive-slurm.yaml")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        client = start(config)
        try:
            assert client.scheduler_info()["workers"] == {}  # minimum 0: nothing yet
            # time.sleep: a function the SLURM workers can import (not this test module)
            futures = client.map(time.sleep, [0.5] * 40, pure=False)
            jobs: set[str] = set()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(jobs) < 2:
                queue = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i"],
                                       capture_output=True, text=True, env=env, check=False)
                jobs |= set(queue.stdout.split())
                time.sleep(0.3)
            assert len(jobs) == 2, f"adaptive scaling submitted {sorted(jobs)}"
            client.wait_for_workers(2, timeout=60)  # both jobs run a worker
            assert futures[0].result(timeout=60) is None
            client.cancel(futures)
        finally:
            stop(client)
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
