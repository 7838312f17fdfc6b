"""Keeping a store aside when another daemon took its company over.

A daemon that learns (when PostgreSQL returns) that its lease was taken over stops the client
at once; what the store still owes PostgreSQL was written under a lease that is gone and must
never be applied over the new holder's copy. The store is moved aside as a replaced store
(``store.db.replaced-<time>``, see ``leftovers``: kept for the retention period) so this host
no longer holds a working store of the company (``verify`` skips it; if the company comes back
it is restored). When it owed changes, a report names the sequence range kept aside, so
``wapool status``, ``doctor`` and an operator find it, and an alert names it too.
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import closing
from pathlib import Path

from wapool.observability import alerts
from wapool.store import changelog
from wapool.store.leftovers import REPORT_SUFFIX, SUFFIXES, remove_file_set
from wapool.store.rescue import Report, write_report
from wapool.store.restore import replaced_name
from wapool.store.working_store import fsync_path, read_only, store_path

log = logging.getLogger(__name__)


def set_aside(state_dir: Path, company_id: str, reason: str, after_seq: int = 0) -> Report | None:
    """Move the company's store aside; the report of what it owed (its change log after
    ``after_seq``, what PostgreSQL's copy is known to hold), or None (nothing)."""
    path = store_path(state_dir, company_id)
    if not path.exists():
        return None
    with closing(read_only(path)) as conn:
        first = changelog.first_seq_after(conn, after_seq)
        last = changelog.last_seq(conn)
    keep_as = replaced_name(path)
    report = None
    if first is not None:
        report = Report(company_id, keep_as.name, reason, 0, [(first, last)], aside=True)
        write_report(keep_as.with_name(keep_as.name + REPORT_SUFFIX), report)
    _move_file_set(path, keep_as)
    if report is not None:  # the alert is the log line too
        alerts.store_set_aside(company_id, f"{reason}: {report.describe()}")
    else:
        log.info("store_set_aside", extra={"company": company_id, "kept_as": keep_as.name,
                                           "reason": reason, "owed": 0})  # fmt: skip
    return report


#: What ``link`` says on a filesystem without hard links.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _move_file_set(path: Path, keep_as: Path) -> None:
    """Move the store and its companions (``leftovers.SUFFIXES``) to ``keep_as`` so that a
    kill at any point leaves a whole copy there: every file is linked first (the WAL holds
    commits the main file does not), the folder synced, and only then are the originals
    removed, the main file first (a WAL left without it is moved aside as a stray by the next
    restore)."""
    for suffix in SUFFIXES:
        old, new = path.with_name(path.name + suffix), keep_as.with_name(keep_as.name + suffix)
        try:
            os.link(old, new)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            os.replace(old, new)  # a filesystem without hard links: renamed, as it comes
    fsync_path(path.parent)
    remove_file_set(path)
    fsync_path(path.parent)
