"""Frames from OpenCV: a video file, a camera (index or /dev/videoN) or an RTSP/HTTP stream;
``make_source`` picks the source for every kind."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import MqttConfig, SourceConfig
from agent.errors import SourceError


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int  # position in the source (restarts when a file loops)
    captured_at: float  # unix time


class FrameSource:
    """Opens the configured source and reads frames; files may loop and be paced in real time."""

    def __init__(self, config: SourceConfig):
        self.config = config
        self._capture: cv2.VideoCapture | None = None
        self._index = 0
        self._next_due = 0.0
        self._period = 0.0

    @property
    def is_file(self) -> bool:
        return self.config.kind == "video"

    def open(self) -> None:
        uri = self.config.uri
        target: int | str = int(uri) if uri.isdigit() else uri
        capture = cv2.VideoCapture(target)
        if self.config.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        if self.config.fps:
            capture.set(cv2.CAP_PROP_FPS, self.config.fps)
        if not capture.isOpened():
            raise SourceError(f"cannot open {self.config.kind} source {uri!r}")
        self._capture = capture
        self._index = 0
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        self._period = 1.0 / fps if (self.is_file and self.config.realtime and fps > 0) else 0.0
        self._next_due = time.monotonic()

    def read(self, stop: threading.Event) -> Frame | None:
        """The next frame; None at the end of a file that does not loop."""
        if self._capture is None:
            raise SourceError("source is not open")
        if self._period:
            stop.wait(max(0.0, self._next_due - time.monotonic()))
            self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
        ok, image = self._capture.read()
        if not ok and self.is_file and self.config.loop and self._index > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, image = self._capture.read()
        if not ok:
            if self.is_file:
                return None
            raise SourceError(f"{self.config.uri!r} stopped delivering frames")
        frame = Frame(image, self._index, time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def make_source(config: SourceConfig, mqtt: MqttConfig | None = None) -> FrameSource:
    """The source for ``config.kind``; all share ``open`` / ``read(stop)`` / ``close``."""
    if config.kind == "images":
        from agent.sources.images import ImageFolderSource

        return ImageFolderSource(config)  # type: ignore[return-value]
    if config.kind == "sensor":
        from agent.sources.sensors import SensorSource

        return SensorSource(config, mqtt)  # type: ignore[return-value]
    if config.kind == "command":
        from agent.sources.command import CommandSource

        return CommandSource(config)  # type: ignore[return-value]
    if config.kind == "picamera":
        from agent.sources.picamera import PicameraSource

        return PicameraSource(config)  # type: ignore[return-value]
    return FrameSource(config)
