"""A binary job's score is P(signal) whatever order its groups are listed in (issue 13,
item 1): labels 1/0 say it, two class names need ``dataset.signal`` unless one is
``signal``, and every other combination is an error that says what to write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot
from helpers import quiet

from mlaas_dask.bundle import ModelBundle
from mlaas_dask.errors import ConfigError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train


def job_text(groups: list[tuple[str, str, str]], signal: str | None = None,
             folder: str = ".") -> str:
    listed = "".join(f"    - {{name: {name}, files: [{folder}/{file}], label: {label}}}\n"
                     for name, file, label in groups)
    return ("dataset:\n  tree: events\n  id_branches: []\n  step_size: 2000\n"
            + (f"  signal: {signal}\n" if signal else "") + f"  groups:\n{listed}"
            "features:\n  flat: [MET_px, MET_py, NPrimaryVertices]\n"
            "  collections:\n    Jet: {fields: [E, btag], n: 3}\n"
            "model: {num_boost_round: 20, params: {max_depth: 3}}\n")


NAMED = [("st", "single_top.root", "single_top"), ("vv", "ww.root", "diboson")]


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        job_from_text(text, base=Path("/data"), name="job.yaml")
    return str(info.value)


def test_two_names_without_a_signal_is_a_question() -> None:
    message = _error(job_text(NAMED))
    assert "classes are 'single_top' and 'diboson': which one is the signal?" in message
    assert "signal: single_top" in message and "P(signal)" in message


@pytest.mark.parametrize("signal", ["single_top", "st"])
def test_the_signal_is_last_whatever_the_order(signal: str) -> None:
    for groups in (NAMED, NAMED[::-1]):
        dataset = job_from_text(job_text(groups, signal), base=Path("/data")).dataset
        assert dataset.classes == ["diboson", "single_top"]
        assert {g.name: dataset.label_index(g) for g in dataset.groups} == {"st": 1, "vv": 0}


def test_a_class_named_signal_needs_no_key() -> None:
    groups = [("a", "a.root", "background"), ("b", "b.root", "signal")]
    assert job_from_text(job_text(groups), base=Path("/data")).dataset.classes == [
        "background", "signal"]
    assert job_from_text(job_text(groups[::-1]), base=Path("/data")).dataset.classes == [
        "background", "signal"]


def test_bad_signals_are_explained() -> None:
    assert "Did you mean 'single_top'" in _error(job_text(NAMED, "singletop"))
    numbered = [("st", "a.root", "1"), ("vv", "b.root", "0")]
    assert "label 1 (the signal) belongs to group(s) 'st'" in _error(job_text(numbered, "vv"))
    three = [*NAMED, ("qcd", "c.root", "qcd")]
    assert "a job with 3 classes scores each one" in _error(job_text(three, "single_top"))
    mixed = [("st", "a.root", "1"), ("vv", "b.root", "ttbar")]
    message = _error(job_text(mixed))
    assert "group 'st' has the label 1 (a number) but group 'vv' has 'ttbar'" in message


def test_labels_one_and_zero_need_nothing() -> None:
    numbered = [("vv", "b.root", "0"), ("st", "a.root", "1")]
    dataset = job_from_text(job_text(numbered, "st"), base=Path("/data")).dataset
    assert dataset.classes == ["background", "signal"]
    assert {g.name: dataset.label_index(g) for g in dataset.groups} == {"st": 1, "vv": 0}


@pytest.mark.slow
def test_score_is_p_signal_on_cms_files(client, tmp_path: Path, hep_tutorial: Path) -> None:
    """The finding of the issue: listing the signal group first gave P(background)."""
    means = []
    for groups in (NAMED, NAMED[::-1]):
        text = job_text(groups, "single_top", folder=str(hep_tutorial))
        out = tmp_path / f"b{len(means)}"
        result = train(job_from_text(text, base=tmp_path), cluster=client, out=out, **quiet)
        assert result.metrics["auc"] > 0.8
        bundle = ModelBundle.load(result.bundle)
        assert bundle.classes == ["diboson", "single_top"] and bundle.output_names == ["score"]
        with uproot.open(hep_tutorial / "single_top.root") as file:
            events = file["events"].arrays(bundle.spec.branches())
        means.append(float(np.mean(bundle.predict_events(events))))
    assert min(means) > 0.6, means  # P(single top) on single-top events
    assert abs(means[0] - means[1]) < 0.05
