"""The log-mel spec and ``log_mel``: the numbers a keyword model sees, on the device (numpy only;
the parity with librosa is tests/test_logmel_parity.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent.contract import (
    LogMelSpec,
    Manifest,
    describe_blob,
    log_mel,
    logmel_batch,
    logmel_tensor,
    to_tensor,
)
from agent.contract.audio import hz_to_mel, mel_filters, mel_to_hz
from pydantic import ValidationError

RATE = 16000
KWS = LogMelSpec(kind="logmel", sample_rate=RATE, window=RATE, n_fft=512, hop=160, n_mels=40)


def tone(hz: float, seconds: float = 1.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def band_of(hz: float, spec: LogMelSpec) -> int:
    """The band whose filter weighs the FFT bin nearest ``hz`` most."""
    return int(np.argmax(mel_filters(spec)[:, round(hz * spec.n_fft / spec.sample_rate)]))


def test_shape_dtype_and_input_shape_agree() -> None:
    out = log_mel(tone(440), KWS)
    assert out.dtype == np.float32 and out.shape == (40, 1 + (RATE - 512) // 160) == (40, 97)
    assert KWS.input_shape(1) == [1, 1, 40, 97] == list(logmel_tensor(tone(440), KWS).shape)
    assert KWS.input_shape(None)[0] is None
    centred = KWS.model_copy(update={"center": True})
    assert centred.frames == 1 + RATE // 160 == log_mel(tone(440), centred).shape[1]


@pytest.mark.parametrize("hz", [300.0, 1000.0, 2500.0, 6000.0])
def test_a_tone_lights_the_band_that_holds_its_frequency(hz: float) -> None:
    out = log_mel(tone(hz), KWS)
    loudest = np.argmax(out.mean(axis=1))
    assert loudest == band_of(hz, KWS)
    # steady tone: every frame the same, far above the bands a long way off
    assert np.ptp(out[loudest]) < 0.05
    assert out[loudest].mean() - out[(loudest + 10) % 40].mean() > 5


def test_gain_shifts_the_log_power_by_its_square() -> None:
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(RATE)).astype(np.float32)
    quiet, loud = log_mel(noise, KWS), log_mel(3 * noise, KWS)
    np.testing.assert_allclose(loud - quiet, np.log(9), atol=1e-3)


def test_silence_is_the_log_of_the_offset() -> None:
    out = log_mel(np.zeros(RATE, np.float32), KWS)
    np.testing.assert_allclose(out, np.log(KWS.log_offset), rtol=1e-6)


def test_per_window_normalisation_ignores_gain_and_is_standardised() -> None:
    # an offset far below the quietest band, so that only the gain differs
    spec = KWS.model_copy(update={"normalisation": "per_window", "log_offset": 1e-12})
    rng = np.random.default_rng(1)
    voice = tone(700) + (0.02 * rng.standard_normal(RATE)).astype(np.float32)
    out = log_mel(voice, spec)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    np.testing.assert_allclose(log_mel(0.1 * voice, spec), out, atol=1e-4)
    silence = log_mel(np.zeros(RATE, np.float32), spec)
    assert np.abs(silence).max() < 1e-6  # a flat spectrogram: no rounding noise blown up


def test_fixed_normalisation_per_band() -> None:
    mean, std = tuple(float(-i) for i in range(40)), tuple(float(1 + i) for i in range(40))
    spec = LogMelSpec.model_validate(
        {**KWS.model_dump(), "normalisation": "fixed", "mean": mean, "std": std}
    )
    raw = log_mel(tone(1000), KWS)
    expected = (raw - np.array(mean)[:, None]) / np.array(std)[:, None]
    np.testing.assert_allclose(log_mel(tone(1000), spec), expected, rtol=1e-5, atol=1e-5)


def test_centred_frame_t_is_centred_on_sample_t_times_hop() -> None:
    spec = KWS.model_copy(update={"center": True})
    click = np.zeros(RATE, np.float32)
    click[50 * 160] = 1.0
    assert np.argmax(log_mel(click, spec).sum(axis=0)) == 50


def test_a_batch_is_each_window_on_its_own() -> None:
    rng = np.random.default_rng(2)
    windows = (0.1 * rng.standard_normal((3, RATE))).astype(np.float32)
    batch = logmel_batch(windows, KWS)
    assert batch.shape == (3, 1, 40, 97)
    for i in range(3):
        np.testing.assert_array_equal(batch[i, 0], log_mel(windows[i], KWS))
    np.testing.assert_array_equal(logmel_batch(list(windows), KWS), batch)
    np.testing.assert_array_equal(to_tensor(windows[0], KWS), batch[:1])


def test_slaney_mel_scale() -> None:
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0)
    assert float(hz_to_mel(200.0)) == pytest.approx(3.0)
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)


def test_filters_are_unit_area_triangles_between_fmin_and_fmax() -> None:
    spec = KWS.model_copy(update={"fmin": 100.0, "fmax": 7000.0})
    filters = mel_filters(spec)
    bins = np.arange(257) * RATE / 512
    assert filters.shape == (40, 257) and not filters.flags.writeable
    assert np.all(filters[:, (bins < 100) | (bins > 7000)] == 0)
    centres = bins[np.argmax(filters, axis=1)]
    assert np.all(np.diff(centres) >= 0)  # bands climb in frequency


def test_manifest_round_trips_a_logmel_preprocess(tmp_path: Path) -> None:
    model = tmp_path / "kws.onnx"
    model.write_bytes(b"x" * 100)
    data = {
        "name": "kws",
        "version": "1.0.0",
        "created_at": "2026-11-30T00:00:00+00:00",
        "model": describe_blob(model, 64 * 1024).model_dump(),
        "input": {"name": "input", "shape": [None, 1, 40, 97]},
        "preprocess": {"kind": "logmel", "window": 16000, "normalisation": "per_window"},
        "postprocess": {"labels": ["yes", "no"]},
    }
    manifest = Manifest.model_validate(data)
    assert isinstance(manifest.preprocess, LogMelSpec)
    assert manifest.preprocess.input_shape(None) == [None, 1, 40, 97]
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again.preprocess == manifest.preprocess


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"window": 256}, "n_fft (512) longer than the window (256 samples)"),
        ({"fmax": 9000.0}, "fmax (9000 Hz) above Nyquist (8000 Hz)"),
        ({"fmin": 8000.0}, "fmin (8000 Hz) not below fmax (8000 Hz)"),
        ({"n_mels": 128, "n_fft": 256}, "is empty: too many n_mels for n_fft 256"),
        ({"mean": (1.0,)}, "mean and std apply to normalisation = 'fixed' only"),
        ({"normalisation": "fixed", "mean": (1.0, 2.0)}, "mean needs 1 or n_mels (40) values"),
        ({"normalisation": "fixed", "std": (0.0,)}, "std values must be positive"),
        ({"log_offset": 0.0}, "greater than 0"),
        ({"hop": 0}, "greater than 0"),
    ],
)
def test_bad_specs_are_refused_with_one_line(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LogMelSpec.model_validate({**KWS.model_dump(), **settings})
    assert caught.value.error_count() == 1 and message in str(caught.value)


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (np.zeros(8000, np.float32), "waveform of shape (8000,): the spec wants 16000 samples"),
        (np.zeros(RATE, np.int16), "dtype int16: samples must be float"),
        (np.full(RATE, np.nan, np.float32), "NaN or infinite"),
        (np.zeros((2, 2, RATE), np.float32), "shape (2, 2, 16000)"),
    ],
)
def test_bad_waveforms_are_refused_with_one_line(waveform: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        log_mel(waveform, KWS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_one_window_or_a_batch_where_each_is_expected() -> None:
    with pytest.raises(ValueError, match="one window of 16000 samples expected"):
        logmel_tensor(np.zeros((2, RATE), np.float32), KWS)
    with pytest.raises(ValueError, match="a batch of windows"):
        logmel_batch(np.zeros(RATE, np.float32), KWS)
