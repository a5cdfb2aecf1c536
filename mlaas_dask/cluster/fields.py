"""Field checks and schema blocks shared by the cluster backends.

A leaf module: it imports nothing else from :mod:`mlaas_dask.cluster`, so every backend
(and :mod:`mlaas_dask.cluster.backend`) can build its schema from it without an import
circle. :class:`~mlaas_dask.config.Field`, :class:`~mlaas_dask.config.Validator` and the
checks shared with job files (``positive``, ``non_negative``, ``NUMBER``) are re-exported
from :mod:`mlaas_dask.config`.

A check takes a value of the field's types and returns ``None`` when it is good, else the
end of a sentence saying why not (``"must be positive, got -1."``); the Validator puts the
file, line and key in front.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlaas_dask.config import NUMBER, Field, Validator, non_negative, positive

__all__ = [
    "ADAPT_FIELD", "NUMBER", "SCHEMES", "Field", "Validator", "address_value", "as_walltime",
    "byte_size", "field_at", "non_negative", "non_negative_or_auto", "positive",
    "positive_or_auto", "scheduler_field", "schema_defaults", "tags", "wait_field",
    "walltime",
]

#: URL schemes of a Dask scheduler address
SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


# ---------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_or_auto(value: Any) -> str | None:
    """A whole number above 0, or ``auto``."""
    if value == "auto" or (_is_int(value) and value > 0):
        return None
    return f"must be a positive number or 'auto', got {value!r}."


def non_negative_or_auto(value: Any) -> str | None:
    """A whole number from 0 up, or ``auto``."""
    if value == "auto" or (_is_int(value) and value >= 0):
        return None
    return f"must be 0 or more, or 'auto', got {value!r}."


def byte_size(value: Any) -> str | None:
    """A size Dask understands (``4GiB``, ``16GB``), or ``auto``."""
    from dask.utils import parse_bytes

    if value == "auto":
        return None
    try:
        size = parse_bytes(value)
    except (ValueError, TypeError):
        return f"must be a size such as '4GiB' or '16GB', got {value!r}."
    return None if size > 0 else f"must be positive, got {value!r}."


def walltime(value: Any) -> str | None:
    """``[days-]hours:minutes:seconds``, or the seconds YAML makes of an unquoted one."""
    if isinstance(value, int):  # YAML reads an unquoted 01:00:00 as 3600 (base 60)
        return None if value > 0 else f"must be positive, got {value}."
    if re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", value):
        return None
    return f"must look like '01:30:00' (hours:minutes:seconds), got {value!r}."


def as_walltime(value: str | int) -> str:
    """``01:00:00`` as written, or the seconds YAML made of an unquoted one, as H:MM:SS.

    Parameters
    ----------
    value
        A validated ``walltime`` value.

    Returns
    -------
    str
        The wall time as the batch systems read it.
    """
    if isinstance(value, int):
        return f"{value // 3600:02d}:{value // 60 % 60:02d}:{value % 60:02d}"
    return value


def address_value(value: str) -> str | None:
    """A scheduler address with a scheme and a port, e.g. ``tcp://10.0.0.5:8786``."""
    if value.startswith(SCHEMES) and ":" in value.split("://", 1)[1]:
        return None
    return f"must be a scheduler address such as tcp://10.0.0.5:8786, got {value!r}."


# ---------------------------------------------------------------- blocks


def tags(doc: str) -> Field:
    """A mapping of Dask worker resource tags to positive amounts, e.g. ``{IO: 1}``."""
    return Field((dict,), doc, default={},
                 values=Field(NUMBER, "how many of this resource a worker has",
                              check=positive))


ADAPT_SCHEMA = {
    "minimum": Field((int,), "fewest workers (local) or jobs (batch) to keep", default=0,
                     check=non_negative),
    "maximum": Field((int,), "most workers (local) or jobs (batch) to start", required=True,
                     check=positive),
}

ADAPT_FIELD = Field((dict,), "adaptive scaling between minimum and maximum", default=None,
                    schema=ADAPT_SCHEMA)


def wait_field(timeout: float) -> Field:
    """The ``wait`` block, whose ``timeout`` defaults to ``timeout`` seconds."""
    return Field((dict,), "workers to wait for before computing", default=None, schema={
        "workers": Field((int,), "workers to wait for before computing (default: the "
                         "number asked for, or adapt.minimum)", check=non_negative),
        "timeout": Field(NUMBER, "seconds to wait for them", default=timeout,
                         check=positive),
    })


def scheduler_field(host: str | None, host_doc: str, dashboard_doc: str) -> Field:
    """The ``scheduler`` block, whose ``host`` defaults to ``host``."""
    return Field((dict,), "where the Dask scheduler listens", default=None, schema={
        "host": Field((str,), host_doc, default=host),
        "port": Field((int,), "scheduler port; 0 picks a free one", default=0,
                      check=non_negative),
        "dashboard_address": Field((str,), "dashboard address, e.g. ':8787' or "
                                   f"'127.0.0.1:0' ({dashboard_doc})"),
    })


# ---------------------------------------------------------------- defaults


def schema_defaults(schema: Mapping[str, Field]) -> dict[str, Any]:
    """Every key's default, nested blocks expanded to their own keys' defaults.

    Parameters
    ----------
    schema
        A schema (key -> :class:`Field`).

    Returns
    -------
    dict
        Key -> default; a block with a nested schema maps to the defaults of its keys
        (what a file that gives the block without those keys gets). Required keys map to
        None.
    """
    return {key: schema_defaults(spec.schema) if spec.schema is not None else spec.default
            for key, spec in schema.items()}


def field_at(schema: Mapping[str, Field], path: tuple[str, ...]) -> Field | None:
    """The field a dotted key path names (``("scheduler", "port")``), or None."""
    spec: Field | None = None
    current: Mapping[str, Field] | None = schema
    for key in path:
        if current is None or key not in current:
            return None
        spec = current[key]
        current = spec.schema
    return spec
