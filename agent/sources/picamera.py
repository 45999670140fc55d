"""Frames from a Raspberry Pi camera module through Picamera2 (libcamera), in the agent process.

Picamera2 is Debian's ``python3-picamera2`` on Raspberry Pi OS, not a pip package: the venv must
see the system's site-packages (``deploy/install.sh`` sets that up on a Pi). Without it, the
command source with ``rpicam-vid`` reaches the same camera through a pipe.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from agent.config import PicameraConfig
from agent.errors import SourceError
from agent.sources.base import Frame

POLL_S = 0.2  # longest a read waits before looking at its stop event again
STALL_S = 10.0  # no frame for this long: the camera is hung and is opened again
DEFAULT_SIZE = (640, 480)
INSTALL_HINT = (
    "on Raspberry Pi OS: sudo apt install python3-picamera2, with the agent's venv created "
    "with --system-site-packages (deploy/install.sh --board pi does both); or use "
    'kind = "command" with rpicam-vid (see the README)'
)


def import_picamera2() -> Any:
    """Picamera2's camera class, or SourceError naming the package and the alternative."""
    try:
        from picamera2 import Picamera2
    except Exception as exc:  # ImportError, or a system build that clashes with the venv's numpy
        raise SourceError(
            f"kind = 'picamera' needs picamera2, which does not import "
            f"({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from exc
    return Picamera2


class PicameraSource:
    """Camera ``config.uri`` (its number) at ``width`` × ``height`` (default 640×480) and
    ``fps``, as BGR frames. Live: a stale frame is dropped."""

    def __init__(self, config: PicameraConfig):
        self.config = config
        self._camera: Any = None
        self._index = 0

    @property
    def live(self) -> bool:
        return True

    def counters(self) -> dict[str, int]:
        return {}

    @property
    def name(self) -> str:
        return f"picamera {self.config.uri}"

    def open(self) -> None:
        self.close()
        camera_class = import_picamera2()
        size = (self.config.width or DEFAULT_SIZE[0], self.config.height or DEFAULT_SIZE[1])
        controls = {"FrameRate": self.config.fps} if self.config.fps else {}
        try:
            camera = camera_class(int(self.config.uri))
        except Exception as exc:  # no camera there, or another process holds it
            raise SourceError(f"{self.name}: cannot open: {exc}") from exc
        try:
            # "RGB888" is libcamera's name for B, G, R bytes: what OpenCV calls BGR.
            video = camera.create_video_configuration(
                main={"size": size, "format": "RGB888"}, controls=controls
            )
            camera.configure(video)
            camera.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                camera.close()
            raise SourceError(f"{self.name}: cannot start at {size[0]}x{size[1]}: {exc}") from exc
        self._camera = camera
        self._index = 0

    def read(self, stop: threading.Event) -> Frame | None:
        """The next frame; None once ``stop`` is set."""
        if self._camera is None:
            raise SourceError("source is not open")
        started = time.monotonic()
        try:
            job = self._camera.capture_array("main", wait=False)
            while True:
                try:
                    image = self._camera.wait(job, timeout=POLL_S)
                    break
                except TimeoutError:
                    if stop.is_set():
                        return None
                    if time.monotonic() - started > STALL_S:
                        raise SourceError(f"{self.name}: no frame for {STALL_S:.0f} s") from None
        except SourceError:
            raise
        except Exception as exc:  # libcamera errors come in many types; all mean "reopen"
            raise SourceError(f"{self.name}: capture failed: {exc}") from exc
        frame = Frame(image[:, :, :3], self._index, time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            with contextlib.suppress(Exception):  # closing a camera that failed may fail too
                camera.stop()
            with contextlib.suppress(Exception):
                camera.close()
