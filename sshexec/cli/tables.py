"""Tables that fit the terminal (80 columns and up) without cutting what a person copies.

Every table of the program is made here, in one light style (a rule under the
headers, two spaces between columns, like `docker ps`). Each column is either
*whole* (run ids, worker names, times: never cut, never wrapped) or *flexible*
(runbook names, messages, holders: cut with … to share the room the whole ones
leave). Headers are never cut: a flexible column is at least as wide as its
header. What a flexible cell loses, the command prints in full below the table,
on lines of their own (ui.line), where nothing is cut mid-word.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

GAP = 2  # spaces between two columns


@dataclass(frozen=True)
class Col:
    """A column: its header; `flex` > 0 lets it be cut (the room left is shared in these proportions)."""

    header: str
    flex: int = 0
    justify: str = "left"
    keep_tail: str = ""  # cut before the last occurrence of this (":": an address keeps its port)
    drop: int = 0  # > 0: left out when the terminal is too narrow for every column, the lowest first
    prefer: int = 0  # a flexible column's width that counts as needed, before droppable columns


@functools.lru_cache(maxsize=1024)
def cell_width(markup: str) -> int:
    """How many terminal columns a cell (rich markup, maybe several lines) takes.

    Asked again and again of the same cells while a table is fitted (each column's width, what a narrow
    terminal drops, what was cut): each cell's markup is parsed once. Forgotten between an agent's
    commands (common.forget_options), with the options the command was given."""
    from rich.text import Text

    return max((Text.from_markup(part).cell_len for part in markup.split("\n")), default=0)


def widths(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Each column's width: whole columns as wide as their widest cell, flexible ones sharing the rest."""
    natural = [max([len(c.header)] + [cell_width(r[i]) for r in rows]) for i, c in enumerate(cols)]
    out = list(natural)
    flex = [i for i, c in enumerate(cols) if c.flex]
    room = width - GAP * (len(cols) - 1) - sum(natural[i] for i, c in enumerate(cols) if not c.flex)
    # Water-filling: a column that needs less than its share keeps its own width, and the others share what it leaves.
    left = sorted(flex, key=lambda i: natural[i] / cols[i].flex)
    while left:
        share = room / sum(cols[i].flex for i in left)
        i = left[0]
        if natural[i] <= share * cols[i].flex:
            out[i] = natural[i]
        else:
            for j in left:
                out[j] = max(len(cols[j].header), int(share * cols[j].flex))
            break
        room -= out[i]
        left.pop(0)
    return out


def kept(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """The columns shown at `width`: all of them, unless the whole ones and the headers of the
    flexible ones cannot fit; then the droppable ones go, the lowest `drop` first, so that what
    is never cut (a run id) stays whole on a narrow terminal too."""
    keep = list(range(len(cols)))

    def least(i: int) -> int:
        c = cols[i]
        natural = max([len(c.header)] + [cell_width(r[i]) for r in rows])
        # A flexible column stays whole up to `prefer` columns (an address: an IP and its port) before a droppable one is kept.
        return max(len(c.header), min(natural, c.prefer)) if c.flex else natural

    for i in sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: cols[i].drop):
        if sum(least(j) for j in keep) + GAP * (len(keep) - 1) <= width:
            break
        keep.remove(i)
    return keep


def table(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int):
    """A rich Table of `rows` (markup cells) that fits `width` columns, whole columns kept whole."""
    from rich import box
    from rich.table import Table

    sizes = widths(cols, rows, width)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True, header_style="bold")
    for c, w in zip(cols, sizes):
        if c.flex:
            t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis", max_width=w, min_width=len(c.header))
        else:
            t.add_column(c.header, justify=c.justify, no_wrap=True, min_width=w)
    for r in rows:
        t.add_row(*(_cut_keeping_tail(cell, c.keep_tail, w) if c.flex and c.keep_tail else cell for cell, c, w in zip(r, cols, sizes)))
    return t


def _cut_keeping_tail(cell: str, sep: str, n: int) -> str:
    """A plain cell too wide for `n` columns, cut in the middle: `build-serv…:2222` keeps its port."""
    if cell_width(cell) <= n or sep not in cell:
        return cell
    head, _, tail = cell.rpartition(sep)
    tail = sep + tail
    if len(tail) + 2 > n:
        return cell
    return head[: n - len(tail) - 1] + "…" + tail


def show(title: str | None, cols: Sequence[Col], rows: Sequence[Sequence[str]], con=None) -> dict[str, int]:
    """Print a title line (if any), then the table, fitted to the console's width; returns each
    column's width by its header (a cell wider than its column was cut, and a column left out
    is missing: the caller may print such a cell in full below)."""
    from . import ui

    c = con or ui.console()
    if title:
        ui.line(title, con=c)
    keep = kept(cols, rows, c.width)
    cols, rows = [cols[i] for i in keep], [[r[i] for i in keep] for r in rows]
    c.print(table(cols, rows, c.width))
    return dict(zip((col.header for col in cols), widths(cols, rows, c.width)))


def duration(seconds: float | None) -> str:
    """A time taken, short: 4.2s, 12m05s, 3h07m; – if unknown."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
