"""User-facing errors.

Every error a user can cause is an :class:`MlaasError` whose message names the thing
(file, key, branch, model) and says what to do. The CLI prints the message alone, without
a traceback; the server turns it into a 4xx JSON body.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MlaasError(Exception):
    """An error caused by the user's input, with a message meant to be read by them."""


class ConfigError(MlaasError):
    """A job or cluster file is invalid."""


class DataError(MlaasError):
    """Input ROOT data is missing, malformed or does not fit the job."""


class FeatureError(MlaasError):
    """Events do not fit a FeatureSpec (missing branch, wrong type...)."""


class BundleError(MlaasError):
    """A model bundle is missing, incomplete or unsafe."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Candidates ordered by similarity to ``name``, the closest spellings first.

    Close matches (by :func:`difflib.get_close_matches`) come first, then names that
    contain ``name`` or are contained in it, case-insensitively.
    """
    candidates = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    lowered = name.lower()
    for candidate in candidates:
        if len(close) >= n:
            break
        low = candidate.lower()
        if candidate not in close and (lowered in low or low in lowered):
            close.append(candidate)
    return close


def did_you_mean(name: str, candidates: Iterable[str], what: str = "names") -> str:
    """A short hint: ``did you mean 'x'?`` plus the list of allowed names."""
    candidates = sorted(dict.fromkeys(candidates))
    close = closest(name, candidates)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if len(candidates) <= 30:
        listing = ", ".join(candidates)
    else:
        listing = ", ".join(candidates[:30]) + f", ... ({len(candidates)} in all)"
    return f"{hint} Available {what}: {listing}."
