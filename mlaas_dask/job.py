"""The YAML job file: dataset, features, model, split, output -- validated on load.

Relative file paths in a job resolve against the folder of the job file, so a job runs
the same from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas_dask.config import (
    NUMBER,
    Field,
    Validator,
    fraction,
    load_yaml,
    non_negative,
    parse_yaml,
    positive,
)
from mlaas_dask.data.multiplicity import DEFAULT_QUANTILE
from mlaas_dask.errors import ConfigError, FeatureError, did_you_mean
from mlaas_dask.features import FeatureSpec


def _expression(value: str) -> str | None:
    from mlaas_dask.features import Expression

    try:
        Expression(value, "expression")
    except FeatureError as err:
        return str(err)
    return None


def _redirector(value: str) -> str | None:
    from mlaas_dask.data.remote import normalise_url

    if normalise_url(value).startswith(("root://", "roots://", "https://", "http://")):
        return None
    return (f"{value!r} is not a redirector URL; use e.g. 'root://cms-xrd-global.cern.ch/' "
            "or an https:// prefix.")


def _size(value: Any) -> str | None:
    from mlaas_dask.data.cache import parse_size

    try:
        parse_size(value)
    except ConfigError as err:
        return str(err)
    return None


CACHE_SCHEMA = {
    "dir": Field((str,), "the cache folder (local to each worker machine)", required=True),
    "max_size": Field((str, int), "size bound, e.g. '20 GB'; the least recently used "
                      "entries are evicted", default="10 GB", check=_size),
}

GROUP_SCHEMA = {
    "name": Field((str,), "a name for this group of files, e.g. 'ttH'", required=True),
    "files": Field((list,), "paths, globs, root:// / https:// URLs or CMS /store/ names",
                   default=[], items=Field((str,), "a path, glob, URL or /store/ name")),
    "file_list": Field((str,), "a text file listing files (paths, URLs or /store/ names), "
                       "one a line"),
    "label": Field((int, str), "the class: 0/1 for binary, or a class name (omit it when "
                   "dataset.label_branch gives the label of every event)"),
    "weight": Field(NUMBER, "per-event weight of the group, e.g. xsec * lumi / N",
                    default=1.0, check=positive),
}

DATASET_SCHEMA = {
    "tree": Field((str,), "the TTree (or RNTuple) name", default="Events"),
    "groups": Field((list,), "file groups with labels", required=True,
                    items=Field((dict,), "a file group", schema=GROUP_SCHEMA)),
    "cut": Field((str,), "a selection, e.g. 'nJet >= 2 and MET_pt > 20'",
                 check=_expression),
    "weight_branch": Field((str,), "a per-event weight branch, e.g. genWeight"),
    "negative_weights": Field((str,), "what negative event weights (NLO samples) become in "
                              "the training and validation splits: abs (train with |w|), "
                              "keep (signed; not XGBoost), zero, or drop the events; the "
                              "test split keeps the signed weights for the weighted AUC",
                              default="abs", choices=("abs", "keep", "zero", "drop")),
    "step_size": Field((int,), "events per partition", default=500_000, check=positive),
    "label_branch": Field((str,), "a branch holding each event's class index (0, 1, ...), "
                          "instead of one label per group"),
    "classes": Field((list,), "class names for label_branch values 0, 1, ...",
                     items=Field((str,), "a class name")),
    "signal": Field((str,), "the signal of a binary job: a class name (a group's label) or "
                    "a group name; the score is P(signal). Needed when the two labels are "
                    "names and neither is 'signal'; with labels 1/0 the signal is 1"),
    "id_branches": Field((list,), "branches identifying an event (split, predictions)",
                         default=["run", "luminosityBlock", "event"],
                         items=Field((str,), "a branch name")),
    "redirectors": Field((list,), "XRootD / HTTPS redirectors for /store/ names, tried in "
                         "order (regional first, then global)", default=[],
                         items=Field((str,), "a redirector URL, e.g. "
                                     "root://cms-xrd-global.cern.ch/",
                                     check=_redirector)),
    "timeout": Field(NUMBER, "seconds one remote request may take", default=60.0,
                     check=positive),
    "retries": Field((int,), "retries of a transient read error at one place",
                     default=3, check=non_negative),
    "backoff": Field(NUMBER, "first retry delay in seconds (doubles, with jitter)",
                     default=1.0, check=non_negative),
    "on_error": Field((str,), "what a file or partition that cannot be read does",
                      default="fail", choices=("fail", "skip")),
    "min_fraction": Field(NUMBER, "with on_error: skip, the least fraction of the "
                          "events in the files that opened that must be read; files that "
                          "do not open count apart: at most (1 - min_fraction) of the "
                          "files, and always one, may fail to open", default=0.9,
                          check=fraction),
    "cache": Field((dict, str), "a local feature cache: a folder, or {dir, max_size}",
                   schema=CACHE_SCHEMA),
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
    "quantile": Field(NUMBER, "multiplicity quantile for n: auto", default=DEFAULT_QUANTILE,
                      check=fraction),
}

FEATURES_SCHEMA = {
    "flat": Field((list,), "flat branches", default=[], items=Field((str,), "a branch")),
    "collections": Field((dict,), "jagged collections by name", default={},
                         values=Field((dict,), "a collection", schema=COLLECTION_SCHEMA)),
    "derived": Field((dict,), "event-level features from expressions", default={},
                     values=Field((str,), "an expression", check=_expression)),
}

MODEL_SCHEMA = {
    "kind": Field((str,), "the model type (default: xgboost; with 'class', sklearn; with "
                  "'file', detected from what the file imports: torch, keras or sklearn)",
                  choices=("xgboost", "sklearn", "torch", "keras")),
    "class": Field((str,), "an importable estimator class, e.g. "
                   "sklearn.linear_model.SGDClassifier"),
    "file": Field((str,), "a Python file defining model() or model(n_features) that "
                  "returns an estimator, a torch.nn.Module or a Keras model (MLaaS4HEP "
                  "style)"),
    "epochs": Field((int,), "passes over the training data (partial_fit models, neural "
                    "networks)", default=5, check=positive),
    "batch_size": Field((int,), "events per training batch (neural networks)", default=256,
                        check=positive),
    "learning_rate": Field(NUMBER, "the optimizer's learning rate (neural networks)",
                           default=1e-3, check=positive),
    "optimizer": Field((str,), "the optimizer (neural networks; a file's "
                       "optimizer(params) overrides it)", default="adam",
                       choices=("adam", "adamw", "sgd")),
    "weight_decay": Field(NUMBER, "L2 weight decay of the optimizer (neural networks)",
                          default=0.0, check=non_negative),
    "lr_schedule": Field((str,), "learning-rate schedule over the epochs (neural networks)",
                         default="none", choices=("none", "cosine", "step", "plateau")),
    "seed": Field((int,), "seed of the weights' initialisation and the batch order "
                  "(neural networks)", default=0),
    "stream": Field((bool,), "neural networks: true streams the data (the partitions are "
                    "read once for their statistics, then again every epoch -- from the "
                    "feature cache when dataset.cache is set -- with memory "
                    "bounded by the prefetch depth; nothing is held on the workers); "
                    "false holds the feature matrix on the workers; left out, it "
                    "streams when the matrix is estimated not to fit in half the "
                    "workers' memory limits (one line says which)"),
    "outputs": Field((str,), "what the network gives: logits or probabilities (neural "
                     "networks; detected when left out)", choices=("logits", "probabilities")),
    "sample_size": Field((int,), "events used to fit models without partial_fit",
                         default=500_000, check=positive),
    "scale": Field((bool,), "standard-scale features (fitted on the training split) for "
                   "non-XGBoost models", default=True),
    "fill_value": Field(NUMBER, "value replacing NaN (missing objects) for non-XGBoost "
                        "models", default=0.0),
    "device": Field((str,), "where XGBoost or the network trains", default="auto",
                    choices=("auto", "cpu", "cuda")),
    "params": Field((dict,), "XGBoost parameters (max_depth, eta, ...)", default={}),
    "num_boost_round": Field((int,), "maximum boosting rounds", default=300,
                             check=positive),
    "early_stopping_rounds": Field((int,), "stop after this many rounds (epochs for "
                                   "neural networks) without improvement on the validation "
                                   "split", default=20),
    "balance_classes": Field((bool,), "reweight classes to equal total weight",
                             default=True),
    "checkpoint_every": Field((int,), "boosting rounds (XGBoost) or training blocks "
                              "(partial_fit) between two checkpoints that training resumes "
                              "from after losing a worker; 0: resume from the start",
                              default=10, check=non_negative),
    "max_retries": Field((int,), "lost workers that training resumes after before the job "
                         "fails", default=2, check=non_negative),
    "collective_timeout": Field((int,), "seconds an XGBoost collective operation (or a "
                                "data-parallel network's allreduce) may wait for another "
                                "worker before training fails", default=300,
                                check=positive),
    "workers": Field((int,), "workers that train a neural network together, data-parallel "
                     "(torch.distributed: gloo on CPU, NCCL on GPU), each on the partitions "
                     "it holds; 1: one worker", default=1, check=positive),
}

SPLIT_SCHEMA = {
    "train": Field(NUMBER, "fraction of events for training", default=0.7, check=fraction),
    "validation": Field(NUMBER, "fraction for early stopping", default=0.15,
                        check=fraction),
    "test": Field(NUMBER, "fraction for the reported metrics", default=0.15,
                  check=fraction),
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
    "cluster": Field((str,), "where Dask runs: local, local:N, a cluster file's NAME or "
                     "path (relative to the job file), or a scheduler address",
                     default="local"),
    "tune": Field((dict,), "hyperparameter search for 'mlaas tune'", default=None),
}

TUNE_SCHEMA = {
    "space": Field((dict,), "parameter -> list of values, or {low, high, log, int}",
                   required=True),
    "trials": Field((int,), "configurations to try", default=8, check=positive),
    "method": Field((str,), "how configurations are drawn", default="random",
                    choices=("random", "grid")),
    "sample_size": Field((int,), "training events per trial (a bounded sample)",
                         default=200_000, check=positive),
    "seed": Field((int,), "seed of the random draws", default=0),
}
JOB_SCHEMA["tune"].schema = TUNE_SCHEMA

REWEIGHT_SCHEMA = {
    "variables": Field((list,), "features whose distribution the classes are reweighted in, "
                       "e.g. [MET_pt] or [Jet_pt_0, Jet_eta_0]", required=True,
                       items=Field((str,), "a feature name")),
    "bins": Field((int, list), "bins per variable (quantiles of the target class), or the "
                  "edges: one list, or one list per variable", default=20),
    "to": Field((str,), "the distribution to match: signal (binary), a class name, or flat",
                default="signal"),
    "max_factor": Field(NUMBER, "the largest factor an event gets", default=10.0,
                        check=positive),
    "sample_events": Field((int,), "events per group the histograms are made from",
                           default=200_000, check=positive),
}
JOB_SCHEMA["reweight"] = Field((dict,), "kinematic reweighting of the training splits, so "
                               "the classifier cannot learn a spectrum", default=None,
                               schema=REWEIGHT_SCHEMA)


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
    label_branch: str | None = None
    class_names: list[str] | None = None
    #: the signal class of a binary job with named labels (the score is P(signal))
    signal: str | None = None
    #: what negative weights become in training (mlaas_dask.train.weights)
    negative_weights: str = "abs"
    cut: str | None = None
    weight_branch: str | None = None
    step_size: int = 500_000
    id_branches: list[str] = field(default_factory=lambda: ["run", "luminosityBlock", "event"])
    redirectors: list[str] = field(default_factory=list)
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    on_error: str = "fail"
    min_fraction: float = 0.9
    cache_dir: str | None = None
    cache_max_size: str | int = "10 GB"

    @property
    def policy(self) -> Any:
        """The :class:`~mlaas_dask.data.remote.ReadPolicy` of these settings."""
        from mlaas_dask.data.remote import ReadPolicy

        return ReadPolicy(redirectors=tuple(self.redirectors), timeout=float(self.timeout),
                          retries=int(self.retries), backoff=float(self.backoff),
                          max_backoff=max(30.0, float(self.backoff)),
                          on_error=self.on_error, min_fraction=float(self.min_fraction))

    @property
    def feature_cache(self) -> Any:
        """The :class:`~mlaas_dask.data.cache.FeatureCache`, or None without one."""
        if not self.cache_dir:
            return None
        from mlaas_dask.data.cache import FeatureCache, parse_size

        return FeatureCache(self.cache_dir, parse_size(self.cache_max_size))

    @property
    def classes(self) -> list[str]:
        """Class names in label order: integer labels sort numerically and are named by
        their groups ('background', 'signal' for 0/1 when unnamed); string labels sort in
        order of first appearance, except that a binary job's signal comes last (index 1:
        the score is P(signal)). With a label branch, the configured class names."""
        if self.label_branch:
            return list(self.class_names or ["background", "signal"])
        labels = [g.label for g in self.groups]
        if all(isinstance(x, int) for x in labels):
            ordered = sorted(set(labels))
            names: dict[int | str, str] = {}
            for group in self.groups:
                names.setdefault(group.label, group.name)
            if ordered == [0, 1]:
                return ["background", "signal"]
            return [str(names[x]) for x in ordered]
        named = [str(x) for x in dict.fromkeys(labels)]
        if self.signal is not None and len(named) == 2 and self.signal in named:
            return [n for n in named if n != self.signal] + [self.signal]
        return named

    def label_index(self, group: FileGroup) -> int:
        if self.label_branch:
            return -1  # every event's label comes from the branch
        labels = [g.label for g in self.groups]
        if all(isinstance(x, int) for x in labels):
            return sorted(set(labels)).index(group.label)
        return self.classes.index(str(group.label))


@dataclass
class ModelConfig:
    """The classifier: XGBoost (default) or a scikit-learn estimator (class or file)."""

    kind: str = "xgboost"
    device: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    num_boost_round: int = 300
    early_stopping_rounds: int | None = 20
    balance_classes: bool = True
    estimator_class: str | None = None
    file: str | None = None
    epochs: int = 5
    sample_size: int = 500_000
    scale: bool = True
    fill_value: float = 0.0
    checkpoint_every: int = 10
    max_retries: int = 2
    collective_timeout: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "none"
    seed: int = 0
    stream: bool | None = None
    outputs: str | None = None
    workers: int = 1


@dataclass
class TuneConfig:
    """Hyperparameter search: a space, a number of trials, a bounded sample."""

    space: dict[str, Any]
    trials: int = 8
    method: str = "random"
    sample_size: int = 200_000
    seed: int = 0


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
    tune: TuneConfig | None = None
    #: the ``reweight`` mapping (mlaas_dask.train.reweight), validated
    reweight: dict[str, Any] | None = None
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def load_job(path: str | Path, *, events: bool = False) -> Job:
    """Load and validate a YAML job file.

    ``events``: the groups' events come from dask-awkward collections, given to
    ``train(job, events={group: collection})``; the groups then list no files.

    Raises
    ------
    ConfigError
        Naming the file, the key and its line, and what is allowed.
    """
    path = Path(path)
    data, lines = load_yaml(path)
    job = job_from_dict(data, Validator(str(path), lines, file=str(path)), base=path.parent,
                        events=events)
    job.source = path
    return job


def job_from_text(text: str, base: Path | None = None, name: str = "<job>", *,
                  events: bool = False) -> Job:
    """:func:`load_job` for YAML text (notebooks, tests)."""
    data, lines = parse_yaml(text, name)
    return job_from_dict(data, Validator(name, lines), base=base or Path.cwd(), events=events)


def _group_files(g: dict[str, Any], where: tuple[Any, ...], validator: Validator, base: Path,
                 events: bool) -> None:
    """A group's files, its file list read in (none when its events come from
    collections)."""
    if events:
        if g["files"] or g["file_list"]:
            raise validator.error(where, f"group {g['name']!r} lists files, but its events "
                                  "come from train(job, events=...): remove its files.")
    elif g["file_list"]:
        from mlaas_dask.data.dataset import read_file_list
        from mlaas_dask.errors import DataError

        try:
            g["files"] = [*g["files"], *read_file_list(_resolve(g["file_list"], base))]
        except DataError as err:
            raise validator.error((*where, "file_list"), str(err)) from None
    elif not g["files"]:
        raise validator.error(where, f"group {g['name']!r} has no files: give 'files' "
                              "(paths, globs, URLs) or 'file_list' (a text file).")


def _check_labels(groups: list[FileGroup], validator: Validator) -> None:
    """Every group's label is a number, or every one a name: mixed, a number would be read
    as a name (``1`` next to ``ttbar``) and silently make a class of its own."""
    numbers = [i for i, g in enumerate(groups) if isinstance(g.label, int)]
    names = [i for i, g in enumerate(groups) if isinstance(g.label, str)]
    if numbers and names:
        a, b = groups[numbers[0]], groups[names[0]]
        raise validator.error(("dataset", "groups", numbers[0], "label"),
                              f"group {a.name!r} has the label {a.label} (a number) but "
                              f"group {b.name!r} has {b.label!r} (a name); give every group "
                              "a name (label: ttH) or every group a number (label: 1 for "
                              "signal, 0 for background).")


def _signal(config: DatasetConfig, signal: str | None, validator: Validator) -> str | None:
    """The signal class of a binary job (see ``dataset.signal``); ``None`` where the labels
    already say it (1/0, a label branch) or the job is multi-class."""
    where = ("dataset", "signal")
    classes = config.classes
    if config.label_branch or len(classes) != 2:
        if signal is not None:
            kind = ("with dataset.label_branch the signal is the label value 1"
                    if config.label_branch else
                    f"a job with {len(classes)} classes scores each one (score_<class>)")
            raise validator.error(where, f"dataset.signal is for binary jobs with group "
                                  f"labels; {kind}. Remove dataset.signal.")
        return None
    by_group = {g.name: str(g.label) for g in config.groups}
    if all(isinstance(g.label, int) for g in config.groups):
        if signal is None or signal == "signal" or by_group.get(signal) == "1":
            return None
        raise validator.error(where, f"dataset.signal is {signal!r}, but label 1 (the "
                              "signal) belongs to group(s) "
                              + ", ".join(repr(g.name) for g in config.groups if g.label == 1)
                              + ". Labels 1/0 already name the signal: remove "
                              "dataset.signal, or swap the labels.")
    if signal is None:
        plain = [c for c in classes if c.lower() == "signal"]
        if len(plain) == 1:
            return plain[0]
        raise validator.error(("dataset", "groups"), f"this binary job's classes are "
                              f"{classes[0]!r} and {classes[1]!r}: which one is the signal? "
                              f"Add 'signal: {classes[0]}' (or '{classes[1]}') under dataset; "
                              "the score is P(signal).")
    chosen = signal if signal in classes else by_group.get(signal)
    if chosen is None:
        raise validator.error(where, f"dataset.signal is {signal!r}, which is neither a "
                              "class nor a group of this job."
                              + did_you_mean(signal, [*classes, *by_group], "names")
                              + f" Give one of the classes {classes[0]!r}, {classes[1]!r}.")
    return chosen


def job_from_dict(data: Any, validator: Validator, base: Path, *, events: bool = False) -> Job:
    """Validate an already parsed job mapping."""
    if data is None:
        raise validator.error((), "the job file is empty; it needs at least 'dataset' and "
                                  "'features' (see examples/sample.yaml).")
    clean = validator.mapping(data, JOB_SCHEMA)
    dataset = clean["dataset"]
    for i, g in enumerate(dataset["groups"]):
        _group_files(g, ("dataset", "groups", i), validator, base, events)
    groups = [
        FileGroup(
            name=g["name"],
            files=[_resolve(f, base) for f in g["files"]],
            label=g["label"],  # None with a label branch
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
        id_branches=list(dataset["id_branches"]), label_branch=dataset["label_branch"],
        class_names=dataset["classes"], negative_weights=dataset["negative_weights"],
        redirectors=list(dataset["redirectors"]), timeout=dataset["timeout"],
        retries=dataset["retries"], backoff=dataset["backoff"],
        on_error=dataset["on_error"], min_fraction=dataset["min_fraction"],
        **_cache_settings(dataset["cache"], base),
    )
    for i, group in enumerate(groups):
        if group.label is None and not dataset_config.label_branch:
            raise validator.error(("dataset", "groups", i), f"group {group.name!r} has no "
                                  "label; give 'label: 0/1/name', or set "
                                  "dataset.label_branch to read labels from a branch.")
    _check_labels(groups, validator)
    if len(set(dataset_config.classes)) < 2:
        raise validator.error(("dataset", "groups"), "all groups have the same label "
                              f"{groups[0].label!r}; a classifier needs at least two classes.")
    dataset_config.signal = _signal(dataset_config, dataset["signal"], validator)
    try:
        features = FeatureSpec.from_dict(clean["features"])
    except FeatureError as err:
        raise validator.error(("features",), str(err)) from None
    model = _model_config(clean["model"] or {k: f.default for k, f in MODEL_SCHEMA.items()},
                          validator, base)
    split = SplitConfig(**(clean["split"] or {k: f.default for k, f in SPLIT_SCHEMA.items()}))
    total = split.train + split.validation + split.test
    if abs(total - 1) > 1e-6 or split.train <= 0 or split.test <= 0:
        raise validator.error(("split",), f"train + validation + test must add up to 1 "
                              f"(got {total:g}) with train and test above 0.")
    if model.early_stopping_rounds and split.validation <= 0:
        raise validator.error(("split", "validation"), "early stopping needs a validation "
                              "fraction above 0; set model.early_stopping_rounds: 0 to "
                              "train without it.")
    if model.kind == "xgboost" and dataset_config.negative_weights == "keep":
        raise validator.error(("dataset", "negative_weights"), "XGBoost cannot train with "
                              "negative weights (its gradients need weights of 0 or more); "
                              "use negative_weights: abs (the default), zero or drop, or a "
                              "network or scikit-learn model for keep.")
    output = (clean["output"] or {}).get("dir") or "bundles/model"
    tune = TuneConfig(**clean["tune"]) if clean["tune"] else None
    return Job(dataset=dataset_config, features=features, model=model, split=split,
               output=_resolve(output, base),
               cluster=_resolve_cluster(clean["cluster"], base), tune=tune,
               reweight=clean["reweight"],
               source=None, raw=data)


def _model_config(model: dict[str, Any], validator: Validator, base: Path) -> ModelConfig:
    model = dict(model)
    estimator_class, file = model.pop("class"), model.pop("file")
    kind = _model_kind(model.pop("kind"), estimator_class, file, validator, base)
    if kind == "sklearn" and bool(estimator_class) == bool(file):
        raise validator.error(("model",), "a sklearn model needs exactly one of 'class' "
                              "(e.g. class: sklearn.linear_model.SGDClassifier) or 'file' "
                              "(a Python file defining model()).")
    if kind == "xgboost" and (estimator_class or file):
        raise validator.error(("model", "kind"), "kind: xgboost takes no 'class' or 'file'; "
                              "use kind: sklearn for your own estimator.")
    return ModelConfig(kind=kind, estimator_class=estimator_class,
                       file=_resolve(file, base) if file else None, **model)


def _model_kind(kind: str | None, estimator_class: str | None, file: str | None,
                validator: Validator, base: Path) -> str:
    """The model kind: as given, else detected from the model file (torch, keras or
    sklearn), else sklearn for a class and xgboost without either."""
    if kind in ("torch", "keras") and (estimator_class or not file):
        raise validator.error(("model",), f"a {kind} model needs 'file' (a Python file "
                              "defining model(n_features) that returns the network) and no "
                              "'class'.")
    if kind is None and file and not estimator_class:
        from mlaas_dask.nn.modelfile import detect_kind

        try:
            return detect_kind(_resolve(file, base))
        except ConfigError as err:
            raise validator.error(("model", "file"), str(err)) from None
    return kind or ("sklearn" if estimator_class or file else "xgboost")


def _cache_settings(cache: Any, base: Path) -> dict[str, Any]:
    if not cache:
        return {}
    if isinstance(cache, str):
        cache = {"dir": cache, "max_size": CACHE_SCHEMA["max_size"].default}
    return {"cache_dir": _resolve(str(Path(cache["dir"]).expanduser()), base),
            "cache_max_size": cache["max_size"]}


def _resolve_cluster(cluster: str, base: Path) -> str:
    """A cluster file path in a job is relative to the job file; names and addresses are
    kept as they are (see mlaas_dask.cluster)."""
    if "://" not in cluster and cluster.endswith((".yaml", ".yml")):
        return _resolve(cluster, base)
    return cluster


def _resolve(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


JOB_REFERENCE_INTRO = """\
Every key a job file (`mlaas train JOB.yaml`) may hold, generated from the schema that
validates it (`mlaas reference` prints this; `mlaas reference model` one section).
Relative paths resolve against the job file's folder. `[]` marks the keys of each item
of a list (`dataset.groups[].name`), `<name>` a key you choose
(`features.collections.<name>.fields`, e.g. `features.collections.Jet.fields`)."""


def job_reference(section: str | None = None) -> str:
    """The job file's reference (Markdown), from :data:`JOB_SCHEMA`; ``section`` (a
    dotted key such as ``model`` or ``dataset.groups``) keeps only that part."""
    from mlaas_dask.reference import reference

    return reference(JOB_SCHEMA, "Job file reference", JOB_REFERENCE_INTRO, section)
