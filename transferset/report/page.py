"""The report page: one self-contained HTML file.

The figures are embedded as base64 `data:` URIs and the style is inline, so the
page opens from disk, by mail or from an artifact store with no other file and no
network. Every text that comes from the set (paths, class and teacher names) is
escaped.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transferset.report import Drawn

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.4em; word-break: break-all; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
figure { margin: 0 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { font-size: 0.9em; line-height: 1.4; max-width: 60em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; }
"""


def _table(title: str, columns: list[str] | None, rows: list[list[str]]) -> str:
    """A table with a header row, or a key/value table (keys as row headers) when `columns` is None."""
    head = "" if columns is None else "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    lines = []
    for row in rows:
        tags = ["th" if columns is None and i == 0 else "td" for i in range(len(row))]
        lines.append("<tr>" + "".join(f"<{t}>{html.escape(str(v))}</{t}>" for t, v in zip(tags, row)) + "</tr>")
    return f"<table><caption>{html.escape(title)}</caption>{head}{''.join(lines)}</table>"


def _figure(drawn: "Drawn") -> str:
    data = base64.b64encode(drawn.png).decode("ascii")
    return (
        f'<h2>{html.escape(drawn.title)}</h2><figure id="{html.escape(drawn.file)}">'
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(drawn.title)}">'
        f"<figcaption>{html.escape(drawn.caption)} (also saved as {html.escape(drawn.file)})</figcaption></figure>"
    )


def render(title: str, tables: list[tuple[str, list[str] | None, list[list[str]]]], drawn: list["Drawn"], notes: list[str]) -> str:
    """The page: the summary table, the figures, the notes, then the remaining tables."""
    from transferset.report import GENERATOR

    (_, columns, rows), *rest = tables
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _table("summary", columns, rows),
        *(_figure(d) for d in drawn),
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        "<h2>Teachers and sources</h2>",
        *(_table(*t) for t in rest),
    ]
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
