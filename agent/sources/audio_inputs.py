"""Where an audio source's samples come from: a microphone (PortAudio through sounddevice), a
file (soundfile when installed, else the stdlib ``wave`` module for PCM WAV) or a capture
command's standard output (raw s16le). Each hands over chunks of mono float32 samples.

sounddevice and soundfile are optional (``pip install 'edgewise[audio]'``) and imported on
``open()``, so a board without them still runs every other source and reads plain WAV files.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Protocol

import numpy as np

from agent.config.sources import MIC, AudioConfig, CommandConfig
from agent.errors import SourceError
from agent.sources.audio_files import AudioFile, one_line, open_audio_file
from agent.sources.command import STALL_S as COMMAND_STALL_S
from agent.sources.command import CommandSource

POLL_S = 0.2  # longest a read waits before looking at its stop event again
STALL_S = 5.0  # a microphone that gives nothing for this long has gone away
INSTALL = "pip install 'edgewise[audio]'"


class AudioInput(Protocol):
    @property
    def live(self) -> bool: ...

    @property
    def dropped_samples(self) -> int:
        """Samples lost before the source saw them (a microphone whose reader fell behind)."""
        ...

    def open(self) -> None: ...

    def chunk(self, stop: threading.Event) -> tuple[np.ndarray, bool] | None:
        """The next mono samples and whether audio was lost just before them; None at the end
        of a recording or once ``stop`` is set."""
        ...

    def rewind(self) -> bool:
        """Back to the start of a recording (False: it cannot)."""
        ...

    def close(self) -> None: ...

    def counters(self) -> dict[str, int]: ...


def to_mono(samples: np.ndarray) -> np.ndarray:
    """frames × channels float samples to one float32 channel (their mean)."""
    if samples.ndim == 1 or samples.shape[1] == 1:
        return np.ascontiguousarray(samples.reshape(-1), np.float32)
    return samples.mean(axis=1, dtype=np.float32)


def make_input(config: AudioConfig) -> AudioInput:
    if config.input == "mic":
        return MicInput(config)
    if config.input == "command":
        return CommandInput(config)
    return FileInput(config)


class FileInput:
    """A WAV or FLAC file at the configured sample rate (the device does not resample), read a
    hop at a time."""

    live = False
    dropped_samples = 0

    def __init__(self, config: AudioConfig):
        self.config = config
        self._file: AudioFile | None = None

    def open(self) -> None:
        self.close()
        audio = open_audio_file(self.config.uri)
        if audio.sample_rate != self.config.sample_rate:
            audio.close()
            raise SourceError(
                f"{self.config.uri} is {audio.sample_rate} Hz, the source is set to "
                f"{self.config.sample_rate} Hz: resample the file (sox in.wav -r "
                f"{self.config.sample_rate} out.wav) or set sample_rate; the device does not"
            )
        self._file = audio

    def chunk(self, stop: threading.Event) -> tuple[np.ndarray, bool] | None:
        if self._file is None:
            raise SourceError("source is not open")
        if stop.is_set():
            return None
        samples = self._file.read(self.config.hop)
        return (to_mono(samples), False) if len(samples) else None

    def rewind(self) -> bool:
        if self._file is None:
            return False
        self._file.rewind()
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def counters(self) -> dict[str, int]:
        return {}


class CommandInput:
    """A capture process's raw s16le samples (``channels`` interleaved) on its standard output:
    ``arecord -t raw -f S16_LE``, ``ffmpeg -f s16le``, ``sox -t raw -e signed -b 16``. The
    process is run, watched and stopped as the command source does; this reads whatever whole
    samples the pipe holds, up to a hop."""

    live = True
    dropped_samples = 0

    def __init__(self, config: AudioConfig):
        self.config = config
        self._frame = 2 * config.channels  # bytes of one sample on every channel
        # The command source's process handling, with its "frame" one hop of bytes.
        self._process = _PipeProcess(
            CommandConfig(
                kind="command",
                uri=config.uri,
                command=config.command,
                width=config.hop * self._frame,
                height=1,
                pixel_format="gray",
            )
        )
        self._carry = b""  # a sample split between two reads

    def open(self) -> None:
        self._carry = b""
        self._process.open()

    def chunk(self, stop: threading.Event) -> tuple[np.ndarray, bool] | None:
        data = self._process.read_some(stop)
        if data is None:
            return None
        data = self._carry + data
        whole = len(data) - len(data) % self._frame
        self._carry = data[whole:]
        pcm = np.frombuffer(data[:whole], "<i2").reshape(-1, self.config.channels)
        return to_mono(pcm.astype(np.float32) / 32768.0), False

    def rewind(self) -> bool:
        return False

    def close(self) -> None:
        self._process.close()

    def counters(self) -> dict[str, int]:
        return {"stderr_unlogged": self._process.counters()["stderr_unlogged"]}


class _PipeProcess(CommandSource):
    """The command source's process (start, stall watch, exit status, group stop), read as a
    byte stream rather than in whole frames."""

    def read_some(self, stop: threading.Event) -> bytes | None:
        """What the pipe holds, up to one hop; None once stopped or at a clean exit."""
        if self._stdout is None:
            raise SourceError("source is not open")
        started = time.monotonic()
        while True:
            if not self._poller.poll(POLL_S * 1000):
                if stop.is_set():
                    return None
                if time.monotonic() - started > COMMAND_STALL_S:
                    raise SourceError(
                        f"{self.name}: no audio for {COMMAND_STALL_S:.0f} s{self._why()}"
                    )
                continue
            count = self._stdout.readinto(self._raw)  # type: ignore[arg-type]
            if count == 0:  # end of the pipe: a clean exit ends the recording, others raise
                self._ended(0)
                return None
            if count:
                return self._raw[:count].tobytes()


class MicInput:
    """A PortAudio input device. PortAudio's callback only copies the block into a queue
    bounded to ``buffer_s`` and never waits; when the reader falls that far behind the oldest
    blocks go (counted in ``dropped_samples``, and the next block is marked as after a gap)."""

    live = True

    def __init__(self, config: AudioConfig):
        self.config = config
        device = config.uri[len(MIC) + 1 :] if config.uri.startswith(MIC + ":") else ""
        self._device: int | str | None = int(device) if device.isdigit() else (device or None)
        self._limit = max(config.hop, round(config.buffer_s * config.sample_rate))
        self._blocks: deque[np.ndarray] = deque()
        self._queued = 0  # samples in _blocks
        self._gap = False
        self._ready = threading.Condition()
        self._stream: Any = None
        self._last = 0.0  # when the last block came
        self.dropped_samples = 0
        self.overflows = 0  # blocks PortAudio flagged: the device lost input before us

    def counters(self) -> dict[str, int]:
        return {"input_overflows": self.overflows}

    def open(self) -> None:
        self.close()
        sounddevice = _import_sounddevice()
        with self._ready:
            self._blocks.clear()
            self._queued, self._gap = 0, False
        try:
            stream = sounddevice.InputStream(
                samplerate=self.config.sample_rate,
                channels=self.config.channels,
                dtype="float32",
                device=self._device,
                callback=self._callback,
            )
        except Exception as exc:  # PortAudioError, or ValueError for a device it cannot find
            raise SourceError(f"microphone {self.config.uri!r}: {one_line(exc)}") from exc
        try:
            stream.start()
        except Exception as exc:
            stream.close()
            raise SourceError(f"microphone {self.config.uri!r}: {one_line(exc)}") from exc
        self._stream, self._last = stream, time.monotonic()

    def _callback(self, indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        block = to_mono(indata)  # a copy: PortAudio reuses indata
        with self._ready:
            if status and getattr(status, "input_overflow", False):
                self.overflows += 1
            self._blocks.append(block)
            self._queued += len(block)
            while self._queued > self._limit and len(self._blocks) > 1:
                lost = self._blocks.popleft()
                self._queued -= len(lost)
                self.dropped_samples += len(lost)
                self._gap = True
            self._ready.notify()

    def chunk(self, stop: threading.Event) -> tuple[np.ndarray, bool] | None:
        if self._stream is None:
            raise SourceError("source is not open")
        with self._ready:
            while not self._blocks:
                if stop.is_set():
                    return None
                if time.monotonic() - self._last > STALL_S:
                    raise SourceError(
                        f"microphone {self.config.uri!r} gave no audio for {STALL_S:.0f} s"
                    )
                self._ready.wait(POLL_S)
            block = self._blocks.popleft()
            self._queued -= len(block)
            gap, self._gap = self._gap, False
            self._last = time.monotonic()
        return block, gap

    def rewind(self) -> bool:
        return False

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()


def _import_sounddevice() -> Any:
    try:
        import sounddevice  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise SourceError(f"a microphone needs the sounddevice package: {INSTALL}") from exc
    except OSError as exc:  # the module is there, the PortAudio library is not
        raise SourceError(
            f"sounddevice cannot load PortAudio ({one_line(exc)}): apt-get install libportaudio2"
        ) from exc
    return sounddevice
