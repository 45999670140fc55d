"""Raw audio straight into the model: a window of mono samples as a 1 × samples tensor.

Voice-activity models (Silero VAD) take samples, not a spectrogram, and many keep a little of
the previous window in front of the new one (``context``): the runtime carries that tail from
one run to the next like any other state (``agent.inference.state``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.contract.audio import MAX_AUDIO_WINDOW, MAX_SAMPLE_RATE


class WaveformSpec(BaseModel):
    """A window of ``window`` mono float samples (-1..1) at ``sample_rate``; the model's input is
    the last ``context`` samples of the previous window followed by this one."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["waveform"]
    sample_rate: int = Field(default=16000, gt=0, le=MAX_SAMPLE_RATE)
    window: int = Field(gt=0, le=MAX_AUDIO_WINDOW)
    context: int = Field(default=0, ge=0, le=MAX_AUDIO_WINDOW)
    dtype: Literal["float32"] = "float32"

    @property
    def window_s(self) -> float:
        return self.window / self.sample_rate

    def input_shape(self, batch: int | None = 1) -> list[int | None]:
        return [batch, self.context + self.window]


def waveform_tensor(samples: np.ndarray, spec: WaveformSpec) -> np.ndarray:
    """One window to a batch-of-one tensor, 1 × window (the context is the runtime's to add)."""
    if np.shape(samples) != (spec.window,):
        raise ValueError(f"one window of {spec.window} samples expected, not {np.shape(samples)}")
    return np.ascontiguousarray(np.asarray(samples, np.float32)[None])
