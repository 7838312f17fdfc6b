"""Lossless text encoding of SQLite values, shared by the capture triggers and Python.

Each value becomes a type-tagged string: ``x<hex>`` blob, ``t<text>`` text, ``i<int>`` integer,
``r<repr>`` real (17 significant digits), JSON ``null`` for NULL. A row image or a key is a JSON
array of those, in column order. SQLite produces them inside the triggers (``sql_encode``);
Python turns them back into values for a restore (``decode_row``).
"""

from __future__ import annotations

import json
from typing import Any

SQLiteValue = bytes | str | int | float | None


def sql_encode(expr: str) -> str:
    """SQL expression that encodes ``expr`` (e.g. ``NEW."key"``) as a tagged string."""
    return (
        f"CASE typeof({expr}) WHEN 'blob' THEN 'x' || hex({expr}) "
        f"WHEN 'text' THEN 't' || {expr} WHEN 'integer' THEN 'i' || {expr} "
        f"WHEN 'real' THEN 'r' || printf('%!.17g', {expr}) ELSE NULL END"
    )


def decode_value(tagged: str | None) -> SQLiteValue:
    if tagged is None:
        return None
    tag, body = tagged[:1], tagged[1:]
    if tag == "x":
        return bytes.fromhex(body)
    if tag == "t":
        return body
    if tag == "i":
        return int(body)
    if tag == "r":
        return float(body)
    raise ValueError(f"unknown value tag {tag!r}")


def decode_row(image: str) -> list[SQLiteValue]:
    values: list[Any] = json.loads(image)
    return [decode_value(v) for v in values]
