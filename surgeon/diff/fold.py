"""Names that fold between their parts in a narrow table cell, never inside one.

Rich folds a cell at whatever character meets the column's edge, which cuts identifiers
where no reader looks for a break (`model-00001-of-00002.sa` / `fetensors`, at 80 columns).
A `FoldedName` folds after a `.`, `-` or space instead (`model-00001-of-00002.` /
`safetensors`), after a `_` only inside a part too wide for the column, and inside a word
only where the word alone is wider than the column.
The folds are line breaks of the table, not characters: the name copied from the terminal
is the name, with no zero-width space or hyphen added.
"""

from __future__ import annotations

import re

from rich.cells import cell_len, chop_cells
from rich.text import Text

from surgeon.text import inert

# Each part ends after its separator. An underscore joins the words of one identifier
# (`o_proj`, `self_attn`), so a name folds there only when a part between dots is too wide.
_PARTS = re.compile(r"[^.\- ]*[.\- ]|[^.\- ]+")
_WORDS = re.compile(r"[^_]*_|[^_]+")


def fold_points(name: str, width: int) -> list[int]:
    """The offsets where `name` starts a new line in a column `width` cells wide: after a
    `.`, `-` or space where the next part does not fit; after a `_` inside a part wider than
    the column; at any character inside a word wider than it."""
    width, points, line, offset = max(1, width), [], 0, 0

    def place(piece: str) -> None:
        nonlocal line, offset
        if line and line + cell_len(piece) > width:
            points.append(offset)
            line = 0
        offset += len(piece)
        line += cell_len(piece)

    for part in _PARTS.findall(name):
        words = [part] if cell_len(part) <= width else _WORDS.findall(part)
        for word in words:
            for piece in chop_cells(word, width) if cell_len(word) > width else [word]:
                place(piece)
    return points


class FoldedName(Text):
    """A name from a file as a table cell: inert, folded after its separators (fold_points);
    its `plain` stays the whole name."""

    def __init__(self, value: object, style: str = "") -> None:
        super().__init__(inert(value), style=style)

    def wrap(self, console, width, **kwargs):
        if kwargs.get("no_wrap") or cell_len(self.plain) <= width:
            return super().wrap(console, width, **kwargs)
        lines = self.divide(fold_points(self.plain, width))
        justify = kwargs.get("justify")
        if justify:
            lines.justify(console, width, justify=justify, overflow="fold")
        return lines
