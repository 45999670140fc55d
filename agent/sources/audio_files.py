"""Reading audio files a block at a time: through soundfile (libsndfile: WAV of any sample
format, FLAC, OGG ...) when it is installed, else through the stdlib ``wave`` module, which reads
integer PCM WAV — so a board without soundfile still reads the WAV files most tools write."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import SourceError

INSTALL = "pip install 'edgewise[audio]'"


class AudioFile(Protocol):
    sample_rate: int
    channels: int

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` frames as frames × channels float32 (-1..1); none at the end."""
        ...

    def rewind(self) -> None: ...

    def close(self) -> None: ...


def open_audio_file(path: str | Path, use_soundfile: bool = True) -> AudioFile:
    """The file opened for reading; every failure is one ``SourceError`` line."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"audio file {path} does not exist")
    soundfile = _soundfile() if use_soundfile else None
    audio: AudioFile = SoundFile(path, soundfile) if soundfile else WaveFile(path)
    if audio.sample_rate <= 0 or audio.channels <= 0:
        audio.close()
        raise SourceError(f"{path}: no sample rate or channels in its header")
    if len(audio.read(1)) == 0:
        audio.close()
        raise SourceError(f"{path} holds no samples")
    audio.rewind()
    return audio


def _soundfile() -> Any:
    try:
        import soundfile  # type: ignore[import-not-found, unused-ignore]
    except (ImportError, OSError):  # not installed, or libsndfile missing: wave still reads WAV
        return None
    return soundfile


class SoundFile:
    def __init__(self, path: Path, soundfile: Any):
        try:
            self._file = soundfile.SoundFile(str(path))
        except Exception as exc:  # libsndfile's errors: unknown format, truncated header ...
            raise SourceError(f"{path}: cannot read it as audio: {one_line(exc)}") from exc
        self.path = path
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)

    def read(self, frames: int) -> np.ndarray:
        try:
            data = self._file.read(frames, dtype="float32", always_2d=True)
        except Exception as exc:
            raise SourceError(f"{self.path}: {one_line(exc)}") from exc
        return np.asarray(data, np.float32)

    def rewind(self) -> None:
        self._file.seek(0)

    def close(self) -> None:
        self._file.close()


class WaveFile:
    """Integer PCM WAV (8-bit unsigned, 16-, 24- or 32-bit signed) through ``wave``."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = wave.open(str(path), "rb")  # noqa: SIM115 (kept open; close() closes it)
        except (wave.Error, EOFError) as exc:
            hint = "FLAC" if path.suffix.lower() == ".flac" else "anything but integer PCM WAV"
            raise SourceError(
                f"{path}: not a WAV file the wave module reads ({one_line(exc)}); reading "
                f"{hint} needs soundfile: {INSTALL}"
            ) from exc
        self.sample_rate = self._file.getframerate()
        self.channels = self._file.getnchannels()
        self._width = self._file.getsampwidth()
        if self._width not in (1, 2, 3, 4):
            self._file.close()
            raise SourceError(
                f"{path}: {8 * self._width}-bit samples; soundfile reads them: {INSTALL}"
            )

    def read(self, frames: int) -> np.ndarray:
        try:
            raw = self._file.readframes(frames)
        except (wave.Error, EOFError, OSError) as exc:
            raise SourceError(f"{self.path}: {one_line(exc)}") from exc
        whole = len(raw) - len(raw) % (self._width * self.channels)  # a truncated last frame
        return pcm_to_float(raw[:whole], self._width).reshape(-1, self.channels)

    def rewind(self) -> None:
        self._file.rewind()

    def close(self) -> None:
        self._file.close()


def pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian integer PCM of ``width`` bytes per sample to float32 in -1..1 (WAV's
    8-bit samples are unsigned, the wider ones signed)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:  # no numpy type: put each sample in the top of an int32
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        padded = np.zeros((len(triples), 4), np.uint8)
        padded[:, 1:] = triples
        return padded.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    kind = "<i2" if width == 2 else "<i4"
    return np.frombuffer(raw, kind).astype(np.float32) / float(2 ** (8 * width - 1))


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
