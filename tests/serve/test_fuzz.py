"""The fuzzer of benchmarks/fuzz_serve.py, briefly (a few hundred requests, fixed seed),
against a real uvicorn on 127.0.0.1 serving an XGBoost and a scikit-learn bundle: no
response >= 500, no broken connection, no 5xx in the server's own metrics, no error in its
log. Warnings are errors here, so a numpy warning in a handler shows up as a 500."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mlaas_dask.serve import ServeConfig, create_app

from .conftest import TOKEN, Trained

FUZZER = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_serve.py"


def _fuzzer():  # the benchmark script, as a module
    spec = importlib.util.spec_from_file_location("fuzz_serve", FUZZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_serve", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["fuzz_serve"])
    return sys.modules["fuzz_serve"]


def test_fuzzed_requests_never_get_a_5xx(start_server, make_repo, trained: Trained,
                                         trained_sklearn: Trained, bundle_archive: bytes,
                                         caplog: pytest.LogCaptureFixture):
    fuzz = _fuzzer()
    root = make_repo({"hep": [trained.path], "skl": [trained_sklearn.path]})
    live = start_server(create_app(ServeConfig(models=root, threads=2, poll_s=0),
                                   token=TOKEN))
    target = fuzz.Target(live.url, TOKEN, [fuzz.real_events("hep", trained, 50),
                                           fuzz.real_events("skl", trained_sklearn, 50)],
                         bundle_archive)
    before = fuzz.server_errors(target)
    report = fuzz.run_fuzz(target, requests=500, seed=7, concurrency=3, log=lambda _: None)
    assert report.failures == [], "\n".join(report.failures)
    assert fuzz.new_server_errors(before, fuzz.server_errors(target)) == []
    assert report.total == 500
    assert set(report.counts) == set(fuzz.ENDPOINTS)  # every endpoint was fuzzed
    assert sum(c["4xx"] for c in report.counts.values()) > 100  # and mostly refused
    errors = [r for r in caplog.records if r.name.startswith("mlaas_dask") and r.levelno >= 40]
    assert errors == [], [r.getMessage() for r in errors]
