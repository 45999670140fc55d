"""Logging for the command-line tools, with journald priorities under systemd.

When standard error is the journal (systemd sets ``JOURNAL_STREAM`` to the ``device:inode`` of
the stream it connected), each line starts with an sd-daemon(3) priority prefix, ``<3>`` error,
``<4>`` warning, ``<6>`` info, ``<7>`` debug, which journald strips and stores as the entry's
priority: ``journalctl -u edgewise-agent -p err`` then lists the errors alone (a rejected
deployment, a failed source). Anywhere else the lines stay as they are.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def journal_priority(levelno: int) -> int:
    """The syslog priority journald files a record of this level under."""
    if levelno >= logging.ERROR:
        return 3  # critical too: the issue asks for errors to be found with -p err
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal. A child that inherited
    ``JOURNAL_STREAM`` but had its standard error redirected does not match, and keeps plain
    lines."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with its priority: journald reads each line as an entry
    of its own, so a multi-line message keeps its priority on every line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def setup_logging(verbose: bool, fmt: str = DEFAULT_FORMAT) -> None:
    """Log to standard error at INFO (DEBUG when ``verbose``) in ``fmt``, with journald
    priorities when standard error is the journal. Replaces any earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(fmt) if stderr_is_journal() else logging.Formatter(fmt))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
