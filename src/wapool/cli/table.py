"""Plain-text tables for the command line (aligned columns, no colour, no raw control
characters)."""

from __future__ import annotations

from collections.abc import Sequence

from wapool.terminal import escape


def render(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "(none)") -> str:
    """Aligned columns; control characters in cells are shown escaped, never sent raw."""
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if not rows:
        lines.append(empty)
    return "\n".join(lines)
