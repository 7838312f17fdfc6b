"""Lossless text encoding of SQLite values, shared by the capture triggers and Python.

Each value becomes a type-tagged string: ``x<hex>`` blob, ``t<text>`` text, ``i<int>`` integer,
``r<repr>`` real (17 significant digits), JSON ``null`` for NULL. A row image or a key is a JSON
array of those, in column order. SQLite produces them inside the triggers (``sql_encode``);
Python turns them back into values for a restore (``decode_row``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from json.scanner import make_scanner
from typing import Any, cast

SQLiteValue = bytes | str | int | float | None


def sql_encode(expr: str) -> str:
    """SQL expression that encodes ``expr`` (e.g. ``NEW."key"``) as a tagged string."""
    return (
        f"CASE typeof({expr}) WHEN 'blob' THEN 'x' || hex({expr}) "
        f"WHEN 'text' THEN 't' || {expr} WHEN 'integer' THEN 'i' || {expr} "
        f"WHEN 'real' THEN 'r' || printf('%!.17g', {expr}) ELSE NULL END"
    )


#: A tagged value's first letter (see ``sql_encode``) -> what turns the rest back into the value.
_DECODERS: dict[str, Any] = {"x": bytes.fromhex, "t": str, "i": int, "r": float}


def decode_value(tagged: str | None) -> SQLiteValue:
    if tagged is None:
        return None
    decoder = _DECODERS.get(tagged[:1])
    if decoder is None:
        raise ValueError(f"unknown value tag {tagged[:1]!r}")
    value: SQLiteValue = decoder(tagged[1:])
    return value


def decode_row(image: str) -> list[SQLiteValue]:
    values: list[Any] = json.loads(image)
    return [decode_value(v) for v in values]


_scan = make_scanner(cast(Any, json.JSONDecoder()))  # json.loads without its wrapping


def decode_rows(images: Iterable[str]) -> Iterator[list[SQLiteValue]]:
    """``decode_row`` of each image, faster (a restore decodes every row of a store): the JSON
    scanner without ``json.loads``'s wrapping, and one dictionary look-up per value."""
    decoders = _DECODERS
    for image in images:
        try:
            values, end = _scan(image, 0)
            if end == len(image) and isinstance(values, list):
                yield [None if v is None else decoders[v[0]](v[1:]) for v in values]
                continue
        except (KeyError, IndexError, TypeError, StopIteration):
            pass
        yield decode_row(image)  # what json.loads accepts, or the precise error
