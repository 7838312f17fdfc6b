"""Text that is safe to show on an operator's terminal.

Control characters (ESC, CR, newline, ...), Unicode line and paragraph separators and the
bidirectional overrides can move the cursor, recolour or rewrite what a terminal shows, or
reorder a line, so a value that holds one could disguise itself or the lines around it.
Operator input (``--name``) is refused when it holds one; values shown in tables are escaped.
Emoji sequences stay intact (their zero-width joiners are not among these).
"""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def unsafe_characters(text: str) -> list[str]:
    """The offending characters, each as a ``U+XXXX`` code, in order of appearance."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in text if unsafe(c)))


def escape(text: str) -> str:
    """``text`` with each unsafe character written as a visible ``\\u....`` escape."""
    return "".join(f"\\u{ord(c):04x}" if unsafe(c) else c for c in text)
