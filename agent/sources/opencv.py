"""Frames from OpenCV: a video file, a camera (index or /dev/videoN) or an RTSP/HTTP stream."""

from __future__ import annotations

import threading
import time
from typing import TypeAlias

import cv2

from agent.config import CameraConfig, StreamConfig, VideoConfig
from agent.errors import SourceError
from agent.sources.base import Frame

OpenCvConfig: TypeAlias = VideoConfig | CameraConfig | StreamConfig


class FrameSource:
    """Opens the configured source and reads frames; a video file may loop and is paced in real
    time unless ``realtime = false``."""

    def __init__(self, config: OpenCvConfig):
        self.config = config
        # A video file is a recording: it ends (or loops) and is paced only when realtime.
        self._recorded = config if isinstance(config, VideoConfig) else None
        self._capture: cv2.VideoCapture | None = None
        self._index = 0
        self._next_due = 0.0
        self._period = 0.0

    @property
    def live(self) -> bool:
        return self._recorded is None or self._recorded.realtime

    def counters(self) -> dict[str, int]:
        return {}

    def open(self) -> None:
        uri = self.config.uri
        target: int | str = int(uri) if uri.isdigit() else uri
        capture = cv2.VideoCapture(target)
        if not isinstance(self.config, VideoConfig):
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
        paced = self._recorded is not None and self._recorded.realtime and fps > 0
        self._period = 1.0 / fps if paced else 0.0
        self._next_due = time.monotonic()

    def read(self, stop: threading.Event) -> Frame | None:
        """The next frame; None at the end of a file that does not loop."""
        if self._capture is None:
            raise SourceError("source is not open")
        if self._period:
            stop.wait(max(0.0, self._next_due - time.monotonic()))
            self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
        ok, image = self._capture.read()
        if not ok and self._recorded is not None and self._recorded.loop and self._index > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, image = self._capture.read()
        if not ok:
            if self._recorded is not None:
                return None
            raise SourceError(f"{self.config.uri!r} stopped delivering frames")
        frame = Frame(image, self._index, time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
