"""Tables as a person reads them in a report: no index column, numbers to a sensible precision, integers as
integers, related columns under one group heading, and a wide table that scrolls sideways instead of being cut
with `...`.

    display(tables.table(frame))                                   # any frame
    display(tables.table(frame, groups={"rows": ["n", "errors"]}))  # a heading over related columns

Precision: a float column is shown with 3 decimals, or 1 when its largest value is 100 or more (token counts,
Elo-scale scores); integer columns, and a float column of whole numbers with a missing value (a count that
became float through it), are shown as integers; `precision={"cost_usd": 4}` overrides a column. Missing values are "—".
Every cell is HTML-escaped, so model output and names are shown as text. The table carries its own cut of the
Korean font for the Hangul it holds (`pages.box`), so it draws in Jupyter as in the report.
"""

from __future__ import annotations

import html
import math
import re
from numbers import Integral, Real

import pandas as pd

from sftlab import pages

MISSING = "—"
SHORT = 40  # text cells up to this many characters do not wrap (names, labels); longer text wraps
INTERVAL = re.compile(r"[+-]?\d[\d.]*%?( \[[^\]]*\])?|—")  # "0.612 [0.550, 0.671]": aligned like a number
STYLE = """<style>
.sftlab-table-wrap { overflow-x: auto; max-width: 100%; margin: .3em 0 .8em; }
table.sftlab-table { border-collapse: collapse; font-size: .85em; }
table.sftlab-table th, table.sftlab-table td { border: 1px solid #d0d0d0; padding: 3px 8px; vertical-align: top; }
table.sftlab-table th { background: #f3f3f3; text-align: center; white-space: nowrap; font-weight: 600; }
table.sftlab-table td { text-align: left; }
table.sftlab-table td.short { white-space: nowrap; }
table.sftlab-table td.number { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.sftlab-table th.group { border-bottom: 2px solid #888; }
</style>"""


class Block:
    """HTML for `display()` (Jupyter and the reports show the HTML; a terminal and papermill's log, the plain
    text)."""

    def __init__(self, html_text: str, plain: str):
        self.html, self.plain = html_text, plain

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.plain

    def __str__(self) -> str:
        return self.html


def _column_format(series: pd.Series, digits: int | None):
    values = [v for v in series if _present(v)]
    numbers = [v for v in values if isinstance(v, Real) and not isinstance(v, bool)]
    if not values or len(numbers) != len(values):
        return None
    # whole floats are a count only where a missing value made them float (a rate of 1.0 stays 1.000)
    counted = pd.api.types.is_integer_dtype(series) or series.dtype == object or series.isna().any()
    if digits is None and counted and all(isinstance(v, Integral) or float(v).is_integer() for v in numbers):
        return lambda v: f"{int(v):d}"
    if digits is None:
        digits = 1 if max(abs(float(v)) for v in numbers) >= 100 else 3
    return lambda v: f"{float(v):.{digits}f}"


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, dicts: present
        return True


def cell_text(value, formatter=None) -> str:
    if not _present(value):
        return MISSING
    return formatter(value) if formatter else str(value)


def table(frame: pd.DataFrame, groups: dict[str, list[str]] | None = None, precision: dict[str, int] | None = None,
          css_class: str = "") -> Block:
    """`frame` as a formatted HTML table. A named index becomes leading columns; a default index is dropped.
    `groups` puts a heading over the columns it lists (in the frame's order; a column in no group has a blank
    group heading)."""
    frame = frame.copy()
    if not isinstance(frame.index, pd.RangeIndex) or any(frame.index.names):
        frame = frame.reset_index()
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" ".join(str(p) for p in c if str(p)) for c in frame.columns]
    frame.columns = [str(c) for c in frame.columns]
    precision = precision or {}
    formats = {c: _column_format(frame[c], precision.get(c)) for c in frame.columns}

    def heading(name: str, attributes: str = "") -> str:
        return f"<th{attributes}>{html.escape(name)}</th>"

    header = ""
    group_of = {column: name for name, columns in (groups or {}).items() for column in columns}
    if any(c in group_of for c in frame.columns):
        spans: list[tuple[str, int]] = []
        for column in frame.columns:
            name = group_of.get(column, "")
            if spans and spans[-1][0] == name and name:
                spans[-1] = (name, spans[-1][1] + 1)
            else:
                spans.append((name, 1))
        header += "<tr>" + "".join(heading(name, f' colspan="{n}" class="group"' if name else f' colspan="{n}"')
                                   for name, n in spans) + "</tr>"
    header += "<tr>" + "".join(heading(c) for c in frame.columns) + "</tr>"
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, record):
            text = cell_text(value, formats[column])
            kind = "number" if formats[column] is not None or INTERVAL.fullmatch(text) else \
                "short" if len(text) <= SHORT else ""
            cells.append(f'<td class="{kind}">{html.escape(text)}</td>' if kind else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    classes = f"sftlab-table {css_class}".strip()
    body = (f'<div class="sftlab-table-wrap"><table class="{html.escape(classes)}"><thead>{header}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")
    plain = frame.to_string(index=False, formatters={c: (lambda f: lambda v: cell_text(v, f))(f)
                                                      for c, f in formats.items()})
    return Block(STYLE + pages.box(body), plain)


def interval(value, low, high, digits: int = 3, percent: bool = False, signed: bool = False) -> str:
    """"0.612 [0.550, 0.671]"; with `percent`, "61.2% [55.0%, 67.1%]"; "—" when the value is missing."""
    if not _present(value):
        return MISSING
    scale, unit = (100, "%") if percent else (1, "")
    digits = 1 if percent else digits
    sign = "+" if signed else ""

    def number(x, with_sign: bool) -> str:
        return f"{x * scale:{sign if with_sign else ''}.{digits}f}{unit}" if _present(x) else "?"

    if not _present(low) and not _present(high):
        return number(value, True)
    return f"{number(value, True)} [{number(low, False)}, {number(high, False)}]"


def summary_block(sentences: list[str], css_class: str = "sftlab-summary") -> Block:
    """A report's one-paragraph summary: sentences as one paragraph; a sentence starting with "⚠" in red."""
    parts = []
    for sentence in sentences:
        text = html.escape(sentence)
        parts.append(f'<b style="color:#a40000">{text}</b>' if sentence.startswith("⚠") else text)
    body = f'<p class="{html.escape(css_class)}" style="font-size:15px; max-width:60em">{" ".join(parts)}</p>'
    return Block(pages.box(body), " ".join(sentences))
