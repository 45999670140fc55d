"""A voice gate: a voice-activity model (Silero VAD) decides which audio windows reach the
serving model (keyword spotting).

Windows overlap (a 1 s window every 0.25 s), so the VAD runs only on the samples a window adds
to the previous one, in its own chunks (512 samples), its recurrent state carried from chunk to
chunk by the session. A window passes while speech was heard within ``hangover_s`` of its end
(stream time, ``Frame.at``): long enough that the window holding a whole word still passes
after the word's first chunk. Silence and noise keep the gate closed, and the serving model idle.

No ONNX Runtime import here: ``check-config`` checks a gate package through :func:`vad_problem`
without loading a model.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.contract import Manifest, ScoreSpec, WaveformSpec, clip
from agent.sources.base import Frame

if TYPE_CHECKING:
    from agent.inference.runtime import Inference

log = logging.getLogger(__name__)


class VadSession(Protocol):
    """What the gate needs of a ``ModelSession``."""

    manifest: Manifest

    def infer(self, sample: np.ndarray, at: float | None = None) -> Inference: ...

    def reset(self) -> None: ...


def vad_problem(manifest: Manifest) -> str | None:
    """Why this package cannot gate audio (one line), or None: it must take raw samples, carry
    a state from chunk to chunk and give one speech score."""
    what = f"{manifest.name} {manifest.version}"
    if not isinstance(manifest.preprocess, WaveformSpec):
        return f"{what} does not take raw audio samples (preprocess kind waveform)"
    if not manifest.state:
        return f"{what} carries no state from chunk to chunk: not a voice-activity model"
    if not isinstance(manifest.postprocess, ScoreSpec):
        return f"{what} does not give one speech score (postprocess kind score)"
    return None


class VoiceGate:
    """Admits an audio frame when the VAD heard speech within ``hangover_s`` of its end.

    Call it with each frame in stream order (the inference thread's ``screen``). It counts
    frames passed and closed, VAD chunks run and the VAD's own time; ``counters()`` reports
    them. Not thread-safe, like the session it runs."""

    def __init__(
        self, session: VadSession, *, threshold: float | None = None, hangover_s: float = 1.0
    ):
        manifest = session.manifest
        problem = vad_problem(manifest)
        if problem:
            raise ValueError(problem)
        assert isinstance(manifest.preprocess, WaveformSpec)  # vad_problem checked both
        assert isinstance(manifest.postprocess, ScoreSpec)
        self._session = session
        self.chunk, self.rate = manifest.preprocess.window, manifest.preprocess.sample_rate
        self.threshold = manifest.postprocess.threshold if threshold is None else threshold
        self.hangover_s = hangover_s
        self.passed = self.closed = self.chunks = self.errors = 0
        self.vad_s = 0.0
        self._pending = np.zeros(0, np.float32)  # samples short of a whole chunk, heard next
        self._last_at: float | None = None
        self._speech_at = -math.inf  # stream time at the end of the last speech chunk

    def __call__(self, frame: Frame) -> bool:
        """True: infer this frame; False: it holds no recent speech."""
        at = frame.at if frame.at is not None else frame.captured_at
        try:
            self._listen(self._new_samples(frame.image, at), at)
        except Exception as exc:  # a failing VAD must not silence the serving model: fail open
            self.errors += 1
            log.error("voice gate: the VAD failed, frame passed: %s", clip(exc, 200))
            self._reset()
            self._speech_at = at
        self._last_at = at
        admitted = at - self._speech_at <= self.hangover_s
        if admitted:
            self.passed += 1
        else:
            self.closed += 1
        return admitted

    def counters(self) -> dict[str, float]:
        return {
            "gate_passed": self.passed,
            "gate_closed": self.closed,
            "gate_vad_chunks": self.chunks,
            "gate_vad_ms": round(self.vad_s * 1e3, 1),
            "gate_errors": self.errors,
        }

    def _reset(self) -> None:
        """A new stream: the VAD's state, the samples pending and the speech heard forgotten."""
        self._session.reset()
        self._pending = np.zeros(0, np.float32)
        self._speech_at = -math.inf

    def _new_samples(self, window: np.ndarray, at: float) -> np.ndarray:
        """The samples of this window the VAD has not heard: those after the previous frame's
        end. The whole window after a reset: the first frame, ``at`` going backwards (a file
        looped, a source reopened) or a step longer than the window (a gap in the audio)."""
        samples = np.asarray(window, np.float32).reshape(-1)
        last = self._last_at
        step = len(samples) if last is None else round((at - last) * self.rate)
        if last is None or at < last or step > len(samples):
            self._reset()
            return samples
        return samples[len(samples) - step :] if step else samples[:0]

    def _listen(self, new: np.ndarray, at: float) -> None:
        """Run the VAD on every whole chunk of what is pending; note the last speech's time."""
        heard = np.concatenate([self._pending, new]) if len(self._pending) else new
        whole = len(heard) // self.chunk
        for i in range(whole):
            end = (i + 1) * self.chunk
            started = time.perf_counter()
            inference = self._session.infer(heard[end - self.chunk : end])
            self.vad_s += time.perf_counter() - started
            self.chunks += 1
            score = inference.predictions[0].score if inference.predictions else 0.0
            if score >= self.threshold:
                # the chunk's end in stream time: ``at`` is the end of the last sample heard
                self._speech_at = max(self._speech_at, at - (len(heard) - end) / self.rate)
        self._pending = heard[whole * self.chunk :].copy()
