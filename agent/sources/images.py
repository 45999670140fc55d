"""Frames from the image files in a folder, in name order; may loop or watch for new files."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import cv2

from agent.config import ImagesConfig
from agent.errors import SourceError
from agent.sources.base import Frame

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
POLL_S = 0.2  # watch: how often the folder is listed again


class ImageFolderSource:
    """Reads ``config.uri``'s images (BGR, as ``cv2.imread`` gives them), sorted by file name.

    At the end it starts again (``loop``), waits for files it has not read yet (``watch``) or
    ends. Unreadable files are skipped and counted once each in ``skipped``. A watched file that
    fails to decode is retried while it still changes, so a file caught mid-write is not lost;
    writers that rename a finished file into the folder avoid the wait.
    """

    def __init__(self, config: ImagesConfig):
        self.config = config
        self.folder = Path(config.uri)
        self.skipped = 0
        self._pending: deque[Path] = deque()
        self._seen: set[Path] = set()  # read or given up on, in this pass
        self._bad: set[Path] = set()  # counted in ``skipped``
        self._retry: dict[Path, tuple[int, int]] = {}  # watch: failed file -> (size, mtime)
        self._final: set[Path] = set()  # watch: settled files whose next failure counts
        self._read_in_pass = False
        self._index = 0
        self._opened = False

    @property
    def live(self) -> bool:
        """Recorded data: every image is inferred, none dropped."""
        return False

    @property
    def is_file(self) -> bool:
        """Reads files (``not live``)."""
        return True

    def counters(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {str(self.folder)!r} is missing or not a folder")
        self._pending.clear()
        self._seen.clear()
        self._retry.clear()
        self._final.clear()
        self._index = 0
        self._read_in_pass = False
        self._opened = True
        self._pending.extend(self._new_files())

    def read(self, stop: threading.Event) -> Frame | None:
        """The next image; None at the end (unless looping or watching) or once ``stop`` is set."""
        if not self._opened:
            raise SourceError("source is not open")
        while not stop.is_set():
            while self._pending:
                path = self._pending.popleft()
                self._seen.add(path)
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    self._failed(path)
                    continue
                self._final.discard(path)
                self._read_in_pass = True
                frame = Frame(image, self._index, time.time())
                self._index += 1
                return frame
            if self.config.loop and self._read_in_pass:
                # A pass without a single readable image ends (or waits, when watching).
                self._read_in_pass = False
                self._seen.clear()
                self._pending.extend(self._new_files())
                continue
            if not self.config.watch:
                return None
            stop.wait(POLL_S)
            self._settle_retries()
            self._pending.extend(self._new_files())
        return None

    def close(self) -> None:
        self._pending.clear()
        self._retry.clear()
        self._opened = False

    def _new_files(self) -> list[Path]:
        try:
            entries = sorted(self.folder.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise SourceError(f"image folder {str(self.folder)!r}: {exc.strerror}") from exc
        return [
            p
            for p in entries
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p not in self._seen
            and p not in self._retry
            and p.is_file()
        ]

    def _failed(self, path: Path) -> None:
        stamp = _stamp(path)
        if self.config.watch and stamp is not None and path not in self._final:
            self._retry[path] = stamp  # perhaps still being written: wait until it settles
            return
        self._final.discard(path)
        if path not in self._bad:
            self._bad.add(path)
            self.skipped += 1

    def _settle_retries(self) -> None:
        """Files unchanged since they failed get one last read; those still changing wait."""
        for path, stamp in list(self._retry.items()):
            now = _stamp(path)
            if now == stamp or now is None:
                del self._retry[path]
                if now is not None:
                    self._final.add(path)
                    self._pending.append(path)
            else:
                self._retry[path] = now


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
