"""Audio sources: windows cut from files (wave and soundfile), a capture command's s16le output
and a microphone (a stand-in for sounddevice: no device here)."""

from __future__ import annotations

import sys
import threading
import types
import wave
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from agent.config.sources import AudioConfig, resolve_paths, source_config
from agent.contract import LogMelSpec
from agent.errors import SourceError
from agent.sources import make_source
from agent.sources.audio import AudioSource, Windower, spec_problem
from agent.sources.audio_files import open_audio_file, pcm_to_float
from pydantic import ValidationError

RATE = 8000


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def ramp(n: int) -> np.ndarray:
    """Distinct, exactly representable 16-bit samples: window k must be ramp[k·hop:...]."""
    return ((np.arange(n) % 20000) - 10000).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE, width: int = 2) -> Path:
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def audio(**settings: Any) -> AudioSource:
    config = source_config(kind="audio", sample_rate=RATE, **settings)
    source = make_source(config)
    assert isinstance(source, AudioSource)
    return source


def read_all(source: AudioSource, stop: threading.Event, most: int = 1000) -> list[Any]:
    frames: list[Any] = []
    source.open()
    while len(frames) < most and (frame := source.read(stop)) is not None:
        frames.append(frame)
    source.close()
    return frames


# -- the windower --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 250, 1000, 3333])
def test_window_k_holds_samples_k_hop_onwards_whatever_the_chunks(chunk: int) -> None:
    signal = np.arange(5000, dtype=np.float32)
    windower = Windower(1000, 250)
    windows = []
    for start in range(0, len(signal), chunk):
        windows += windower.push(signal[start : start + chunk])
    assert len(windows) == 1 + (5000 - 1000) // 250
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(window, signal[k * 250 : k * 250 + 1000])
    assert windower.flush() is None  # 5000 = 16 hops + a window: every sample was in one


def test_flush_pads_the_unheard_tail_and_a_short_recording() -> None:
    windower = Windower(1000, 250)
    signal = np.arange(1, 1101, dtype=np.float32)  # 100 samples past the first window
    assert len(windower.push(signal)) == 1
    tail = windower.flush()
    assert tail is not None
    np.testing.assert_array_equal(tail[:850], signal[250:1100])  # the next window, cut short
    assert np.all(tail[850:] == 0)
    windower.push(signal[:300])
    short = windower.flush()
    assert short is not None
    np.testing.assert_array_equal(short[:300], signal[:300])
    assert np.all(short[300:] == 0) and windower.flush() is None


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["soundfile", "wave"])
def test_a_wav_file_gives_every_window_then_its_tail(
    tmp_path: Path, stop: threading.Event, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reader == "wave":
        monkeypatch.setitem(sys.modules, "soundfile", None)  # a board without soundfile
    pcm = ramp(RATE * 2 + 100)  # 2 s and a bit
    path = write_wav(tmp_path / "talk.wav", pcm)
    source = audio(uri=str(path), window_s=1.0, hop_s=0.5, realtime=False)
    assert not source.live
    frames = read_all(source, stop)
    expected = pcm.astype(np.float32) / 32768
    assert [f.index for f in frames] == [0, 1, 2, 3]  # 3 whole windows, then the padded tail
    for f in frames[:3]:
        assert f.image.dtype == np.float32 and f.image.shape == (RATE,)
        np.testing.assert_array_equal(f.image, expected[f.index * 4000 : f.index * 4000 + RATE])
    np.testing.assert_array_equal(frames[3].image[: RATE // 2 + 100], expected[3 * 4000 :])
    assert source.counters()["windows"] == 4 and source.counters()["windows_dropped"] == 0


def test_a_looping_file_starts_its_index_again(tmp_path: Path, stop: threading.Event) -> None:
    path = write_wav(tmp_path / "talk.wav", ramp(RATE))
    frames = read_all(
        audio(uri=str(path), window_s=0.5, hop_s=0.25, realtime=False, loop=True), stop, 9
    )
    assert [f.index for f in frames] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(frames[3].image, frames[0].image)


def test_stereo_is_mixed_down_and_other_widths_are_read(
    tmp_path: Path, stop: threading.Event
) -> None:
    left, right = ramp(RATE), -ramp(RATE) // 2
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    (frame,) = read_all(audio(uri=str(path), realtime=False), stop)
    np.testing.assert_allclose(frame.image, (left / 32768 + right / 32768) / 2, atol=1e-7)
    assert np.allclose(pcm_to_float(bytes([0, 128, 255]), 1), [-1.0, 0.0, 127 / 128])
    # 24-bit little-endian: 0x400000 is half scale, 0x800000 the most negative
    assert np.allclose(pcm_to_float(bytes([0, 0, 0x40, 0, 0, 0x80]), 3), [0.5, -1.0])
    assert np.allclose(pcm_to_float(np.array([2**30], "<i4").tobytes(), 4), [0.5])


def test_a_flac_file_through_soundfile(tmp_path: Path, stop: threading.Event) -> None:
    import soundfile

    pcm = ramp(RATE + 4000)
    soundfile.write(tmp_path / "talk.flac", pcm, RATE, subtype="PCM_16")
    frames = read_all(audio(uri=str(tmp_path / "talk.flac"), hop_s=0.5, realtime=False), stop)
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1].image, pcm[4000:].astype(np.float32) / 32768)
    float_wav = tmp_path / "float.wav"
    soundfile.write(float_wav, pcm.astype(np.float32) / 32768, RATE, subtype="FLOAT")
    (first, _) = read_all(audio(uri=str(float_wav), hop_s=0.5, realtime=False), stop)
    np.testing.assert_array_equal(first.image, frames[0].image)


def test_wav_at_another_rate_is_refused_in_one_line(tmp_path: Path, stop: threading.Event) -> None:
    path = write_wav(tmp_path / "cd.wav", ramp(44100), rate=44100)
    with pytest.raises(SourceError, match=r"cd\.wav is 44100 Hz, the source is set to 8000 Hz"):
        audio(uri=str(path)).open()


def test_file_problems_are_one_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # a board without soundfile
    flac = tmp_path / "talk.flac"
    flac.write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(40))
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16))
    cases = {
        tmp_path / "gone.wav": "does not exist",
        flac: "reading FLAC needs soundfile: pip install 'edgewise[audio]'",
        empty: "holds no samples",
    }
    for path, message in cases.items():
        with pytest.raises(SourceError) as caught:
            open_audio_file(path)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_paced_file_is_live_and_a_stop_ends_its_wait(
    tmp_path: Path, stop: threading.Event
) -> None:
    path = write_wav(tmp_path / "talk.wav", ramp(RATE * 600))  # ten minutes
    source = audio(uri=str(path), window_s=1.0, hop_s=0.5)
    assert source.live
    source.open()
    stop.set()  # the first window is due in a second: the read gives up at once
    assert source.read(stop) is None
    source.close()


# -- a capture command ---------------------------------------------------------------------------

WRITER = "import sys, numpy as np; sys.stdout.buffer.write({}.tobytes())"


def test_a_command_writing_s16le_gives_windows(stop: threading.Event) -> None:
    code = WRITER.format("((np.arange(22000) % 20000) - 10000).astype('<i2')")
    source = audio(command=[sys.executable, "-c", code], window_s=1.0, hop_s=0.5)
    assert source.live and source.config.uri == f"command:{Path(sys.executable).name}"
    frames = read_all(source, stop)
    expected = ramp(22000).astype(np.float32) / 32768
    assert len(frames) == 5  # windows at 0, 0.5 ... 1.5 s, then the last 0.25 s, padded
    for f in frames[:4]:
        np.testing.assert_array_equal(f.image, expected[f.index * 4000 : f.index * 4000 + RATE])
    np.testing.assert_array_equal(frames[4].image[:6000], expected[16000:])
    assert np.all(frames[4].image[6000:] == 0)


def test_a_stereo_command_is_mixed_down(stop: threading.Event) -> None:
    code = WRITER.format("np.tile(np.array([1000, 3000], '<i2'), 8000)")
    (frame,) = read_all(audio(command=[sys.executable, "-c", code], channels=2), stop)
    np.testing.assert_allclose(frame.image, 2000 / 32768)


def test_a_failing_command_is_a_source_error(stop: threading.Event) -> None:
    source = audio(command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    source.open()
    with pytest.raises(SourceError, match="exited with 3"):
        source.read(stop)
    source.close()


# -- a microphone --------------------------------------------------------------------------------


class FakeStream:
    """sounddevice.InputStream's part the source uses; the test plays PortAudio's callback."""

    made: ClassVar[list[FakeStream]] = []

    def __init__(self, **kwargs: Any):
        if kwargs["device"] == "nothing":
            raise ValueError("No input device matching 'nothing'")
        self.kwargs, self.started, self.closed = kwargs, False, False
        FakeStream.made.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    def play(self, samples: np.ndarray, overflow: bool = False) -> None:
        status = types.SimpleNamespace(input_overflow=overflow, __bool__=lambda: overflow)
        self.kwargs["callback"](samples.reshape(len(samples), -1), len(samples), None, status)


@pytest.fixture
def fake_sounddevice(monkeypatch: pytest.MonkeyPatch) -> type[FakeStream]:
    FakeStream.made = []
    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=FakeStream))
    return FakeStream


def test_microphone_windows_and_device_choice(fake_sounddevice, stop: threading.Event) -> None:
    source = audio(uri="mic:2", window_s=0.5, hop_s=0.25, channels=2)
    source.open()
    (stream,) = fake_sounddevice.made
    assert stream.started and stream.kwargs["device"] == 2 and stream.kwargs["channels"] == 2
    assert stream.kwargs["samplerate"] == RATE and stream.kwargs["dtype"] == "float32"
    signal = np.arange(10000, dtype=np.float32) / 10000  # windows at 0, 2000, 4000, 6000
    for start in range(0, 10000, 512):
        block = signal[start : start + 512]
        stream.play(np.stack([block, block], axis=1))
    frames = [source.read(stop) for _ in range(4)]
    for k, frame in enumerate(frames):
        assert frame is not None and frame.index == k
        np.testing.assert_allclose(frame.image, signal[k * 2000 : k * 2000 + 4000])
    source.close()
    assert stream.closed
    audio(uri="mic:USB Audio").open()
    assert fake_sounddevice.made[-1].kwargs["device"] == "USB Audio"


def test_a_slow_reader_loses_the_oldest_audio_never_the_callback(
    fake_sounddevice, stop: threading.Event
) -> None:
    source = audio(window_s=0.5, hop_s=0.25, buffer_s=1.0)
    source.open()
    (stream,) = fake_sounddevice.made
    signal = np.arange(4 * RATE, dtype=np.float32)  # 4 s while nobody reads; 1 s is kept
    for start in range(0, len(signal), 400):
        stream.play(signal[start : start + 400], overflow=start == 0)
    frames: list[Any] = []
    while source._input._blocks:  # type: ignore[attr-defined]  # what is queued, no waiting
        frame = source.read(stop)
        assert frame is not None
        frames.append(frame)
    # only the newest second: windows at 3.0, 3.25, 3.5 s (none spans the lost audio)
    assert [f.image[0] for f in frames] == [3 * RATE, 3.25 * RATE, 3.5 * RATE]
    counters = source.counters()
    assert counters["windows_dropped"] == 3 * RATE // 2000 and counters["input_overflows"] == 1
    source.close()


def test_microphone_problems_are_one_line(
    fake_sounddevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SourceError, match="microphone 'mic:nothing': No input device matching"):
        audio(uri="mic:nothing").open()
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(
        SourceError, match=r"needs the sounddevice package: pip install 'edgewise\[audio\]'"
    ):
        audio().open()


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hop_s": 2.0}, "hop_s (2.0) longer than window_s (1.0) skips audio"),
        ({"loop": True}, "loop and realtime apply to an audio file only, not 'mic'"),
        ({"window": 100}, "window is not a setting of kind = 'audio'"),
        ({"sample_rate": 0}, "greater than 0"),
        ({"command": "arecord 'unbalanced"}, "command: cannot split"),
    ],
)
def test_bad_audio_settings_are_refused_in_one_line(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        source_config(kind="audio", **settings)
    assert caught.value.error_count() == 1 and message in str(caught.value)


def test_a_relative_file_and_program_resolve_beside_the_config(tmp_path: Path) -> None:
    config = source_config(kind="audio", uri="talk.wav")
    assert isinstance(config, AudioConfig) and config.input == "file"
    assert resolve_paths(config, tmp_path).uri == str(tmp_path / "talk.wav")
    command = resolve_paths(source_config(kind="audio", command="./capture.sh -r 16000"), tmp_path)
    assert isinstance(command, AudioConfig) and command.command[0] == str(tmp_path / "capture.sh")
    assert resolve_paths(source_config(kind="audio"), tmp_path).uri == "mic"


def test_a_source_that_does_not_fit_the_models_input_says_which_setting() -> None:
    config = source_config(kind="audio", sample_rate=16000, window_s=1.0)
    assert isinstance(config, AudioConfig)
    spec = LogMelSpec(kind="logmel", sample_rate=16000, window=16000)
    assert spec_problem(config, spec) is None
    half = spec.model_copy(update={"window": 8000})
    assert "set source.window_s = 0.5" in str(spec_problem(config, half))
    slow = LogMelSpec(kind="logmel", sample_rate=8000, window=8000, n_fft=256)
    assert "set source.sample_rate = 8000" in str(spec_problem(config, slow))
