"""ffmpeg and ffprobe, which neonize needs for some media conversions: reported once per daemon.

neonize checks for them at the first connect of every process and logs a WARNING when they are
missing. wapool's clients live in worker processes, started and restarted at will, so that
warning came back at every worker start although nothing was wrong: receiving messages and
keeping sessions need neither tool, only conversions do (stickers, voice notes, video
thumbnails). Workers drop neonize's notice; the daemon and ``wapool doctor`` say it once, at
INFO.
"""

from __future__ import annotations

import logging
import shutil

log = logging.getLogger(__name__)

TOOLS = ("ffmpeg", "ffprobe")
#: What the tools are for, in the daemon's line and the doctor's.
NEEDED_FOR = "media conversions only (stickers, voice notes, video thumbnails)"


def missing() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def report_once() -> None:
    """The daemon's one word on the tools, at startup: optional tools, so INFO, not a warning."""
    absent = missing()
    if absent:
        log.info(
            "media_tools_missing", extra={"missing": ",".join(absent), "needed_for": NEEDED_FOR}
        )


class _NeonizeNotice(logging.Filter):
    """neonize's own per-process ffmpeg check (``neonize.utils.ffmpeg``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "check_ffmpeg_available"


_NOTICE = _NeonizeNotice()


def silence_neonize_notice() -> None:
    """In a worker: drop neonize's ffmpeg warning (idempotent; the daemon reports it once)."""
    logging.getLogger("neonize.utils.ffmpeg").addFilter(_NOTICE)
