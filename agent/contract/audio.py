"""Audio preprocessing, declared once in the manifest: a window of samples to a log-mel image.

The compiler trains, calibrates and evaluates through :func:`log_mel`; the agent feeds the model
through the same function, so a window heard on the device becomes exactly the tensor the
compiler measured accuracy on. numpy only: a board has no librosa or scipy. The filterbank is
librosa's default (Slaney mel scale, Slaney area normalisation) and the frames are its
``stft`` frames (periodic Hann window of ``n_fft`` samples, power 2), so a model trained on
``librosa.feature.melspectrogram`` features sees the same numbers (``tests/test_logmel_parity``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SAMPLE_RATE = 384_000
MAX_AUDIO_WINDOW = 2**22  # samples: over four minutes at 16 kHz
MAX_N_FFT = 2**16
MAX_MELS = 512
# per_window: a window's spread is floored so that silence (a flat spectrogram) stays near zero
# instead of amplifying rounding noise to unit variance.
STD_FLOOR = 1e-5


class LogMelSpec(BaseModel):
    """How a window of mono samples (float, -1..1) becomes the model's input: the log of a mel
    power spectrogram, ``n_mels`` rows by :attr:`frames` columns, one channel (NCHW)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["logmel"]
    sample_rate: int = Field(default=16000, gt=0, le=MAX_SAMPLE_RATE)
    window: int = Field(gt=0, le=MAX_AUDIO_WINDOW)  # samples per model input
    n_fft: int = Field(default=512, ge=2, le=MAX_N_FFT)  # frame length and FFT size
    hop: int = Field(default=160, gt=0, le=MAX_AUDIO_WINDOW)  # samples between two frames
    n_mels: int = Field(default=40, gt=0, le=MAX_MELS)
    fmin: float = Field(default=0.0, ge=0)
    fmax: float | None = None  # None: the Nyquist frequency
    # True: the window is zero-padded by n_fft // 2 on each side, so frame t is centred on
    # sample t * hop (librosa's center=True, pad_mode="constant")
    center: bool = False
    log_offset: float = Field(default=1e-6, gt=0)  # log(mel + log_offset): no log(0)
    # none; per_window: each window to zero mean and unit spread (gain-independent); fixed: the
    # given mean and std (1 value, or one per mel band), measured by the compiler on training data
    normalisation: Literal["none", "per_window", "fixed"] = "none"
    mean: tuple[float, ...] = Field(default=(0.0,), max_length=MAX_MELS)
    std: tuple[float, ...] = Field(default=(1.0,), max_length=MAX_MELS)
    dtype: Literal["float32"] = "float32"

    @property
    def top(self) -> float:
        """The highest frequency the filterbank covers (Hz)."""
        return self.sample_rate / 2 if self.fmax is None else self.fmax

    @property
    def frames(self) -> int:
        """Spectrogram columns per window."""
        padded = self.window + (2 * (self.n_fft // 2) if self.center else 0)
        return 1 + (padded - self.n_fft) // self.hop

    @property
    def window_s(self) -> float:
        return self.window / self.sample_rate

    @model_validator(mode="after")
    def _check(self) -> LogMelSpec:
        padded = self.window + (2 * (self.n_fft // 2) if self.center else 0)
        if self.n_fft > padded:
            raise ValueError(f"n_fft ({self.n_fft}) longer than the window ({self.window} samples)")
        if self.top > self.sample_rate / 2:
            raise ValueError(f"fmax ({self.top:g} Hz) above Nyquist ({self.sample_rate / 2:g} Hz)")
        if self.fmin >= self.top:
            raise ValueError(f"fmin ({self.fmin:g} Hz) not below fmax ({self.top:g} Hz)")
        if self.normalisation != "fixed" and (self.mean, self.std) != ((0.0,), (1.0,)):
            raise ValueError("mean and std apply to normalisation = 'fixed' only")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.n_mels):
                raise ValueError(f"{key} needs 1 or n_mels ({self.n_mels}) values")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        empty = np.flatnonzero(mel_filters(self).max(axis=1) <= 0)
        if empty.size:
            raise ValueError(
                f"mel band {int(empty[0])} of {self.n_mels} is empty: too many n_mels for "
                f"n_fft {self.n_fft} between {self.fmin:g} and {self.top:g} Hz"
            )
        return self

    def input_shape(self, batch: int | None = 1) -> list[int | None]:
        return [batch, 1, self.n_mels, self.frames]


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear to 1 kHz, logarithmic above."""
    freq = np.asarray(hz, np.float64)
    linear = freq / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(freq >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mels = np.asarray(mel, np.float64)
    linear = mels * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0))
    return np.where(mels >= 15.0, log_part, linear)


@lru_cache(maxsize=16)
def _filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bins = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights: np.ndarray = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per band (Slaney)
    weights.setflags(write=False)
    return weights


def mel_filters(spec: LogMelSpec) -> np.ndarray:
    """The n_mels × (n_fft // 2 + 1) filterbank (float64, read-only, cached)."""
    return _filters(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.top)


@lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    # periodic, as an FFT window should be (scipy's get_window("hann", n, fftbins=True))
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window.setflags(write=False)
    return window


def _samples(waveform: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    samples = np.asarray(waveform)
    if samples.ndim not in (1, 2) or samples.shape[-1] != spec.window:
        raise ValueError(
            f"waveform of shape {samples.shape}: the spec wants {spec.window} samples per window"
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"waveform of dtype {samples.dtype}: samples must be float (-1..1)")
    samples = samples.astype(np.float64)
    if not np.isfinite(samples).all():
        raise ValueError("waveform holds NaN or infinite samples")
    if spec.center:
        half = spec.n_fft // 2
        samples = np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(half, half)])
    return samples


def _normalise(logmel: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    if spec.normalisation == "per_window":
        mean = logmel.mean(axis=(-2, -1), keepdims=True)
        std = logmel.std(axis=(-2, -1), keepdims=True)
        scaled: np.ndarray = (logmel - mean) / np.maximum(std, STD_FLOOR)
        return scaled
    if spec.normalisation == "fixed":
        mean = np.asarray(spec.mean, np.float64)[:, None]
        std = np.asarray(spec.std, np.float64)[:, None]
        return (logmel - mean) / std
    return logmel


def log_mel(waveform: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    """One window (``spec.window`` float samples) to its n_mels × frames log-mel spectrogram,
    or a batch of windows (batch × window) to batch × n_mels × frames; float32. Computed in
    float64 so that quiet bands agree with the compiler's copy to far below 1e-4."""
    samples = _samples(waveform, spec)
    frames = np.lib.stride_tricks.sliding_window_view(samples, spec.n_fft, axis=-1)
    frames = frames[..., :: spec.hop, :][..., : spec.frames, :]
    spectrum = np.fft.rfft(frames * _hann(spec.n_fft), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2  # frames × bins
    mel = np.matmul(mel_filters(spec), np.swapaxes(power, -1, -2))  # n_mels × frames
    logmel = _normalise(np.log(mel + spec.log_offset), spec)
    return logmel.astype(np.float32)


def logmel_tensor(waveform: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    """One window to the model's batch-of-one input, 1 × 1 × n_mels × frames."""
    if np.ndim(waveform) != 1:
        raise ValueError(
            f"one window of {spec.window} samples expected, not shape {np.shape(waveform)}"
        )
    return np.ascontiguousarray(log_mel(waveform, spec)[None, None])


def logmel_batch(waveforms: np.ndarray | list[np.ndarray], spec: LogMelSpec) -> np.ndarray:
    """Many windows to one batch tensor, N × 1 × n_mels × frames (calibration, evaluation)."""
    stacked = (
        np.stack([np.asarray(w) for w in waveforms]) if isinstance(waveforms, list) else waveforms
    )
    if np.ndim(stacked) != 2:
        raise ValueError(
            f"a batch of windows (N × {spec.window}) expected, not shape {np.shape(stacked)}"
        )
    return np.ascontiguousarray(log_mel(stacked, spec)[:, None])
