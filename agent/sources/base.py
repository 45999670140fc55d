"""What every source gives: ``Frame`` and the ``Source`` protocol; no kind of source in here."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from agent.config import SourceConfig


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int  # position in the source (restarts when a file loops)
    captured_at: float  # unix time
    # stream time in seconds at the end of the frame, when the source keeps one (audio: samples
    # heard / sample rate); what events debounce on, since a file is read faster than real time
    at: float | None = None


@runtime_checkable
class Source(Protocol):
    """Opened, read frame by frame from the capture thread, closed (and perhaps opened again)."""

    @property
    def config(self) -> SourceConfig:
        """The ``[source]`` table it reads (its ``uri`` names it in status and events)."""
        ...

    @property
    def live(self) -> bool:
        """True when frames come whether or not they are taken (a camera, a stream, a capture
        command, a video played in real time): the pipeline drops a stale frame rather than
        wait. False for a recording that waits for inference (images, a video read as fast as
        inference, sensor samples): every frame is inferred."""
        ...

    def open(self) -> None: ...

    def read(self, stop: threading.Event) -> Frame | None:
        """The next frame; None at the end of a recording that does not loop, or once ``stop``
        is set. A failure raises ``SourceError``."""
        ...

    def close(self) -> None: ...

    def counters(self) -> dict[str, int]:
        """Every count the source keeps (records dropped, files skipped ...), by stable
        snake_case name; empty when it keeps none."""
        ...
