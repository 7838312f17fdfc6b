"""The value codec: ``decode_rows`` (a restore's fast path) decodes exactly as ``decode_row``."""

from __future__ import annotations

import json

import pytest

from wapool.store.codec import decode_row, decode_rows


def test_decode_rows_matches_decode_row() -> None:
    images = [
        json.dumps(["t123@s.whatsapp.net", 'ta"b\\c\n', "xDEADbeef", "i-42", None, "r1.5"]),
        json.dumps(["t", "x", "i0", "r-0.0", "r1e+300"]),
        "[]",
        ' [ "tspaced" ] ',
        '["ttrailing"] ',
    ]
    assert list(decode_rows(images)) == [decode_row(image) for image in images]


@pytest.mark.parametrize(
    ("image", "error"),
    [
        ('["q1"]', "unknown value tag 'q'"),
        ('[""]', "unknown value tag ''"),
        ('["t1"] x', "Extra data"),
        ('{"a": 1}', "unknown value tag 'a'"),
        ("", "Expecting value"),
    ],
)
def test_decode_rows_rejects_what_decode_row_rejects(image: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        list(decode_rows([image]))
