"""The COPY data of a tick's changes, built (and sealed) off the event loop, chunk by chunk.

``pg_copy.apply`` writes the changes of one transaction in chunks of at most ``CHUNK_ROWS``
rows, each one step of each prefix at a time (see ``changelog``: a purge is applied between
steps). While PostgreSQL upserts a chunk, a worker thread builds the next one: sealing each
image (``crypto.envelope.seal``, bound to its company, table, key and the prefix's ``seq``) and
writing COPY's text format, which is the mirror's Python work per row. A tick of a busy host
(a few rows per company) is one chunk; a backlog of 100,000 rows is ten, overlapped.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from wapool.crypto.envelope import DataKey, seal

if TYPE_CHECKING:
    from wapool.store.pg_copy import Batch

CHUNK_ROWS = 10_000
COLUMNS = "company_id, tbl, pk, image, at, seq, step"

_SPECIAL = re.compile(r"[\\\t\n\r]")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_step_of = attrgetter("step")


@dataclass(frozen=True)
class Chunk:
    step: int
    #: (batch, first change, end) of each prefix's changes in this chunk.
    parts: tuple[tuple[Batch, int, int], ...]


def chunks(batches: list[Batch]) -> list[Chunk]:
    """The batches' changes in chunks of at most ``CHUNK_ROWS``, step by step (every chunk of
    step 0, then of step 1, ...); a step without changes has no chunk."""
    steps = max((len(b.prefix.purges) for b in batches), default=0) + 1
    out: list[Chunk] = []
    for step in range(steps):
        parts: list[tuple[Batch, int, int]] = []
        size = 0
        for batch in batches:
            changes = batch.prefix.changes  # in step order (changelog.read_prefix)
            first = bisect_left(changes, step, key=_step_of)
            end = bisect_left(changes, step + 1, lo=first, key=_step_of)
            while first < end:
                take = min(end - first, CHUNK_ROWS - size)
                parts.append((batch, first, first + take))
                first, size = first + take, size + take
                if size == CHUNK_ROWS:
                    out.append(Chunk(step, tuple(parts)))
                    parts, size = [], 0
        if parts:
            out.append(Chunk(step, tuple(parts)))
    return out


def encode(chunk: Chunk, keys: dict[str, DataKey] | None) -> bytes:
    """COPY text rows (``COLUMNS``) of the chunk; with a company's key, its images sealed."""
    lines: list[str] = []
    for batch, first, end in chunk.parts:
        company, seq = batch.company_id, batch.prefix.high_seq
        dk = _key(keys, company)
        head, tail = _text(company), f"\t{seq}\t{chunk.step}\n"
        for c in batch.prefix.changes[first:end]:
            if c.image is None:
                image = "\\N"
            elif dk is not None:
                image = seal(dk, company, c.table, c.key, seq, c.image)  # base64: nothing to escape
            else:
                image = _text(c.image)
            lines.append(f"{head}\t{_text(c.table)}\t{_text(c.key)}\t{image}\t{c.at!r}{tail}")
    return "".join(lines).encode()


def _key(keys: dict[str, DataKey] | None, company: str) -> DataKey | None:
    """The company's data key when the mirror seals; never a plaintext image in its stead."""
    if not keys:
        return None
    try:
        return keys[company]
    except KeyError:
        raise RuntimeError(f"no data key to seal company {company!r}'s rows") from None


def _text(value: str) -> str:
    """A value in COPY's text format (images are JSON from SQLite: escaping is rare)."""
    return value.translate(_ESCAPES) if _SPECIAL.search(value) else value
