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
