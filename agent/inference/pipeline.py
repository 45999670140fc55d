"""The frame path: a capture thread fills a latest-frame slot, an inference thread drains it.

Each thread owns one job and stops on a shared event. A camera never waits for inference: a frame
not yet taken when the next arrives is dropped and counted. A file read faster than real time
blocks instead, so every frame of it is inferred.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from agent.errors import SourceError
from agent.inference.runtime import Inference, ModelSession
from agent.inference.stats import StageStats
from agent.sources import Frame, Source

log = logging.getLogger(__name__)

MAX_REOPEN_DELAY = 30.0
HEALTHY_S = 10.0  # a source that ran this long before failing is reopened after 1 s again


class FrameSlot:
    """Frames between the capture and inference threads.

    Live sources (``block=False``) hold one frame: a newer frame replaces one not yet taken,
    which is counted as dropped, so inference always sees the latest and nothing queues. Files
    (``block=True``) hold a few frames and make capture wait when full, so none is lost and the
    two threads rarely wait on each other.
    """

    def __init__(self, block: bool, depth: int = 8):
        self._block = block
        self._frames: deque[Frame] = deque()
        self._capacity = depth if block else 1
        self._closed = False
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> None:
        with self._not_full:
            while self._block and len(self._frames) >= self._capacity and not stop.is_set():
                self._not_full.wait(0.2)
            if len(self._frames) >= self._capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._not_empty.notify()

    def take(self, timeout: float) -> Frame | None:
        with self._not_empty:
            if not self._frames and not self._closed:
                self._not_empty.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._not_full.notify()
            return frame

    def close(self) -> None:
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()

    @property
    def exhausted(self) -> bool:
        with self._not_empty:
            return self._closed and not self._frames


class ModelSlot:
    """The session serving now; swapped between two frames by the deployer."""

    def __init__(self) -> None:
        self._session: ModelSession | None = None
        self._lock = threading.Lock()
        self.serving = threading.Event()  # set once a model serves (it never stops serving)

    @property
    def current(self) -> ModelSession | None:
        with self._lock:
            return self._session

    def swap(self, session: ModelSession) -> ModelSession | None:
        with self._lock:
            old, self._session = self._session, session
        self.serving.set()
        return old


class HealthStats:
    """Inference outcomes since the last reset: what probation after a switch judges."""

    def __init__(self, keep: int = 2000):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=keep)
        self.ok = self.failed = 0

    def record(self, latency_ms: float | None) -> None:
        with self._lock:
            if latency_ms is None:
                self.failed += 1
            else:
                self.ok += 1
                self._latencies.append(latency_ms)

    def reset(self) -> None:
        with self._lock:
            self._latencies.clear()
            self.ok = self.failed = 0

    def snapshot(self) -> tuple[int, float, float | None]:
        """(frames seen, error rate, p99 latency ms or None)."""
        with self._lock:
            seen = self.ok + self.failed
            rate = self.failed / seen if seen else 0.0
            p99 = float(np.percentile(self._latencies, 99)) if self._latencies else None
            return seen, rate, p99


class SourceEnded(SourceError):
    """A file source reached its end (and does not loop)."""


class CaptureWorker(threading.Thread):
    """Reads the source into the slot; reopens it with capped backoff when it fails (1, 2, 4 …
    30 s while it keeps failing; 1 s again after it ran for ``HEALTHY_S``)."""

    def __init__(
        self,
        source: Source,
        slot: FrameSlot,
        stop: threading.Event,
        on_state: SourceState | None = None,
        ready: threading.Event | None = None,
    ):
        """``ready``: the source stays closed until it is set (a model serves): with nothing to
        infer, decoding a camera or a file would only burn the board's CPU."""
        super().__init__(name="capture", daemon=True)
        self._source, self._slot, self._halt = source, slot, stop
        self._on_state = on_state or (lambda _state, _detail: None)
        self._ready = ready
        self.frames = 0

    def _wait_until_ready(self) -> bool:
        if self._ready is None or self._ready.is_set():
            return True
        log.info("the source stays closed until a model serves")
        while not self._halt.is_set():
            if self._ready.wait(0.5):
                return True
        return False

    def run(self) -> None:
        delay = 1.0
        if not self._wait_until_ready():
            self._slot.close()
            return
        try:
            while not self._halt.is_set():
                opened = time.monotonic()
                try:
                    self._stream()
                except SourceError as exc:
                    if time.monotonic() - opened >= HEALTHY_S:
                        delay = 1.0  # it ran well: a new failure, not a crash loop
                    self._failed(exc, delay)
                    delay = min(delay * 2, MAX_REOPEN_DELAY)
        finally:
            self._source.close()
            self._slot.close()

    def _stream(self) -> None:
        """Open the source and move its frames into the slot until it fails or we stop."""
        self._source.open()
        self._on_state("open", self._source.config.uri)
        while not self._halt.is_set():
            frame = self._source.read(self._halt)
            if frame is None and self._halt.is_set():
                return  # stopping: not an end worth reporting
            if frame is None:
                raise SourceEnded(f"end of {self._source.config.uri}")
            self.frames += 1
            self._slot.put(frame, self._halt)

    def _failed(self, exc: SourceError, delay: float) -> None:
        # A camera unplugged, a stream down, a capture process dead, a file at its end: the
        # daemon stays up and tries again, backing off up to MAX_REOPEN_DELAY.
        log.warning("%s; reopening in %.0f s", exc, delay)
        state = "ended" if isinstance(exc, SourceEnded) else "failed"
        self._on_state(state, f"{exc}; reopening in {delay:.0f} s")
        self._source.close()
        self._halt.wait(delay)


ResultSink = Callable[[Frame, ModelSession, Inference], None]
# Sees every inferred frame after the sink (shadow evaluation, Home Assistant's state); runs on
# the inference thread, so it only hands work on.
Observer = Callable[[Frame, ModelSession, Inference], None]


class RateGate:
    """At most ``max_fps`` frames a second are inferred (None: all); the rest are skipped and
    counted. Set from any thread (the ``rate`` command, a reload)."""

    def __init__(self, max_fps: float | None = None):
        self.max_fps = max_fps
        self.skipped = 0
        self._next = 0.0

    def admit(self, now: float) -> bool:
        fps = self.max_fps
        if fps is None:
            return True
        if now < self._next:
            self.skipped += 1
            return False
        period = 1.0 / fps
        # Due one period after the last slot, so frames arriving unevenly still make max_fps;
        # a pause earns at most one frame of catching up, not a burst.
        self._next = max(self._next, now - period) + period
        return True


SourceState = Callable[[str, str], None]  # (state, detail): "open", "failed", "ended"


class InferenceWorker(threading.Thread):
    """Runs the serving model on each frame taken from the slot and hands results on."""

    def __init__(
        self,
        slot: FrameSlot,
        models: ModelSlot,
        sink: ResultSink,
        stop: threading.Event,
        health: HealthStats,
        stages: StageStats,
        heartbeat: Callable[[], None] = lambda: None,
        gate: RateGate | None = None,
        screen: Callable[[Frame], bool] | None = None,
    ):
        """``heartbeat`` runs on every pass of the loop, a frame or not (the systemd watchdog):
        if the loop hangs, it stops. ``gate``: skips frames over a maximum rate. ``screen``:
        a frame it refuses is not inferred and gives no result (the voice gate); it sees every
        frame taken, before the rate gate, so that it hears the stream whole."""
        super().__init__(name="inference", daemon=True)
        self._slot, self._models, self._sink, self._halt = slot, models, sink, stop
        self.frames_without_model = 0
        self._health, self._stages, self._heartbeat = health, stages, heartbeat
        self.gate = gate or RateGate()
        self._screen = screen
        self.observers: list[Observer] = []  # add before start()
        self.last_frame: Frame | None = None  # the latest frame inferred (a snapshot's)

    def run(self) -> None:
        while not self._halt.is_set() and not self._slot.exhausted:
            self._heartbeat()
            frame = self._slot.take(timeout=0.2)
            if frame is None:
                continue
            taken = time.perf_counter()
            if self._screen is not None and not self._screen(frame):
                continue
            if not self.gate.admit(taken):
                continue
            waited_ms = max(0.0, (time.time() - frame.captured_at) * 1e3)
            session = self._models.current
            if session is None:
                self.frames_without_model += 1
                continue
            try:
                inference = session.infer(frame.image, frame.at)
            except Exception as exc:  # one bad frame must not stop the camera
                # One line; the traceback only with --verbose (users never see one).
                log.error(
                    "inference failed on frame %d: %s: %s",
                    frame.index,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self._health.record(None)
                continue
            self._health.record(inference.inference_ms)
            reported = time.perf_counter()
            self._sink(frame, session, inference)
            self.last_frame = frame
            for observer in self.observers:
                observer(frame, session, inference)
            done = time.perf_counter()
            self._stages.record(
                queue=waited_ms,
                preprocess=inference.preprocess_ms,
                inference=inference.inference_ms,
                postprocess=inference.postprocess_ms,
                report=(done - reported) * 1e3,
                total=(done - taken) * 1e3,
            )
