"""Events from a classifier run on overlapping windows of a stream (keyword spotting).

One spoken word spans several windows a hop apart, and a window half over a word makes a
classifier guess: probabilities are averaged over the last ``smoothing`` windows, a label must
reach its own threshold, and one event per ``debounce_s`` of stream time is reported. The
detector remembers the stream, so each session (each stream) has its own.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from agent.contract import AnySpec, EventsSpec
from agent.contract.manifest import PostprocessSpec
from agent.inference.postprocess import Prediction, label_scores, postprocess


class EventDetector:
    """Window by window: the event a window completes, if any (see the module docstring)."""

    def __init__(self, spec: EventsSpec):
        self.spec = spec
        self._floors = np.array(
            [
                np.inf if label in spec.ignore else spec.thresholds.get(label, spec.threshold)
                for label in spec.labels
            ]
        )
        self._recent: deque[np.ndarray] = deque(maxlen=spec.smoothing)
        self._last_event = -np.inf
        self.events = 0

    def reset(self) -> None:
        """A new stream: nothing heard, no event to debounce against."""
        self._recent.clear()
        self._last_event = -np.inf

    def __call__(self, logits: np.ndarray, at: float) -> list[Prediction]:
        """The event of the window ending at stream time ``at`` (seconds), or nothing."""
        if at < self._last_event:
            self.reset()  # the stream started again (a file looped, a source reopened)
        self._recent.append(np.array(label_scores(logits, self.spec)))  # outputs are reused
        mean = np.mean(self._recent, axis=0)
        over = mean - self._floors
        best = int(over.argmax())
        if over[best] < 0 or at - self._last_event < self.spec.debounce_s:
            return []
        self._last_event = at
        self.events += 1
        return [Prediction(self.spec.labels[best], float(mean[best]))]


class Postprocessor:
    """The manifest's postprocess for one stream: stateless kinds pass straight to
    :func:`postprocess`; events go through an :class:`EventDetector`."""

    def __init__(self, spec: PostprocessSpec, preprocess: AnySpec):
        self._spec, self._preprocess = spec, preprocess
        self._events = EventDetector(spec) if isinstance(spec, EventsSpec) else None

    def reset(self) -> None:
        if self._events is not None:
            self._events.reset()

    def __call__(
        self, outputs: list[np.ndarray], frame_shape: tuple[int, ...], at: float | None
    ) -> list[Prediction]:
        if self._events is None:
            return postprocess(outputs, self._spec, frame_shape, self._preprocess)
        if not outputs:
            raise ValueError("model returned no outputs")
        when = time.monotonic() if at is None else at
        return self._events(np.asarray(outputs[0])[0], when)
