"""The job-file reference: generated from the validator's schema, kept in docs/ in sync,
printed by ``mlaas reference``; its defaults are the ones a job gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlaas_dask.cli import main
from mlaas_dask.errors import ConfigError
from mlaas_dask.job import JOB_SCHEMA, job_from_text, job_reference
from mlaas_dask.reference import entries

DOCS = Path(__file__).resolve().parents[1] / "docs" / "job-reference.md"


def test_docs_copy_is_the_generated_reference() -> None:
    assert DOCS.read_text() == job_reference(), (
        "docs/job-reference.md is out of date: run 'mlaas reference > docs/job-reference.md'")


def test_every_key_is_listed_once_with_its_meaning() -> None:
    text = job_reference()
    for path, spec in entries(JOB_SCHEMA):
        if "." in path:
            listed = re.findall(rf"^- \*\*`{re.escape(path)}`\*\* \((.*?)\): (.*)$", text,
                                flags=re.MULTILINE)
            assert len(listed) == 1, path
            assert spec.doc in listed[0][1], path
        else:
            assert f"`{path}`" in text, path
    assert "default `300`" in _line(text, "model.num_boost_round")
    assert "one of `adam`, `adamw`, `sgd`" in _line(text, "model.optimizer")
    assert "from 0 to 1" in _line(text, "split.train")
    assert "required" in _line(text, "features.collections.<name>.fields")


def test_the_defaults_listed_are_those_a_job_gets(tmp_path: Path) -> None:
    job = job_from_text("dataset: {groups: [{name: s, files: [s.root], label: 1}, "
                        "{name: b, files: [b.root], label: 0}]}\nfeatures: {flat: [x]}\n",
                        tmp_path)
    text = job_reference()
    for key, value in (("model.num_boost_round", job.model.num_boost_round),
                       ("model.epochs", job.model.epochs),
                       ("model.batch_size", job.model.batch_size),
                       ("model.learning_rate", job.model.learning_rate),
                       ("dataset.step_size", job.dataset.step_size),
                       ("dataset.tree", job.dataset.tree),
                       ("split.train", job.split.train),
                       ("split.seed", job.split.seed)):
        assert f"default `{value}`" in _line(text, key), key


def test_one_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reference", "model"]) == 0
    shown = capsys.readouterr().out
    assert "`model.epochs`" in shown and "`model.kind`" in shown
    assert "dataset.tree" not in shown and "## `model`" in shown
    assert main(["reference", "dataset.groups"]) == 0
    shown = capsys.readouterr().out
    assert "`dataset.groups[].label`" in shown and "`dataset.tree`" not in shown


def test_an_unknown_section_names_the_closest_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reference", "modle"]) == 2
    message = capsys.readouterr().err
    assert "no key 'modle'" in message and "Did you mean 'model'" in message
    assert "Traceback" not in message
    with pytest.raises(ConfigError, match=r"Did you mean 'dataset\.groups'"):
        job_reference("dataset.group")


def _line(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- **`{key}`**"))
