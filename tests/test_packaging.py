"""The built wheel is complete: installed outside the source tree, it knows its cluster
files and trains.

The wheel is built from this checkout and installed without dependencies into a fresh
virtual environment that borrows the test environment's third-party packages (a ``.pth``
file), so the test checks what the wheel ships without downloading anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLAAS_CLUSTERS")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT),
                  "-w", str(tmp / "dist")], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp).returncode == 0
    site = Path(_run([str(venv / "bin" / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    # third-party packages from the test environment, but not its editable mlaas_dask
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp / "dist").glob("mlaas_dask-*.whl"))
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_wheel_ships_cluster_files(wheel_venv: Path, tmp_path: Path) -> None:
    python = str(wheel_venv / "bin" / "python")
    where = _run([python, "-c", "import mlaas_dask; print(mlaas_dask.__file__)"], cwd=tmp_path)
    assert str(wheel_venv) in where.stdout, "the wheel's package must be the one imported"
    listed = _run([str(wheel_venv / "bin" / "mlaas"), "cluster"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in ("local-gpu", "slurm", "htcondor", "pbs", "scheduler"):
        assert name in listed.stdout
    shown = _run([str(wheel_venv / "bin" / "mlaas"), "cluster", "local-gpu"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr


@pytest.mark.slow
def test_wheel_ships_py_typed(wheel_venv: Path, tmp_path: Path) -> None:
    """Type checkers read the installed package's annotations (PEP 561's marker)."""
    found = _run([str(wheel_venv / "bin" / "python"), "-c",
                  "import importlib.resources as r; "
                  "print(r.files('mlaas_dask').joinpath('py.typed').is_file())"], cwd=tmp_path)
    assert found.stdout.strip() == "True", found.stdout + found.stderr


@pytest.mark.slow
def test_wheel_trains(wheel_venv: Path, tmp_path: Path) -> None:
    mlaas = str(wheel_venv / "bin" / "mlaas")
    sample = _run([mlaas, "sample", "--out", "data", "--events", "4000"], cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    (tmp_path / "job.yaml").write_text(
        "dataset:\n  tree: Events\n  groups:\n"
        "    - {name: signal, files: ['data/signal*.root'], label: 1}\n"
        "    - {name: background, files: ['data/background*.root'], label: 0}\n"
        "features:\n  flat: [MET_pt]\n"
        "  collections:\n    Jet: {fields: [pt, eta], n: 2}\n"
        "model:\n  params: {max_depth: 3}\n  num_boost_round: 5\n"
    )
    trained = _run([mlaas, "train", "job.yaml", "--cluster", "local:1", "--out", "bundle",
                    "--quiet"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "Test AUC" in trained.stdout
    assert "got rank" not in trained.stdout + trained.stderr  # --quiet
    assert (tmp_path / "bundle" / "model.ubj").is_file()


@pytest.mark.slow
def test_wheel_ships_every_subpackage(wheel_venv: Path, tmp_path: Path) -> None:
    """Every package of the source tree is in the wheel (pyproject lists them by name, and a
    new subpackage left off that list once broke training from a wheel)."""
    source = sorted(".".join(p.parent.relative_to(ROOT).parts)
                    for p in (ROOT / "mlaas_dask").rglob("__init__.py"))
    listed = _run([str(wheel_venv / "bin" / "python"), "-c",
                   "import pkgutil, mlaas_dask; print('\\n'.join(sorted(['mlaas_dask'] + "
                   "[m.name for m in pkgutil.walk_packages(mlaas_dask.__path__, 'mlaas_dask.') "
                   "if m.ispkg])))"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    shipped = set(listed.stdout.split())
    missing = [name for name in source if name not in shipped]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
