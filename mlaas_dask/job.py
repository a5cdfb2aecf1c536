"""The YAML job file: dataset, features, model, split, output -- validated on load.

Relative file paths in a job resolve against the folder of the job file, so a job runs
the same from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas_dask.config import Field, Validator, load_yaml, parse_yaml
from mlaas_dask.errors import ConfigError, FeatureError
from mlaas_dask.features import FeatureSpec

_NUMBER = (int, float)


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive, got {value}."


def _expression(value: str) -> str | None:
    from mlaas_dask.features import Expression

    try:
        Expression(value, "expression")
    except FeatureError as err:
        return str(err)
    return None


def _fraction(value: Any) -> str | None:
    return None if 0 <= value <= 1 else f"must be between 0 and 1, got {value}."


GROUP_SCHEMA = {
    "name": Field((str,), "a name for this group of files, e.g. 'ttH'", required=True),
    "files": Field((list,), "paths, globs or root:// / https:// URLs", required=True,
                   items=Field((str,), "a path, glob or URL")),
    "label": Field((int, str), "the class: 0/1 for binary, or a class name", required=True),
    "weight": Field(_NUMBER, "per-event weight of the group, e.g. xsec * lumi / N",
                    default=1.0, check=_positive),
}

DATASET_SCHEMA = {
    "tree": Field((str,), "the TTree name", default="Events"),
    "groups": Field((list,), "file groups with labels", required=True,
                    items=Field((dict,), "a file group", schema=GROUP_SCHEMA)),
    "cut": Field((str,), "a selection, e.g. 'nJet >= 2 and MET_pt > 20'",
                 check=_expression),
    "weight_branch": Field((str,), "a per-event weight branch, e.g. genWeight"),
    "step_size": Field((int,), "events per partition", default=500_000, check=_positive),
    "id_branches": Field((list,), "branches identifying an event (split, predictions)",
                         default=["run", "luminosityBlock", "event"],
                         items=Field((str,), "a branch name")),
}

COLLECTION_SCHEMA = {
    "fields": Field((list,), "per-object fields, e.g. [pt, eta]", required=True,
                    items=Field((str,), "a field name")),
    "n": Field((int, str), "objects kept per event, or 'auto'", default="auto",
               check=lambda v: None if v == "auto" or (isinstance(v, int) and v > 0)
               else "must be a positive integer or 'auto'."),
    "sort_by": Field((str,), "field to order objects by (descending)"),
    "ascending": Field((bool,), "sort ascending instead", default=False),
    "multiplicity": Field((bool,), "add n<Collection> as a feature", default=True),
    "derived": Field((dict,), "per-object fields from expressions", default={},
                     values=Field((str,), "an expression", check=_expression)),
    "prefix": Field((str,), "branch prefix (default '<Collection>_')"),
    "quantile": Field(_NUMBER, "multiplicity quantile for n: auto", default=0.95,
                      check=_fraction),
}

FEATURES_SCHEMA = {
    "flat": Field((list,), "flat branches", default=[], items=Field((str,), "a branch")),
    "collections": Field((dict,), "jagged collections by name", default={},
                         values=Field((dict,), "a collection", schema=COLLECTION_SCHEMA)),
    "derived": Field((dict,), "event-level features from expressions", default={},
                     values=Field((str,), "an expression", check=_expression)),
}

MODEL_SCHEMA = {
    "kind": Field((str,), "the model type", default="xgboost", choices=("xgboost",)),
    "device": Field((str,), "where XGBoost trains", default="auto",
                    choices=("auto", "cpu", "cuda")),
    "params": Field((dict,), "XGBoost parameters (max_depth, eta, ...)", default={}),
    "num_boost_round": Field((int,), "maximum boosting rounds", default=300,
                             check=_positive),
    "early_stopping_rounds": Field((int,), "stop after this many rounds without "
                                   "improvement on the validation split", default=20),
    "balance_classes": Field((bool,), "reweight classes to equal total weight",
                             default=True),
}

SPLIT_SCHEMA = {
    "train": Field(_NUMBER, "fraction of events for training", default=0.7, check=_fraction),
    "validation": Field(_NUMBER, "fraction for early stopping", default=0.15,
                        check=_fraction),
    "test": Field(_NUMBER, "fraction for the reported metrics", default=0.15,
                  check=_fraction),
    "seed": Field((int,), "seed of the event hash that assigns splits", default=42),
}

OUTPUT_SCHEMA = {
    "dir": Field((str,), "where the model bundle is written", default="bundles/model"),
}

JOB_SCHEMA = {
    "dataset": Field((dict,), "which files, tree and labels", required=True,
                     schema=DATASET_SCHEMA),
    "features": Field((dict,), "the FeatureSpec", required=True, schema=FEATURES_SCHEMA),
    "model": Field((dict,), "the classifier", default=None, schema=MODEL_SCHEMA),
    "split": Field((dict,), "train / validation / test fractions", default=None,
                   schema=SPLIT_SCHEMA),
    "output": Field((dict,), "the bundle location", default=None, schema=OUTPUT_SCHEMA),
    "cluster": Field((str,), "where Dask runs: local, a scheduler address or a file",
                     default="local"),
}


@dataclass
class FileGroup:
    """Files of one class (and one cross-section weight)."""

    name: str
    files: list[str]
    label: int | str
    weight: float = 1.0


@dataclass
class DatasetConfig:
    """Where the events are: file groups, tree, selection, weights, partitioning."""

    groups: list[FileGroup]
    tree: str = "Events"
    cut: str | None = None
    weight_branch: str | None = None
    step_size: int = 500_000
    id_branches: list[str] = field(default_factory=lambda: ["run", "luminosityBlock", "event"])

    @property
    def classes(self) -> list[str]:
        """Class names in label order: integer labels sort numerically and are named by
        their groups ('background', 'signal' for 0/1 when unnamed); string labels sort in
        order of first appearance."""
        labels = [g.label for g in self.groups]
        if all(isinstance(x, int) for x in labels):
            ordered = sorted(set(labels))
            names = {}
            for group in self.groups:
                names.setdefault(group.label, group.name)
            if ordered == [0, 1]:
                return ["background", "signal"]
            return [str(names[x]) for x in ordered]
        return [str(x) for x in dict.fromkeys(labels)]

    def label_index(self, group: FileGroup) -> int:
        labels = [g.label for g in self.groups]
        if all(isinstance(x, int) for x in labels):
            return sorted(set(labels)).index(group.label)
        return list(dict.fromkeys(str(x) for x in labels)).index(str(group.label))


@dataclass
class ModelConfig:
    kind: str = "xgboost"
    device: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    num_boost_round: int = 300
    early_stopping_rounds: int | None = 20
    balance_classes: bool = True


@dataclass
class SplitConfig:
    train: float = 0.7
    validation: float = 0.15
    test: float = 0.15
    seed: int = 42


@dataclass
class Job:
    """A validated training job."""

    dataset: DatasetConfig
    features: FeatureSpec
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    output: str = "bundles/model"
    cluster: str = "local"
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def load_job(path: str | Path) -> Job:
    """Load and validate a YAML job file.

    Raises
    ------
    ConfigError
        Naming the file, the key and its line, and what is allowed.
    """
    path = Path(path)
    data, lines = load_yaml(path)
    job = job_from_dict(data, Validator(str(path), lines), base=path.parent)
    job.source = path
    return job


def job_from_text(text: str, base: Path | None = None, name: str = "<job>") -> Job:
    """:func:`load_job` for YAML text (notebooks, tests)."""
    data, lines = parse_yaml(text, name)
    return job_from_dict(data, Validator(name, lines), base=base or Path.cwd())


def job_from_dict(data: Any, validator: Validator, base: Path) -> Job:
    """Validate an already parsed job mapping."""
    if data is None:
        raise validator.error((), "the job file is empty; it needs at least 'dataset' and "
                                  "'features' (see examples/sample.yaml).")
    clean = validator.mapping(data, JOB_SCHEMA)
    dataset = clean["dataset"]
    groups = [
        FileGroup(
            name=g["name"],
            files=[_resolve(f, base) for f in g["files"]],
            label=g["label"],
            weight=float(g["weight"]),
        )
        for g in dataset["groups"]
    ]
    if not groups:
        raise validator.error(("dataset", "groups"), "'dataset.groups' is empty; list at "
                              "least one signal and one background group.")
    names = [g.name for g in groups]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise validator.error(("dataset", "groups", i, "name"),
                                  f"group name {name!r} is used twice.")
    dataset_config = DatasetConfig(
        groups=groups, tree=dataset["tree"], cut=dataset["cut"],
        weight_branch=dataset["weight_branch"], step_size=dataset["step_size"],
        id_branches=list(dataset["id_branches"]),
    )
    if len(set(dataset_config.classes)) < 2:
        raise validator.error(("dataset", "groups"), "all groups have the same label "
                              f"{groups[0].label!r}; a classifier needs at least two classes.")
    try:
        features = FeatureSpec.from_dict(clean["features"])
    except FeatureError as err:
        raise validator.error(("features",), str(err)) from None
    model = ModelConfig(**(clean["model"] or {k: f.default for k, f in MODEL_SCHEMA.items()}))
    split = SplitConfig(**(clean["split"] or {k: f.default for k, f in SPLIT_SCHEMA.items()}))
    total = split.train + split.validation + split.test
    if abs(total - 1) > 1e-6 or split.train <= 0 or split.test <= 0:
        raise validator.error(("split",), f"train + validation + test must add up to 1 "
                              f"(got {total:g}) with train and test above 0.")
    if model.early_stopping_rounds and split.validation <= 0:
        raise validator.error(("split", "validation"), "early stopping needs a validation "
                              "fraction above 0; set model.early_stopping_rounds: 0 to "
                              "train without it.")
    output = (clean["output"] or {}).get("dir") or "bundles/model"
    return Job(dataset=dataset_config, features=features, model=model, split=split,
               output=_resolve(output, base), cluster=clean["cluster"], source=None,
               raw=data)


def _resolve(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())
