"""A long evaluation stream: keywords, other words and short phrases in held-out voices, with
silent gaps, over continuous background noise; written as a 16 kHz mono 16-bit WAV with the
truth beside it.

The truth lists every word spoken with its exact extent (clips are trimmed to the word), so one
stream measures both the spotter (keyword events against keyword segments) and a voice activity
detector (speech segments, keyword or not). ``keyword_share=0`` makes a stream with no keyword
at all: every event on it is a false accept, which gives false accepts per hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import InputError
from .speech import (
    HELD_OUT_VOICES,
    KEYWORDS,
    NOISES,
    OTHER_WORDS,
    SAMPLE_RATE,
    UNKNOWN,
    Clip,
    build_corpus,
    noise_bank,
    noise_segment,
    plan,
)

MAX_STREAM_S = 24 * 3600
CLIPS_PER_WORD = 12  # distinct takes of each word, spread over the voices


@dataclass(frozen=True)
class Segment:
    label: str  # the keyword, or _unknown_ for any other word
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Stream:
    path: Path
    seconds: float
    sample_rate: int
    truth: list[Segment]

    @property
    def keywords(self) -> list[Segment]:
        return [s for s in self.truth if s.label != UNKNOWN]


class _Composer:
    """Lays words, phrases and gaps end to end until the stream is full."""

    def __init__(
        self,
        keywords: Sequence[Clip],
        others: Sequence[Clip],
        share: float,
        rng: np.random.Generator,
    ) -> None:
        self.keywords, self.others, self.share, self.rng = keywords, others, share, rng
        self.parts: list[np.ndarray] = []
        self.truth: list[Segment] = []
        self.cursor = 0  # samples laid so far

    def gap(self, low_s: float, high_s: float) -> None:
        self.parts.append(np.zeros(int(self.rng.uniform(low_s, high_s) * SAMPLE_RATE), np.float32))
        self.cursor += self.parts[-1].size

    def word(self, clip: Clip, label: str) -> None:
        start = self.cursor
        self.parts.append(clip.audio)
        self.cursor += clip.audio.size
        self.truth.append(Segment(label, start / SAMPLE_RATE, self.cursor / SAMPLE_RATE))

    def item(self) -> None:
        """A keyword (with probability ``share``), a single other word, or a short phrase."""
        pick = self.rng.random()
        if pick < self.share:
            clip = self.keywords[int(self.rng.integers(len(self.keywords)))]
            self.word(clip, clip.spec.text)
        elif pick < self.share + (1 - self.share) / 2:
            self.word(self.others[int(self.rng.integers(len(self.others)))], UNKNOWN)
        else:
            for i in range(int(self.rng.integers(2, 6))):
                if i:
                    self.gap(0.02, 0.15)
                self.word(self.others[int(self.rng.integers(len(self.others)))], UNKNOWN)
        self.gap(0.3, 2.0)  # at least 0.3 s before the next item: events are separable

    def fill(self, samples: int) -> np.ndarray:
        self.gap(0.2, 1.0)
        while True:
            before = (len(self.parts), len(self.truth), self.cursor)
            self.item()
            if self.cursor > samples:  # the last item would not fit whole: leave it out
                del self.parts[before[0] :], self.truth[before[1] :]
                self.cursor = before[2]
                break
        audio = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        return np.pad(audio, (0, samples - audio.size))


def make_stream(
    workdir: Path,
    seconds: float,
    *,
    voices: Sequence[str] = HELD_OUT_VOICES,
    keyword_share: float = 0.3,
    seed: int = 0,
    noise_db: tuple[float, float] = (-60.0, -35.0),
    takes: int = CLIPS_PER_WORD,
    path: Path | None = None,
) -> Stream:
    """Writes ``path`` (default ``workdir/stream-<seed>.wav``) holding ``seconds`` of speech
    from ``voices`` over background noise (RMS between ``noise_db`` dBFS, changing every few
    seconds); returns the path and the truth. ``takes`` clips of each word are made (or read
    from ``workdir/cache``) and reused across the stream."""
    if not 0 < seconds <= MAX_STREAM_S:
        raise InputError(f"a stream of {seconds} s: give 0 < seconds <= {MAX_STREAM_S}")
    if not 0 <= keyword_share <= 1:
        raise InputError(f"keyword share {keyword_share}: give a share between 0 and 1")
    if not voices:
        raise InputError("a stream needs at least one voice")
    cache = workdir / "cache"
    specs = plan(KEYWORDS, voices, takes, seed + 10) if keyword_share > 0 else []
    specs += plan(OTHER_WORDS, voices, takes, seed + 11)
    clips = build_corpus(cache, specs).clips
    keywords = [c for c in clips if c.spec.text in KEYWORDS]
    others = [c for c in clips if c.spec.text not in KEYWORDS]
    rng = np.random.default_rng(seed)
    samples = round(seconds * SAMPLE_RATE)
    composer = _Composer(keywords, others, keyword_share, rng)
    speech = composer.fill(samples)
    audio = np.clip(speech + background(noise_bank(cache), samples, noise_db, rng), -1, 1)
    out = path or workdir / f"stream-{seed}.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, SAMPLE_RATE, subtype="PCM_16")
    return Stream(out, samples / SAMPLE_RATE, SAMPLE_RATE, composer.truth)


def background(
    bank: dict[str, np.ndarray],
    samples: int,
    noise_db: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Noise whose colour and level change every 2..8 s, as a room's background does."""
    out = np.zeros(samples, np.float32)
    at = 0
    while at < samples:
        length = min(int(rng.uniform(2, 8) * SAMPLE_RATE), samples - at)
        colour = str(rng.choice(NOISES))
        level = 10 ** (rng.uniform(*noise_db) / 20)
        start = int(rng.integers(0, len(bank[colour])))
        out[at : at + length] = level * noise_segment(bank, colour, length, start)
        at += length
    return out
