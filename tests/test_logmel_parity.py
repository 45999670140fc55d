"""``log_mel`` (numpy, what the device runs) against librosa (the dev extra), to 1e-4: a model
trained on librosa's features, or ours, sees the same numbers on the device."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from agent.contract import LogMelSpec, log_mel
from agent.contract.audio import mel_filters

SPECS = [
    # keyword spotting at 16 kHz: 32 ms frames, 10 ms hop
    {"sample_rate": 16000, "window": 16000, "n_fft": 512, "hop": 160, "n_mels": 40},
    {
        "sample_rate": 16000,
        "window": 16000,
        "n_fft": 400,  # not a power of two
        "hop": 160,
        "n_mels": 64,
        "fmin": 20.0,
        "fmax": 7600.0,
        "center": True,
    },
    {"sample_rate": 8000, "window": 4000, "n_fft": 256, "hop": 128, "n_mels": 32},
    {
        "sample_rate": 22050,
        "window": 22050,
        "n_fft": 1024,
        "hop": 256,
        "n_mels": 80,
        "center": True,
    },
]


def speechlike(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Harmonics on a gliding pitch, noise, a click and a quiet stretch (-70 dB): the bands
    where a log is least forgiving."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    pitch = 120 + 80 * t / seconds
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    signal = 0.2 * voice + 0.01 * rng.standard_normal(len(t))
    signal[len(t) // 3] += 0.9
    quiet = slice(len(t) // 2, len(t) // 2 + len(t) // 5)
    signal[quiet] *= 10 ** (-70 / 20)
    return signal.astype(np.float32)


def librosa_log_mel(waveform: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=waveform.astype(np.float64),
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop,
        window="hann",
        center=spec.center,
        pad_mode="constant",
        power=2.0,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.top,
        htk=False,
        norm="slaney",
    )
    return np.log(mel + spec.log_offset)


@pytest.mark.parametrize("settings", SPECS)
@pytest.mark.parametrize("log_offset", [1e-6, 1e-10])
def test_log_mel_matches_librosa(settings: dict[str, object], log_offset: float) -> None:
    spec = LogMelSpec.model_validate({"kind": "logmel", "log_offset": log_offset, **settings})
    for seed in range(3):
        waveform = speechlike(spec.sample_rate, spec.window / spec.sample_rate, seed)
        ours, theirs = log_mel(waveform, spec), librosa_log_mel(waveform, spec)
        assert ours.shape == theirs.shape == tuple(spec.input_shape(1)[2:])
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("settings", SPECS)
def test_filterbank_matches_librosa(settings: dict[str, object]) -> None:
    spec = LogMelSpec.model_validate({"kind": "logmel", **settings})
    theirs = librosa.filters.mel(
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.top,
        dtype=np.float64,
    )
    np.testing.assert_allclose(mel_filters(spec), theirs, rtol=1e-9, atol=1e-12)


def test_per_window_normalisation_is_librosas_standardised() -> None:
    spec = LogMelSpec.model_validate({"kind": "logmel", "normalisation": "per_window", **SPECS[0]})
    waveform = speechlike(16000, 1.0, 7)
    theirs = librosa_log_mel(waveform, spec)
    expected = (theirs - theirs.mean()) / theirs.std()
    np.testing.assert_allclose(log_mel(waveform, spec), expected, rtol=0, atol=1e-4)
