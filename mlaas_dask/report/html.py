"""report.html: one self-contained page (the figures embedded as base64 PNG, no script,
no external file), readable in any browser and attachable to an e-mail."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("-" if value is None else str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats with 4 significant digits, ``None`` as ``-``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(name: str, png: bytes, caption: str) -> str:
    """An embedded PNG; ``data-file`` names its copy in the bundle."""
    data = base64.b64encode(png).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
            f'data-file="{html.escape(name)}"><figcaption>{html.escape(caption)} '
            f"({html.escape(name)})</figcaption></figure>")


def page(title: str, sections: Sequence[tuple[str, str]]) -> bytes:
    """The whole page: ``sections`` are (heading, HTML body) pairs."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n").encode()


def note(text: str) -> str:
    """A paragraph of small print."""
    return f'<p class="note">{html.escape(text)}</p>'
