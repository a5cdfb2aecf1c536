"""YAML loading with line numbers and schema validation, shared by job and cluster files.

Errors name the file, the key's dotted path and its line, and what is allowed (closest
spelling first), e.g.::

    job.yaml, line 7: unknown key 'modle' in the top level. Did you mean 'model'?
    Allowed keys: cluster, dataset, features, model, output, split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlaas_dask.errors import ConfigError, did_you_mean

Lines = dict[tuple[str | int, ...], int]


def load_yaml(path: str | Path) -> tuple[Any, Lines]:
    """Parse a YAML file into Python objects plus the line of every key and item.

    Returns ``(data, lines)`` where ``lines`` maps a path of keys / indices to a 1-based
    line number.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Job file {path} does not exist.", file=str(path)) from None
    except OSError as err:
        raise ConfigError(f"Cannot read {path}: {err.strerror}.", file=str(path)) from None
    return parse_yaml(text, str(path), file=str(path))


def parse_yaml(text: str, name: str = "<string>", *,
               file: str | None = None) -> tuple[Any, Lines]:
    """:func:`load_yaml` for a string; ``name`` starts the messages, ``file`` (where the
    text came from, if anywhere) is the errors' ``file``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"{name}{where}: invalid YAML: {problem}. Check indentation and that every "
            "'key: value' pair is on its own line.", file=file,
            line=mark.line + 1 if mark else None,
        ) from None
    lines: Lines = {}
    if node is None:
        return None, lines
    return _convert(node, (), lines, name, file), lines


def _convert(node: yaml.Node, path: tuple[str | int, ...], lines: Lines, name: str,
             file: str | None) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)
            key = str(key)
            if key in out:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{name}, line {line}: key {key!r} appears twice.",
                                  file=file, key=dotted((*path, key)), line=line)
            out[key] = _convert(value_node, (*path, key), lines, name, file)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, name, file)
                for i, item in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


#: the types of a number in a schema (an int is read as a float where floats are allowed)
NUMBER = (int, float)


# -- checks (Field.check): a problem as text, or None ---------------------------------


def positive(value: Any) -> str | None:
    """Numbers above 0."""
    return None if value > 0 else f"must be positive, got {value}."


def non_negative(value: Any) -> str | None:
    """Numbers from 0 up."""
    return None if value >= 0 else f"must be 0 or more, got {value}."


def fraction(value: Any) -> str | None:
    """Numbers from 0 to 1."""
    return None if 0 <= value <= 1 else f"must be between 0 and 1, got {value}."


@dataclass
class Field:
    """One key of a schema: its accepted types, whether it is required, a default, a
    one-line description and, optionally, the allowed values or a nested schema."""

    types: tuple[type, ...]
    doc: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] | None = None
    schema: Mapping[str, Field] | None = None  # for a nested mapping
    items: Field | None = None  # for a list of values / mappings
    values: Field | None = None  # for a mapping with free keys
    check: Callable[[Any], str | None] | None = None


@dataclass
class Validator:
    """Validates parsed YAML against a schema, reporting with file name and lines.

    ``name`` starts every message; ``file``, the file the data came from (if any), is the
    errors' ``file`` attribute.
    """

    name: str
    lines: Lines = field(default_factory=dict)
    file: str | None = None

    def line_number(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path``, or of its nearest parent that has one."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def line(self, path: tuple[str | int, ...]) -> str:
        number = self.line_number(path)
        return f", line {number}" if number is not None else ""

    def error(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        """A :class:`ConfigError` at ``path``: the message starts with the file and line,
        and the error carries them (``file``, ``key``, ``line``)."""
        return ConfigError(f"{self.name}{self.line(path)}: {message}", file=self.file,
                           key=dotted(path) or None, line=self.line_number(path))

    def mapping(
        self, data: Any, schema: Mapping[str, Field], path: tuple[str | int, ...] = ()
    ) -> dict[str, Any]:
        where = _describe(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(path, f"{where} must be a mapping of keys to values, "
                                   f"not {_type_name(data)}.")
        for key in data:
            if key not in schema:
                raise self.error(
                    (*path, key),
                    f"unknown key {key!r} in {where}."
                    + did_you_mean(key, schema, "keys"),
                )
        out = {}
        for key, spec in schema.items():
            if key not in data or data[key] is None:
                if spec.required:
                    raise self.error(
                        path,
                        f"{where} is missing the required key {key!r} ({spec.doc}).",
                    )
                out[key] = spec.default
                continue
            out[key] = self.value(data[key], spec, (*path, key))
        return out

    def value(self, value: Any, spec: Field, path: tuple[str | int, ...]) -> Any:
        key = _describe(path)
        if float in spec.types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if list in spec.types and isinstance(value, str) and spec.items is not None \
                and str in spec.items.types:
            value = [value]
        ok = isinstance(value, spec.types) and not (
            isinstance(value, bool) and bool not in spec.types
        )
        if not ok:
            allowed = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in spec.types)
            raise self.error(
                path, f"{key} must be {allowed} ({spec.doc}), not {_type_name(value)} "
                      f"{value!r}."
            )
        if spec.choices is not None and value not in spec.choices:
            raise self.error(
                path,
                f"{key} is {value!r}; allowed values: "
                + ", ".join(repr(c) for c in spec.choices) + ".",
            )
        if isinstance(value, dict) and spec.schema is not None:
            value = self.mapping(value, spec.schema, path)
        elif isinstance(value, dict) and spec.values is not None:
            value = {k: self.value(v, spec.values, (*path, k)) for k, v in value.items()}
        elif isinstance(value, list) and spec.items is not None:
            value = [self.value(v, spec.items, (*path, i)) for i, v in enumerate(value)]
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise self.error(path, f"{key}: {problem}")
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _type_name(value: Any) -> str:
    return {type(None): "empty", dict: "a mapping", list: "a list", str: "a string",
            bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def dotted(path: tuple[str | int, ...]) -> str:
    """A path of keys and indices as a job file's reader writes it:
    ``dataset.groups[0].name`` (``""`` for the top level)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe(path: tuple[str | int, ...]) -> str:
    return f"'{dotted(path)}'" if path else "the top level"
