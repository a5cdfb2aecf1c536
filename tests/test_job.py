"""Job files: validation errors name the file, key, line and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlaas_dask.errors import ConfigError
from mlaas_dask.job import job_from_text, load_job

from conftest import REPO

GOOD = """\
dataset:
  tree: Events
  groups:
    - {name: sig, files: [s.root], label: 1, weight: 0.5}
    - {name: bkg, files: [b.root], label: 0}
features:
  flat: [MET_pt]
  collections:
    Jet: {fields: [pt, eta], n: 4, sort_by: pt}
model:
  params: {max_depth: 3}
"""


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        job_from_text(text, base=Path("/data"), name="job.yaml")
    return str(err.value)


def test_good_job_and_defaults() -> None:
    job = job_from_text(GOOD, base=Path("/data"))
    assert job.dataset.groups[0].files == ["/data/s.root"]
    assert job.dataset.groups[0].weight == 0.5 and job.dataset.groups[1].weight == 1.0
    assert job.dataset.classes == ["background", "signal"]
    assert job.features.feature_names[:3] == ["MET_pt", "nJet", "Jet_pt_0"]
    assert job.model.params == {"max_depth": 3} and job.model.num_boost_round == 300
    assert (job.split.train, job.split.validation, job.split.test) == (0.7, 0.15, 0.15)


def test_unknown_key_names_line_and_closest_spelling() -> None:
    message = error_for(GOOD.replace("model:", "modle:"))
    assert message.startswith("job.yaml, line 10: unknown key 'modle' in the top level.")
    assert "Did you mean 'model'?" in message
    assert ("Available keys: cluster, dataset, features, model, output, reweight, split, "
            "tune.") in message


def test_nested_unknown_key() -> None:
    message = error_for(GOOD.replace("sort_by: pt", "sortby: pt"))
    assert "line 9" in message and "'sortby'" in message and "'sort_by'" in message


def test_wrong_type_names_key_and_expected_type() -> None:
    message = error_for(GOOD.replace("weight: 0.5", "weight: heavy"))
    assert "line 4" in message and "'dataset.groups[0].weight'" in message
    assert "must be an integer or a number" in message and "'heavy'" in message


def test_missing_required_field() -> None:
    message = error_for(GOOD.replace(", label: 0", ""))
    assert "line 5: group 'bkg' has no label; give 'label: 0/1/name'" in message
    assert "dataset.label_branch" in message


def test_bad_choice_lists_allowed_values() -> None:
    message = error_for(GOOD.replace("model:\n", "model:\n  device: gpu\n"))
    assert "'model.device' is 'gpu'; allowed values: 'auto', 'cpu', 'cuda'." in message


def test_invalid_yaml_has_line_and_column() -> None:
    message = error_for("dataset:\n  tree: [Events\nfeatures: {}\n")
    assert message.startswith("job.yaml, line 3, column 9: invalid YAML")


def test_single_class_is_refused() -> None:
    message = error_for(GOOD.replace("label: 0", "label: 1"))
    assert "at least two classes" in message


def test_split_must_add_up() -> None:
    message = error_for(GOOD + "split: {train: 0.8, validation: 0.3, test: 0.1}\n")
    assert "must add up to 1 (got 1.2)" in message


def test_bad_feature_expression_is_reported_with_the_job() -> None:
    message = error_for(GOOD.replace("flat: [MET_pt]", "flat: [MET_pt]\n  derived: {x: 'a +'}"))
    assert message.startswith("job.yaml, line 8: 'features.derived.x': The expression 'a +'")
    assert "not a valid expression" in message


def test_missing_job_file() -> None:
    with pytest.raises(ConfigError, match=r"Job file /no/such.yaml does not exist"):
        load_job("/no/such.yaml")


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")))
def test_shipped_examples_are_valid(example: Path) -> None:
    job = load_job(example)
    assert job.features.branches()
