"""A readable reference of a YAML schema (:class:`~mlaas_dask.config.Field` mappings):
every key with its type, default, allowed values and meaning, as Markdown.

The job file's reference is generated from the validator's own schema
(:data:`mlaas_dask.job.JOB_SCHEMA`), so it cannot drift from what ``mlaas train``
accepts; ``docs/job-reference.md`` holds a copy that a test keeps in sync, and
``mlaas reference`` prints it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from mlaas_dask.config import Field, fraction, non_negative, positive
from mlaas_dask.errors import ConfigError, did_you_mean

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "true/false",
               list: "list", dict: "mapping"}
#: the shared checks whose meaning is worth stating next to a key
_CHECKS = {positive: "above 0", non_negative: "0 or more", fraction: "from 0 to 1"}


def type_name(types: tuple[type, ...]) -> str:
    """``(int, float)`` -> ``number``; ``(dict, str)`` -> ``mapping or string``."""
    if set(types) == {int, float}:
        return "number"
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def entries(schema: Mapping[str, Field], prefix: str = "") -> Iterator[tuple[str, Field]]:
    """Every key of ``schema`` with its dotted path, nested mappings included: a list of
    mappings as ``groups[]``, a mapping with free keys as ``collections.<name>``."""
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        yield path, spec
        if spec.schema is not None:
            yield from entries(spec.schema, f"{path}.")
        if spec.items is not None and spec.items.schema is not None:
            yield from entries(spec.items.schema, f"{path}[].")
        if spec.values is not None and spec.values.schema is not None:
            yield from entries(spec.values.schema, f"{path}.<name>.")


def describe(path: str, spec: Field) -> str:
    """One Markdown list item: ``- **`path`** (type, default ...): meaning.``"""
    facts = [type_name(spec.types)]
    if spec.required:
        facts.append("required")
    elif spec.default is not None and spec.schema is None:
        facts.append(f"default `{_shown(spec.default)}`")
    else:
        facts.append("optional")
    if spec.check in _CHECKS:
        facts.append(_CHECKS[spec.check])
    text = f"- **`{path}`** ({', '.join(facts)}): {spec.doc}"
    if spec.choices:
        text += "; one of " + ", ".join(f"`{_shown(c)}`" for c in spec.choices)
    for inner, word in ((spec.items, "each item"), (spec.values, "each value")):
        if inner is not None and inner.schema is None:
            text += f"; {word}: {type_name(inner.types)}, {inner.doc}"
    return text + "."


def reference(schema: Mapping[str, Field], title: str, intro: str = "",
              section: str | None = None) -> str:
    """The Markdown reference of ``schema``: one heading per top-level key, one list item
    per key below it. ``section`` (a dotted key, e.g. ``model`` or ``dataset.groups``)
    keeps only that part.

    Raises
    ------
    ConfigError
        For a ``section`` the schema does not have, with the closest spellings.
    """
    rows = list(entries(schema))
    if section is not None:
        wanted = section.strip(".")
        known = [path for path, _ in rows]
        if wanted not in known:
            raise ConfigError(f"The job file has no key {section!r}."
                              + did_you_mean(wanted, known, "keys")
                              + " Run 'mlaas reference' for all of them.", key=section)
        rows = [(p, s) for p, s in rows
                if p == wanted or p.startswith((f"{wanted}.", f"{wanted}[]."))]
    lines = [f"# {title}", ""] + ([intro, ""] if intro and section is None else [])
    plain = [(p, s) for p, s in rows if "." not in p and s.schema is None]
    if plain:
        lines += ["## Top-level keys", ""] + [describe(p, s) for p, s in plain]
    for path, spec in rows:
        if "." not in path and spec.schema is not None:
            lines += ["", f"## `{path}`", "", f"{spec.doc[:1].upper()}{spec.doc[1:]}"
                      + (" (required)." if spec.required else " (optional)."), ""]
        elif "." in path:
            lines.append(describe(path, spec))
    return "\n".join(lines).rstrip() + "\n"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
