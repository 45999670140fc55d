"""Reading a source from a test: one read in a thread, a window's rows."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from agent.sources import Frame

TIMEOUT = 5.0


def read_in_thread(
    read: Callable[[threading.Event], Frame | None], stop: threading.Event
) -> queue.Queue[object]:
    """Runs one ``read(stop)`` in a thread; its frame (or exception) lands in the queue."""
    out: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            out.put(read(stop))
        except Exception as exc:
            out.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return out


def rows(frame: Frame) -> list[list[float]]:
    return frame.image.tolist()
