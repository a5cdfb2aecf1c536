"""User-facing errors.

Every error a user can cause is an :class:`MlaasError` whose message names the thing
(file, key, branch, model) and says what to do. The CLI prints the message alone, without
a traceback; the server turns it into a 4xx JSON body.

As uproot's ``KeyInFileError`` does, the errors also carry what they name as keyword
attributes (``None`` when not known), so that code can act on them without parsing the
message::

    try:
        Dataset(groups, tree="event", branches=["MET_pt"])
    except DataError as err:
        err.key, err.file, err.available  # 'event', 'zz.root', ('events',)

``str(err)`` is the message alone; :meth:`MlaasError.details` gives the attributes that
are set.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar


class MlaasError(Exception):
    """An error caused by the user's input, with a message meant to be read by them."""

    #: the keyword attributes this kind of error carries
    attributes: ClassVar[tuple[str, ...]] = ()

    def details(self) -> dict[str, Any]:
        """The attributes that are set, by name (for logs and JSON bodies)."""
        return {name: getattr(self, name) for name in self.attributes
                if getattr(self, name, None) not in (None, ())}


class ConfigError(MlaasError):
    """A job or cluster file is invalid.

    Attributes
    ----------
    file
        The job or cluster file (``None`` for text that came from no file).
    key
        The dotted path of the key at fault, e.g. ``dataset.tree`` or
        ``dataset.groups[0].name``; for an unknown key, that key.
    line
        Its 1-based line in the file.
    """

    attributes = ("file", "key", "line")

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.key = key
        self.line = line


class DataError(MlaasError):
    """Input ROOT data is missing, malformed or does not fit the job.

    Attributes
    ----------
    file
        The file (path, URL or CMS name, without credentials), or the glob that matched
        nothing.
    tree
        The tree concerned.
    branch
        The branch concerned.
    key
        The name looked for in the file and not found there (a tree or a branch), as
        uproot's ``KeyInFileError.key``.
    available
        The names of that kind the file does hold, sorted (trees, or the tree's
        branches).
    group
        The dataset's file group.
    """

    attributes = ("file", "tree", "branch", "key", "available", "group")

    def __init__(self, message: str, *, file: str | None = None, tree: str | None = None,
                 branch: str | None = None, key: str | None = None,
                 available: Iterable[str] = (), group: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.tree = tree
        self.branch = branch
        self.key = key
        self.available = tuple(sorted(available))
        self.group = group


class FeatureError(MlaasError):
    """Events do not fit a FeatureSpec (missing branch, wrong type...).

    Attributes
    ----------
    feature
        The feature or collection concerned.
    branch
        The branch concerned (e.g. one the events lack).
    key
        The key of the features block at fault, e.g. ``collections.Jet.n``.
    """

    attributes = ("feature", "branch", "key")

    def __init__(self, message: str, *, feature: str | None = None,
                 branch: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature
        self.branch = branch
        self.key = key


class BundleError(MlaasError):
    """A model bundle is missing, incomplete or unsafe.

    Attributes
    ----------
    bundle
        The bundle (its folder or archive).
    model
        The model's name (in a model repository).
    file
        The bundle's file at fault, e.g. ``features.json``.
    """

    attributes = ("bundle", "model", "file")

    def __init__(self, message: str, *, bundle: str | None = None, model: str | None = None,
                 file: str | None = None) -> None:
        super().__init__(message)
        self.bundle = bundle
        self.model = model
        self.file = file


class MissingExtra(MlaasError):
    """An optional package is not installed (see :func:`mlaas_dask.extras.require`).

    Attributes
    ----------
    module
        The module that could not be imported.
    extra
        The pip extra that installs it: ``pip install 'mlaas_dask[extra]'``.
    """

    attributes = ("module", "extra")

    def __init__(self, message: str, *, module: str | None = None,
                 extra: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.extra = extra


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


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's text, stripped (``""`` when it has
    none): enough to say what went wrong in a one-line message."""
    lines = (line.strip() for line in str(err).splitlines())
    return next((line for line in lines if line), "")
