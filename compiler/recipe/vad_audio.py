"""Generated audio with known speech extents: espeak-ng's speech between silence and noise.

What ``edgewise vad`` measures a voice-activity model on, and feeds it for the golden file. The
truth is exact because the speech is synthetic: a chunk is speech when the clean utterance
(before any noise is added) is audible in it, from the first audible chunk to the last.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .speech import SAMPLE_RATE, synthesize

RATE = SAMPLE_RATE
PHRASES = ("turn on the kitchen light", "what is the weather tomorrow", "stop the music")
AUDIBLE_RMS = 0.003  # about -50 dBFS: below this a chunk of espeak-ng's output is silence
NOISE_RMS = 0.05


def espeak_available() -> bool:
    return all(shutil.which(tool) is not None for tool in ("espeak-ng", "sox"))


def spoken(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us, default speed and pitch, no effects) as mono float32
    at 16 kHz, through the keyword recipe's own synthesis."""
    with tempfile.TemporaryDirectory() as tmp:
        return synthesize(text, "en-us", 175, 50, Path(tmp) / "speech.wav")


@dataclass(frozen=True)
class Scene:
    """Samples at ``RATE`` and, for each whole chunk of ``chunk`` samples, whether it is speech."""

    samples: np.ndarray
    speech: np.ndarray  # bool per chunk
    chunk: int


def _audible(clean: np.ndarray, chunk: int) -> np.ndarray:
    """Per chunk: inside the utterance (first to last chunk whose RMS is audible)."""
    chunks = clean[: len(clean) // chunk * chunk].reshape(-1, chunk)
    loud = np.sqrt((chunks**2).mean(axis=1)) > AUDIBLE_RMS
    inside = np.zeros(len(loud), bool)
    if loud.any():
        first, last = np.flatnonzero(loud)[[0, -1]]
        inside[first : last + 1] = True
    return inside


def scene(phrases: tuple[str, ...] = PHRASES, chunk: int = 512, seed: int = 0) -> Scene:
    """Each phrase, then a second of silence, then a second of white noise; chunk-aligned so
    every chunk's truth is one segment's."""
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    truth: list[np.ndarray] = []

    def add(samples: np.ndarray, speech: np.ndarray) -> None:
        pieces.append(samples)
        truth.append(speech)

    pad = RATE // chunk * chunk  # about a second, in whole chunks
    for text in phrases:
        voice = spoken(text)
        voice = np.concatenate([voice, np.zeros(-len(voice) % chunk, np.float32)])
        add(voice, _audible(voice, chunk))
        add(np.zeros(pad, np.float32), np.zeros(pad // chunk, bool))
        noise = (rng.standard_normal(pad) * NOISE_RMS).astype(np.float32)
        add(noise, np.zeros(pad // chunk, bool))
    return Scene(np.concatenate(pieces), np.concatenate(truth), chunk)


def recall_precision(said: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Chunk-level recall and precision of ``said`` (bool per chunk) against ``truth``."""
    hits = int(np.sum(said & truth))
    recall = hits / max(1, int(truth.sum()))
    precision = hits / max(1, int(said.sum()))
    return recall, precision
