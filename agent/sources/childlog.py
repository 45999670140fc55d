"""A child process's standard error, drained line by line into the agent's log."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import IO

log = logging.getLogger(__name__)

MAX_LINE = 1000  # characters kept of one line
TAIL = 20  # last lines kept to explain an exit
BURST, PER_SECOND = 50, 1.0  # log at most BURST lines at once, then PER_SECOND on average
_LINE_END = re.compile(rb"[\r\n]")  # ffmpeg ends its progress lines with \r alone


class StderrDrain(threading.Thread):
    """Reads the pipe until the child closes it, so the child never blocks on a full pipe.

    Each line is logged (at most ``BURST`` at once and ``PER_SECOND`` on average after that; the
    rest are counted and the count logged, so a chatty capture tool cannot flood the journal)
    and the last ``TAIL`` are kept in ``tail`` to explain why the child exited. The thread owns
    the pipe and closes it when done.
    """

    def __init__(self, pipe: IO[bytes], program: str):
        super().__init__(name=f"stderr:{program}", daemon=True)
        self._pipe, self._program = pipe, program
        self.tail: deque[str] = deque(maxlen=TAIL)
        self._tokens, self._refilled = float(BURST), time.monotonic()
        self.suppressed = 0  # not logged since the last line that was
        self.unlogged = 0  # not logged, in all

    @property
    def last(self) -> str | None:
        return self.tail[-1] if self.tail else None

    def run(self) -> None:
        pending = b""
        try:
            while chunk := self._pipe.read(65536):  # unbuffered: whatever the pipe holds
                pending += chunk
                *lines, pending = _LINE_END.split(pending)
                for line in lines:
                    self._line(line)
                if len(pending) > MAX_LINE:  # a line without end: log what there is
                    self._line(pending)
                    pending = b""
            self._line(pending)
        except (OSError, ValueError):  # closed under us: the source is going away
            pass
        finally:
            self._pipe.close()
        if self.suppressed:
            log.info("%s: %d more stderr lines not logged", self._program, self.suppressed)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").strip()[:MAX_LINE]
        if not text:
            return
        self.tail.append(text)
        if not self._admit():
            self.suppressed += 1
            self.unlogged += 1
            return
        if self.suppressed:
            log.info("%s: %d stderr lines not logged", self._program, self.suppressed)
            self.suppressed = 0
        log.info("%s: %s", self._program, text)

    def _admit(self) -> bool:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
