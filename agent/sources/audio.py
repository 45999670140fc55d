"""Audio windows from a microphone, a WAV/FLAC file or a capture command's s16le samples.

Each window is a ``Frame`` whose image is a 1-D float32 array of ``window_s`` seconds of mono
samples (-1..1) at ``sample_rate``; a new window starts every ``hop_s``. The inputs
(``audio_inputs``) hand over chunks of samples as they come; :class:`Windower` cuts them into
windows through a ring buffer. A live input (microphone, command) never blocks: windows the
capture thread has not taken within ``buffer_s`` are dropped, oldest first, and counted. A file
is read whole, every window, paced like a microphone unless ``realtime = false``.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from agent.config.sources import AudioConfig
from agent.contract.audio import LogMelSpec
from agent.sources.audio_inputs import AudioInput, make_input
from agent.sources.base import Frame


class Windower:
    """Cuts a stream of samples into windows of ``window`` samples every ``hop`` samples:
    window k holds samples [k·hop, k·hop + window) since the start (or the last reset).

    A ring holds the last ``window`` samples; window k is handed out, as a copy (the ring is
    overwritten next), as soon as its last sample has come in."""

    def __init__(self, window: int, hop: int):
        if not 0 < hop <= window:
            raise ValueError(f"hop ({hop}) must be between 1 and the window ({window})")
        self.window, self.hop = window, hop
        self._ring = np.zeros(window, np.float32)
        self._total = 0  # samples taken since the start or the last reset
        self._due = window  # the total at which the next window is complete
        self._at = 0  # where in the ring the next sample goes

    def reset(self) -> None:
        """Start again from nothing (a file looped, a gap in live audio)."""
        self._total, self._due, self._at = 0, self.window, 0

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Take mono samples in; the windows they complete, oldest first."""
        windows: list[np.ndarray] = []
        start = 0
        while start < len(samples):
            take = min(len(samples) - start, self._due - self._total, self.window - self._at)
            self._ring[self._at : self._at + take] = samples[start : start + take]
            start += take
            self._total += take
            self._at = (self._at + take) % self.window
            if self._total == self._due:
                windows.append(self._ordered())
                self._due += self.hop
        return windows

    def flush(self) -> np.ndarray | None:
        """At the end of a recording: one last window holding the samples that no window has
        held yet (all of them when there were fewer than a window), then silence; None when
        every sample was in a window. Then it starts again from nothing."""
        heard = self._due - self.hop if self._due > self.window else 0  # end of the last window
        if self._total <= heard:
            self.reset()
            return None
        missing = self._due - self._total
        real = self._ordered()[missing:]
        self.reset()
        return np.concatenate([real, np.zeros(missing, np.float32)])

    def _ordered(self) -> np.ndarray:
        """The ring oldest sample first (a copy)."""
        return np.concatenate([self._ring[self._at :], self._ring[: self._at]])


class AudioSource:
    """``config``'s audio as windows (see the module's docstring). Counts ``windows`` handed
    out and ``windows_dropped`` (a live input's windows the capture thread did not take in
    time, including audio the microphone's callback had to drop), plus its input's counts."""

    def __init__(self, config: AudioConfig):
        self.config = config
        self._input: AudioInput = make_input(config)
        self._windower = Windower(config.window, config.hop)
        # a live input keeps at most buffer_s of windows waiting; a file keeps what one chunk
        # completes (a chunk is a hop: one or two windows)
        keep = max(1, int(config.buffer_s / config.hop_s)) if config.input != "file" else None
        self._pending: deque[tuple[np.ndarray, int, int]] = deque(maxlen=keep)
        self._index = 0  # the next window's index (restarts when a file loops)
        self._heard = 0  # samples taken from the input since open (paces a file)
        self._started = 0.0
        self._ended = False
        self.windows = 0
        self._dropped = 0

    @property
    def live(self) -> bool:
        # a file played in real time is live like a video file: stale windows are dropped
        return self._input.live or self._paced

    def counters(self) -> dict[str, int]:
        dropped = self._dropped + self._input.dropped_samples // self.config.hop
        return {"windows": self.windows, "windows_dropped": dropped, **self._input.counters()}

    def open(self) -> None:
        self.close()
        self._input.open()
        self._windower.reset()
        self._pending.clear()
        self._index = self._heard = 0
        self._ended = False
        self._started = time.monotonic()

    def read(self, stop: threading.Event) -> Frame | None:
        """The next window; None once ``stop`` is set, or at the end of a file that does not
        loop (or of a command that exited cleanly)."""
        while not self._pending:
            if stop.is_set() or self._ended or not self._fill(stop):
                return None
        window, index, heard = self._pending.popleft()
        if self._paced:
            # a recording played like a microphone: a window comes when its last sample would
            due = self._started + heard / self.config.sample_rate
            if stop.wait(max(0.0, due - time.monotonic())):
                return None
        self.windows += 1
        return Frame(window, index, time.time(), at=heard / self.config.sample_rate)

    def close(self) -> None:
        self._input.close()

    @property
    def _paced(self) -> bool:
        return self.config.input == "file" and self.config.realtime

    def _fill(self, stop: threading.Event) -> bool:
        """Windows from the input's next chunk into ``_pending``; False at its end."""
        got = self._input.chunk(stop)
        if got is None:
            return not stop.is_set() and self._at_end()
        samples, gap = got
        if gap:  # the microphone lost audio: no window may span the hole
            self._windower.reset()
        self._heard += len(samples)
        for window in self._windower.push(samples):
            self._queue(window)
        return True

    def _at_end(self) -> bool:
        """The input ended: the last samples as a padded window; True when a file loops."""
        tail = self._windower.flush()
        if tail is not None:
            self._queue(tail)
        if self.config.loop and self._input.rewind():
            self._index = 0
            return True
        self._ended = True
        return bool(self._pending)

    def _queue(self, window: np.ndarray) -> None:
        if self._pending.maxlen is not None and len(self._pending) == self._pending.maxlen:
            self._dropped += 1  # the oldest goes: a live input never waits for the reader
        self._pending.append((window, self._index, self._heard))
        self._index += 1


def spec_problem(config: AudioConfig, spec: LogMelSpec) -> str | None:
    """Why this source's windows do not fit a model's log-mel input (one line), or None: the
    preprocess would refuse every window of another length, and a window at another sample
    rate would be accepted and heard wrong."""
    if config.sample_rate != spec.sample_rate:
        return (
            f"the audio source gives {config.sample_rate} Hz, the model wants "
            f"{spec.sample_rate} Hz: set source.sample_rate = {spec.sample_rate}"
        )
    if config.window != spec.window:
        return (
            f"the audio source gives windows of {config.window} samples ({config.window_s:g} s), "
            f"the model wants {spec.window} ({spec.window_s:g} s): set source.window_s = "
            f"{spec.window_s:g}"
        )
    return None
