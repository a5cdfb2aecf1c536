"""Shared fixtures: the real CMS Open Data files, small ROOT files made on the spot, and a
real Dask LocalCluster with worker processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas_dask.data.rootio import write_ttree

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared CMS Open Data folder next to the repository; the test fails naming it
    when it is missing."""
    folder = REPO.parent / "shared" / "data"
    if not folder.is_dir():
        pytest.fail(f"The shared CMS Open Data files are expected at {folder}")
    return folder


@pytest.fixture(scope="session")
def hep_tutorial(shared_data: Path) -> Path:
    """The CMS HEP tutorial 2012 folder (ww.root, zz.root, single_top.root, ...; tree
    ``events``)."""
    return shared_data / "cms-hep-tutorial-2012"


@pytest.fixture(scope="session")
def zz(hep_tutorial: Path) -> Path:
    """The HEP tutorial's ZZ sample (2,421 events in tree ``events``)."""
    return hep_tutorial / "zz.root"


@pytest.fixture(scope="session")
def nanoaod(shared_data: Path) -> Path:
    """A real CMS NanoAOD file: ttbar.root (200 events in tree ``Events``)."""
    return shared_data / "cms-nanoaod-2015" / "ttbar.root"


@pytest.fixture(scope="session")
def dimuon(shared_data: Path) -> Path:
    """The 2010 dimuon file Zmumu.root (flat branches only)."""
    return shared_data / "cms-dimuon-2010" / "Zmumu.root"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose daemon or device is missing, but fail under CI=true, where
    .ci/run has installed and started everything."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_programs(*programs: tuple[str, ...]) -> None:
    """Each ``(program, debian_package, ...)`` is installed here (apt-get where allowed),
    or the test skips with the install command as its reason (fails under CI=true)."""
    from servers import MissingProgram, ensure_program

    for program, *packages in programs:
        try:
            ensure_program(program, *packages)
        except MissingProgram as err:
            skip_or_fail(str(err))


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """A LocalCluster with two single-threaded worker processes, shared by the session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=40)
    dask_client = Client(cluster)
    try:
        yield dask_client
    finally:
        dask_client.close()
        # a worker process that imported torch takes up to ~4 s to exit, and the nanny
        # waits 5 s: under load its close times out, after every test has passed
        with contextlib.suppress(TimeoutError):
            cluster.close(timeout=60)


def write_events(path: Path, n: int = 1000, seed: int = 0, tree: str = "Events",
                 extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A small NanoAOD-like file: nJet + Jet_pt/Jet_eta (falling pt), MET_pt, ids."""
    import awkward as ak
    import uproot

    rng = np.random.default_rng(seed)
    counts = rng.poisson(3, n)
    pt = ak.unflatten(rng.exponential(40, counts.sum()).astype(np.float32) + 20, counts)
    pt = ak.sort(pt, axis=1, ascending=False)
    eta = ak.unflatten(rng.normal(0, 1.5, counts.sum()).astype(np.float32), counts)
    branches: dict[str, Any] = {
        "run": np.full(n, 1, np.uint32),
        "luminosityBlock": (np.arange(n) // 100 + 1).astype(np.uint32),
        "event": (np.arange(n) + 1 + seed * 10_000_000).astype(np.uint64),
        "MET_pt": rng.exponential(30, n).astype(np.float32),
        "genWeight": np.ones(n, np.float32),
        "Jet": ak.zip({"pt": pt, "eta": eta}),
    }
    branches.update(extra or {})
    for name in drop:
        branches.pop(name)
    with uproot.recreate(path) as handle:
        write_ttree(handle, tree, branches)
    return path


@pytest.fixture
def make_events(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "events.root", **kwargs: Any) -> Path:
        return write_events(tmp_path / name, **kwargs)

    return make


class LogLines(list[str]):
    """The messages of the ``mlaas_dask`` logger while :func:`logged` is active."""

    @property
    def text(self) -> str:
        return "\n".join(self)


class _Collect(logging.Handler):
    def __init__(self, lines: LogLines, on_line: Callable[[str], Any] | None) -> None:
        super().__init__(logging.INFO)
        self.lines, self.on_line = lines, on_line

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message)
        if self.on_line is not None:
            self.on_line(message)


@contextlib.contextmanager
def logged(on_line: Callable[[str], Any] | None = None) -> Iterator[LogLines]:
    """Collect the package's progress lines inside the block; ``on_line`` is called with
    each as it is logged (to act at a point of a job, e.g. stop a server when reading
    starts)."""
    logger = logging.getLogger("mlaas_dask")
    lines = LogLines()
    handler = _Collect(lines, on_line)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def dak_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NanoAOD-like sig/bkg/third files and a torch network file (dask-awkward tests)."""
    from helpers import DAK_MLP, nano_file

    folder = tmp_path_factory.mktemp("dak")
    nano_file(folder / "sig.root", 1, 70)
    nano_file(folder / "bkg.root", 2, 30)
    nano_file(folder / "third.root", 3, 120)
    (folder / "net.py").write_text(textwrap.dedent(DAK_MLP))
    return folder


@pytest.fixture(scope="module")
def dak_bundles(client: Any, dak_sample: Path) -> dict[str, Path]:
    """One bundle per model kind, and a multi-class XGBoost one, trained by ``train``
    on ``dak_sample``."""
    from helpers import DAK_MODELS, dak_job_text

    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    out = {}
    for kind, model in DAK_MODELS.items():
        if kind == "onnx":
            pytest.importorskip("torch")
        job = job_from_text(dak_job_text(dak_sample, model), base=dak_sample)
        out[kind] = train(job, cluster=client, out=dak_sample / kind, progress=False).bundle
    text = dak_job_text(dak_sample, DAK_MODELS["xgboost"], multiclass=True)
    job = job_from_text(text, base=dak_sample)
    out["multiclass"] = train(job, cluster=client, out=dak_sample / "multi", progress=False).bundle
    return out
