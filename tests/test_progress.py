"""Progress where there is no terminal (a batch job's log, a pipe, CI): plain lines, not a
bar redrawn with carriage returns."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mlaas_dask.logs import show_progress


def _slow(i: int) -> int:
    time.sleep(0.01)
    return i


def test_plain_lines_without_a_terminal(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    futures = client.map(_slow, range(20), pure=False)
    show_progress(futures, "Reading partitions")
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "Reading partitions: 0/20 done"
    assert [line.split(":")[1].split()[0] for line in lines[1:]] == [
        f"{n}/20" for n in range(2, 21, 2)]
    assert lines[-1].startswith("Reading partitions: 20/20 done (100%, ")
    assert client.gather(futures) == list(range(20))


def _fails(i: int) -> int:
    raise ValueError(f"task {i} failed")


def test_failed_tasks_count_as_done(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    futures = client.map(_fails, range(3), pure=False)
    show_progress(futures, "Scoring partitions")
    assert capsys.readouterr().out.splitlines()[-1].startswith("Scoring partitions: 3/3 done")
    with pytest.raises(ValueError, match=r"task \d failed"):
        client.gather(futures)


def test_nothing_to_wait_for(capsys: pytest.CaptureFixture[str]) -> None:
    show_progress([], "Trials")
    assert capsys.readouterr().out == ""


def test_multiclass_score_plot_has_one_panel_per_class_score() -> None:
    """Physicists cut on each class's score, not on the highest one."""
    import io

    import numpy as np
    from matplotlib.image import imread

    from mlaas_dask.train.metrics import scores_png

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    scores = rng.dirichlet([1, 1, 1], 600)
    binary = imread(io.BytesIO(scores_png(y > 0, scores[:, 0], np.ones(600), ["b", "s"])))
    three = imread(io.BytesIO(scores_png(y, scores, np.ones(600), ["ttH", "WJets", "QCD"])))
    assert binary.shape[1] == 600 and three.shape[1] == 3 * 420


def test_quiet_drops_xgboosts_rank_lines_and_keeps_the_rest() -> None:
    """XGBoost's tracker writes 'got rank' lines to fd 2 from a native thread; --quiet
    drops exactly those (in the process and in workers it starts) and nothing else."""
    import subprocess
    import sys

    code = (
        "import os, subprocess, sys\n"
        "from mlaas_dask.logs import native_lines_dropped\n"
        "with native_lines_dropped():\n"
        "    os.write(2, b'[11:48:03] Task [xgboost.dask-0]:tcp://127.0.0.1:42039 got rank 0\\n')\n"
        "    os.write(2, b'a real warning\\n')\n"
        "    subprocess.run([sys.executable, '-c', \"import os; os.write(2, "
        "b'[11:48:04] Task [xgboost.dask-1]:tcp://127.0.0.1:4 got rank 1\\\\n'"
        "b'child says hi\\\\n')\"])\n"
        "os.write(2, b'after\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          check=True)
    assert done.stderr.decode().splitlines() == ["a real warning", "child says hi", "after"]
