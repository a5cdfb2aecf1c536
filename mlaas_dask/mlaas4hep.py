"""Import of MLaaS4HEP jobs: params.json + files.txt + labels.txt (+ model.py, preproc.json).

Every MLaaS4HEP field is mapped onto the job file or reported as having no equivalent;
nothing is dropped silently. ``mlaas train --from-mlaas4hep ... --print-job`` shows the
equivalent YAML so users can switch to a job file.

Differences in the features, by design: MLaaS4HEP pads every jagged branch to the longest
list seen in a full first pass and min-max normalises each column; mlaas_dask keeps the
``n`` leading objects per collection (``n`` = the 95th percentile of the multiplicity in a
sample, so one busy event does not blow up the matrix), sorted by pt, fills missing ones
with NaN (XGBoost's "missing", or ``fill_value`` plus standard scaling for scikit-learn
models) and adds the multiplicity as a feature.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas_dask.errors import ConfigError

#: MLaaS4HEP params with no mlaas_dask equivalent, and why
UNMAPPED = {
    "nevts": "mlaas_dask reads every event of every file (no per-file event limit)",
    "shuffle": "always on: the split is an event hash, partial_fit visits partitions "
               "in random order and networks get batches mixed across partitions",
    "hist": "plots are always written to the bundle (roc.png, scores.png)",
    "verbose": "progress is always shown (mlaas train --quiet hides it)",
}


@dataclass
class Imported:
    """A job dict built from MLaaS4HEP inputs, and what could not be carried over."""

    job: dict[str, Any]
    unmapped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_list(path: str | Path, what: str) -> list[str]:
    """Lines of a files.txt / labels.txt, without blanks and '#' comments."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"Cannot read the {what} list {path}: {err.strerror}.") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"Cannot read the MLaaS4HEP {what} {path}: {err.strerror}.") from None
    except ValueError as err:
        raise ConfigError(f"The MLaaS4HEP {what} {path} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The MLaaS4HEP {what} {path} must hold a JSON object.")
    return data


def _names(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def import_job(params: str | Path, files: str | Path, labels: str, model: str | None = None,
               preproc: str | None = None) -> Imported:
    """Build a job dict from MLaaS4HEP inputs.

    ``labels`` is a labels file (one label per file), a comma-separated list, or the name
    of a branch holding each event's label -- as MLaaS4HEP's ``--labels`` accepts.
    """
    p = _read_json(params, "params file")
    known = {"nevts", "shuffle", "chunk_size", "epochs", "batch_size", "identifier", "branch",
             "selected_branches", "exclude_branches", "hist", "redirector", "verbose"}
    imported = Imported(job={})
    for key in p:
        if key in UNMAPPED:
            imported.unmapped[key] = UNMAPPED[key]
        elif key not in known:
            imported.unmapped[key] = "unknown MLaaS4HEP parameter"
    file_list = read_list(files, "files") if Path(files).is_file() else _names(files)
    if not file_list:
        raise ConfigError(f"The files list {files} is empty.")
    redirector = (p.get("redirector") or "").rstrip("/")
    if redirector:
        file_list = [f"{redirector}/{f}" if f.startswith("/store/") else f for f in file_list]
    tree = p.get("branch") or "Events"
    dataset: dict[str, Any] = {"tree": tree}
    if p.get("chunk_size"):
        dataset["step_size"] = int(p["chunk_size"])
    ids = _names(p.get("identifier"))
    dataset["id_branches"] = ids
    if not ids:
        imported.notes.append("no identifier: the split uses file and entry number")
    dataset.update(_groups(file_list, labels))
    features, skipped = _features(file_list[0], tree, p, dataset.get("label_branch"))
    model_block = _model_block(model, p, imported)
    cut = None
    if preproc:
        cut = _apply_preproc(_read_json(preproc, "preproc file"), features, imported)
    if cut:
        dataset["cut"] = cut
    for reason, branches in skipped.items():
        imported.notes.append(f"left out of the features ({reason}): {', '.join(branches)}")
    imported.job = {"dataset": dataset, "features": features}
    if model_block:
        imported.job["model"] = model_block
    return imported


#: without a model file (XGBoost), MLaaS4HEP's training loop settings have no equivalent
NO_EPOCHS = {
    "epochs": "XGBoost uses rounds with early stopping (model.num_boost_round), not epochs",
    "batch_size": "XGBoost trains on whole partitions, not batches",
}


def _model_block(model: str | None, params: dict[str, Any],
                 imported: Imported) -> dict[str, Any]:
    """The job's model block for an MLaaS4HEP model file: a torch or Keras network gets
    ``epochs`` and ``batch_size``; a scikit-learn estimator ``epochs`` (partial_fit
    passes), its batches being the partitions. Without a file (XGBoost): none."""
    from mlaas_dask.nn.modelfile import detect_kind

    if not model:
        imported.unmapped.update({k: why for k, why in NO_EPOCHS.items() if params.get(k)})
        return {}
    path = Path(model).resolve()
    _check_not_tf_keras(path)
    kind = detect_kind(path)
    block: dict[str, Any] = {"kind": kind, "file": str(path)}
    if params.get("epochs"):
        block["epochs"] = int(params["epochs"])
    if params.get("batch_size"):
        if kind in ("torch", "keras"):
            block["batch_size"] = int(params["batch_size"])
        else:
            imported.unmapped["batch_size"] = ("scikit-learn partial_fit gets one partition "
                                               "(dataset.step_size events) per call")
    return block


def _check_not_tf_keras(path: Path) -> None:
    """MLaaS4HEP's older Keras files import it from TensorFlow; Keras 3 runs here on its
    torch backend, imported as ``keras``."""
    try:
        source = path.read_text(errors="replace")
    except OSError:
        return  # the model file's own check says it is missing
    if re.search(r"^\s*(from|import)\s+tensorflow\b", source, re.MULTILINE):
        raise ConfigError(
            f"The MLaaS4HEP model file {path} imports TensorFlow (tf.keras); mlaas trains "
            "Keras 3 models on Keras' torch backend. Write 'import keras' and "
            "'from keras import layers' instead of 'from tensorflow import keras' (the "
            "model code itself stays the same).", file=str(path))


def _groups(file_list: list[str], labels: str) -> dict[str, Any]:
    label_path = Path(labels)
    if label_path.is_file():
        values = read_list(label_path, "labels")
    elif "," in labels:
        values = _names(labels)
    else:  # a branch name
        return {"label_branch": labels,
                "groups": [{"name": "all", "files": file_list}]}
    if len(values) != len(file_list):
        raise ConfigError(
            f"The labels list gives {len(values)} labels for {len(file_list)} files; "
            "MLaaS4HEP expects one label per file, in the same order."
        )
    groups: dict[str, list[str]] = {}
    for path, label in zip(file_list, values, strict=True):
        groups.setdefault(label, []).append(path)
    return {"groups": [{"name": f"label_{label}", "files": paths,
                        "label": int(label) if label.lstrip("-").isdigit() else label}
                       for label, paths in groups.items()]}


def _features(first_file: str, tree: str, params: dict[str, Any],
              label_branch: str | None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from mlaas_dask.data.inspect import inspect_file, suggest

    selected = set(_names(params.get("selected_branches")))
    excluded = set(_names(params.get("exclude_branches")))
    if label_branch:
        excluded.add(label_branch)

    def keep(name: str) -> bool:
        return (not selected or name in selected) and name not in excluded

    report = inspect_file(first_file, tree=tree)
    return suggest(report, tree, keep=keep)


def _apply_preproc(preproc: dict[str, Any], features: dict[str, Any],
                   imported: Imported) -> str | None:
    definitions: dict[str, str] = {}
    terms: list[str] = []
    for name, spec in (preproc.get("new_branch") or {}).items():
        definition = str(spec.get("def", ""))
        definitions[name] = f"({_python(definition, definitions)})"
        kind = spec.get("type", "flat")
        if kind == "flat":
            if not _truthy(spec.get("remove")):
                features.setdefault("derived", {})[name] = _python(definition, {})
        else:
            imported.unmapped[f"new_branch.{name}"] = (
                "jagged derived branches are per-object fields of a collection in "
                "mlaas_dask: add it under features.collections.<Name>.derived")
        terms.extend(_cuts(spec, definitions, kind))
        for removed in spec.get("keys_to_remove") or []:
            _remove_feature(features, removed, imported)
    for section, kind in (("flat_cut", "flat"), ("jagged_cut", "jagged")):
        for name, spec in (preproc.get(section) or {}).items():
            terms.extend(_cuts(spec, definitions, kind))
            if _truthy(spec.get("remove")):
                _remove_feature(features, name, imported)
    for key in preproc:
        if key not in ("new_branch", "flat_cut", "jagged_cut"):
            imported.unmapped[f"preproc.{key}"] = "unknown preproc section"
    return " and ".join(f"({t})" for t in terms) if terms else None


def _cuts(spec: dict[str, Any], definitions: dict[str, str], kind: str) -> list[str]:
    out = []
    for key in sorted(k for k in spec if k == "cut" or k.startswith("cut_")):
        cut = spec[key]
        if isinstance(cut, list):  # [expression, "any" | "all"] for jagged branches
            expression, reduce = cut[0], (cut[1] if len(cut) > 1 else "all")
            out.append(f"{reduce}({_python(expression, definitions)})")
        else:
            out.append(_python(str(cut), definitions))
    return out


def _python(expression: str, definitions: dict[str, str]) -> str:
    """MLaaS4HEP expressions are Python already; substitute new-branch names by their
    definitions, since a cut reads stored branches only."""
    for name, definition in definitions.items():
        expression = re.sub(rf"\b{re.escape(name)}\b", definition, expression)
    return expression


def _remove_feature(features: dict[str, Any], name: str, imported: Imported) -> None:
    if name in features.get("flat", []):
        features["flat"].remove(name)
        return
    prefix, _, fld = name.partition("_")
    collection = features.get("collections", {}).get(prefix)
    if collection and fld in collection["fields"]:
        collection["fields"].remove(fld)
        return
    imported.notes.append(f"keys_to_remove: {name!r} was not a feature")


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")
