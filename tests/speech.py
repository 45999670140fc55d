"""Generated audio for the voice gate's tests: espeak-ng speech at 16 kHz (sox resamples it),
silence and white noise, with the speech's extent known to the sample.

No torch, no compiler: the agent's own tests (tests/device/) use it too.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16000
AUDIBLE_RMS = 0.003  # about -50 dBFS: quieter chunks of espeak-ng's output are its silence


@functools.cache
def spoken(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng, mono float32 at 16 kHz, trimmed to where it is audible
    (to the 512-sample chunk), so the whole array is speech."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True, timeout=60)
        subprocess.run(
            ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)],
            check=True,
            timeout=60,
        )
        with wave.open(str(out)) as wav:
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    samples = pcm.astype(np.float32) / 32768
    chunks = samples[: len(samples) // 512 * 512].reshape(-1, 512)
    loud = np.flatnonzero(np.sqrt((chunks**2).mean(axis=1)) > AUDIBLE_RMS)
    return samples[loud[0] * 512 : (loud[-1] + 1) * 512].copy()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def noise(seconds: float, rms: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * RATE)) * rms).astype(np.float32)
