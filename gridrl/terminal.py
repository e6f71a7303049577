"""Output that reads well on a terminal and in a log: tables that never cut a name or a number,
and the test of which of the two a stream is.

A table wider than the terminal is not squeezed (rich would shorten ``droop-ieee1547-a`` to
``droop-…`` and ``0.9876`` to ``0.…``): its columns are laid out in panels instead, each panel
repeating the key columns (feeder and controller, day and date, …) so every row stays readable
on its own, and a note says where the full table is. Headers wrap at spaces and slashes; cells
never wrap. Output that is not a terminal (a pipe, a file, a CI log) gets the whole table at its
natural width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["format_cell", "is_terminal", "layout_panels", "print_table", "table_width"]

_NUMBER = re.compile(r"^[+\-−]?(\d[\d,]*\.?\d*|\.\d+)(e[+\-]?\d+)?%?$|^[–-]$|^(nan|inf)$", re.IGNORECASE)


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is a terminal: progress bars redraw their line
    with carriage returns there; a pipe or a log file gets one line per event instead.
    ``GRIDRL_PROGRESS=lines`` forces the lines, ``=bar`` the bar."""
    import os
    import sys

    forced = os.environ.get("GRIDRL_PROGRESS", "").strip().lower()
    if forced in ("lines", "bar"):
        return forced == "bar"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def format_cell(value: Any) -> str:
    """One cell as text: floats to four significant digits, everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header_tokens(header: str) -> list[str]:
    """Pieces a header may wrap between: words, and the parts of ``a/b/c`` after each slash."""
    return [t for word in header.split() for t in re.findall(r"[^/]+/?|/", word)]


def _column_width(header: str, cells: Sequence[str]) -> int:
    """Wide enough for every cell and for the header in at most two lines."""
    tokens = _header_tokens(header)
    two_lines = min((max(len(_join(tokens[:k])), len(_join(tokens[k:]))) for k in range(1, len(tokens))),
                    default=len(_join(tokens)))
    return max([len(c) for c in cells] + [two_lines, 1])


def _join(tokens: Sequence[str]) -> str:
    out = ""
    for t in tokens:
        out += t if not out or out.endswith("/") else " " + t
    return out


def _wrap_header(header: str, width: int) -> str:
    lines: list[list[str]] = []
    for token in _header_tokens(header):
        if lines and len(_join(lines[-1] + [token])) <= width:
            lines[-1].append(token)
        else:
            lines.append([token])
    return "\n".join(_join(line) for line in lines)


def table_width(widths: Sequence[int]) -> int:
    """Characters per line of a table whose columns hold ``widths`` characters (the style used
    by :func:`print_table`: two spaces between columns, none at the edges)."""
    return sum(widths) + 2 * len(widths) - 2 if widths else 0


def layout_panels(widths: Sequence[int], *, keys: int, max_width: int | None) -> list[list[int]]:
    """Column indices of each panel: the first ``keys`` columns in every panel, the others in
    order, split into as few panels as fit in ``max_width`` and balanced between them (at least
    one column besides the keys in each; no limit when ``max_width`` is ``None``)."""
    n = len(widths)
    keys = min(keys, n)
    if max_width is None or table_width(widths) <= max_width or keys == n:
        return [list(range(n))]

    def fill(cap: int) -> list[list[int]]:
        panels, current = [], list(range(keys))
        for i in range(keys, n):
            if len(current) > keys and table_width([widths[j] for j in current + [i]]) > cap:
                panels.append(current)
                current = list(range(keys))
            current.append(i)
        return panels + [current]

    fewest = len(fill(max_width))
    # the narrowest cap that needs no more panels than the terminal width does: balanced panels
    lo, hi = table_width([widths[j] for j in range(keys)]), max_width
    while lo < hi:
        mid = (lo + hi) // 2
        if len(fill(mid)) <= fewest:
            hi = mid
        else:
            lo = mid + 1
    return fill(lo)


def print_table(console: Console, rows: Sequence[Mapping[str, Any]], *, title: str | None = None,
                keys: Sequence[str] = (), full_table: str | None = None) -> None:
    """Print ``rows`` (dicts with the same keys, in column order) as a table on ``console``.

    keys: the columns that identify a row; they lead the table and are repeated in every panel
        when the table is split to fit the terminal.
    full_table: where the full table can be read (e.g. ``out/cmp/summary.md``), named in the
        note printed under a split table.
    """
    if not rows:
        console.print("(nothing)")
        return
    headers = [h for h in keys if h in rows[0]] + [h for h in rows[0] if h not in keys]
    cells = {h: [format_cell(r[h]) for r in rows] for h in headers}
    widths = [_column_width(h, cells[h]) for h in headers]
    numeric = [all(_NUMBER.match(c) for c in cells[h]) for h in headers]
    max_width = console.width if console.is_terminal else None
    panels = layout_panels(widths, keys=len([h for h in keys if h in rows[0]]), max_width=max_width)
    for p, cols in enumerate(panels):
        caption = title if p == 0 else f"{title or 'table'} (continued)"
        table = Table(title=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                      title_justify="left")
        for j in cols:
            table.add_column(_wrap_header(headers[j], widths[j]), width=widths[j], no_wrap=True,
                             justify="right" if numeric[j] else "left", header_style="bold")
        for i in range(len(rows)):
            table.add_row(*(cells[headers[j]][i] for j in cols))
        need = table_width([widths[j] for j in cols])
        if need <= console.width:
            console.print(table)
        else:  # narrower than the key columns plus one more: overflow rather than cut a name
            width, console.width = console.width, need
            try:
                console.print(table, crop=False)
            finally:
                console.width = width
    if len(panels) > 1:
        where = f"; the full table is in {full_table}" if full_table else "; widen the terminal to see it whole"
        console.print(f"[dim](split into {len(panels)} panels to fit {max_width} columns{where})[/]",
                      highlight=False)
