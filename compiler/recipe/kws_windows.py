"""One-second training windows built from the speech corpus, and the augmentations that make
contrastive views of them.

A deployed spotter sees every hop-shifted window of a continuous stream, so most of what it
must reject is not silence but speech that is *not quite* a keyword: other words, a keyword
only partly in the window, the tail of one word and the head of the next, a phrase sliding
past. Those are ``_unknown_`` here. A keyword window holds the whole keyword (or at most
``KEYWORD_CUT`` of it cut at an edge); an unknown window holds less than ``UNKNOWN_KEEP`` of any
keyword, so the two never overlap and the boundary between them is learned with a margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .speech import KEYWORDS, LABELS, NOISES, SAMPLE_RATE, SILENCE, UNKNOWN, Clip, rms

WINDOW = SAMPLE_RATE  # one second
KEYWORD_CUT = 0.15  # a keyword window may lose this share of the word at an edge
UNKNOWN_KEEP = 0.45  # an unknown window keeps less than this share of a keyword
# the mix of held-out and validation windows: keyword windows, the kinds of unknown, silence
SHARES = {"keyword": 0.5, "other": 0.12, "cut": 0.1, "pair": 0.06, "phrase": 0.1, "silence": 0.12}
# the mix the model learns from: other words two and a half times as often. At 0.12, each of
# the 53 other words was ~0.2 % of the windows against 5 % for each keyword, and the model
# took "guess" for "yes" and "town" for "down" in held-out voices; this mix halved the false
# accepts on keyword-free speech (see the README's "Keyword spotting on generated speech").
TRAIN_SHARES = {
    "keyword": 0.36, "other": 0.3, "cut": 0.08, "pair": 0.05, "phrase": 0.11, "silence": 0.1,
}  # fmt: skip


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # float32 N × WINDOW
    y: np.ndarray  # int64 indices into LABELS
    voices: np.ndarray  # str, the voice of the main word ("" for silence)


class WindowMaker:
    """Draws windows from keyword and other-word clips over a noise background."""

    def __init__(
        self,
        keywords: Sequence[Clip],
        others: Sequence[Clip],
        bank: dict[str, np.ndarray],
        rng: np.random.Generator,
    ) -> None:
        if not keywords or not others:
            raise ValueError("windows need keyword clips and other-word clips")
        self.keywords, self.others, self.bank, self.rng = keywords, others, bank, rng

    def background(self) -> np.ndarray:
        """Noise from near-silent (-80 dBFS RMS) to clearly audible (-30 dBFS)."""
        colour = str(self.rng.choice(NOISES))
        level = 10 ** (self.rng.uniform(-80, -30) / 20)
        start = int(self.rng.integers(0, len(self.bank[colour])))
        return (level * _wrap(self.bank[colour], start, WINDOW)).astype(np.float32)

    def _clip(self, pool: Sequence[Clip]) -> Clip:
        return pool[int(self.rng.integers(len(pool)))]

    def keyword(self) -> tuple[np.ndarray, int, str]:
        clip = self._clip(self.keywords)
        audio = clip.audio[:WINDOW]
        cut = self.rng.uniform(0, KEYWORD_CUT) if self.rng.random() < 0.25 else 0.0
        offset = self._offset(audio.size, cut)
        window = self.background()
        _add(window, audio, offset)
        if self.rng.random() < 0.3:  # a neighbouring word's fragment at the other side
            self._fragment(window, self._clip(self.others).audio, offset, audio.size)
        return window, LABELS.index(clip.spec.text), clip.spec.voice

    def _offset(self, length: int, cut: float) -> int:
        """Where a clip of ``length`` samples starts so that ``cut`` of it falls outside."""
        if cut == 0.0 or length >= WINDOW:
            return int(self.rng.integers(0, max(1, WINDOW - length + 1)))
        lost = int(cut * length)
        return -lost if self.rng.random() < 0.5 else WINDOW - length + lost

    def _fragment(self, window: np.ndarray, audio: np.ndarray, start: int, length: int) -> None:
        """Part of another word in the space left of ``start`` or right of ``start+length``."""
        gap = int(self.rng.uniform(0.03, 0.15) * SAMPLE_RATE)
        if start > WINDOW - start - length:
            _add(window, audio, max(start - gap, 0) - audio.size)
        else:
            _add(window, audio, min(start + length + gap, WINDOW))

    def other(self) -> tuple[np.ndarray, int, str]:
        clip = self._clip(self.others)
        window = self.background()
        # only a little cut: the head of "often" is "off", which must not be taught as unknown
        cut = self.rng.uniform(0, 0.2) if self.rng.random() < 0.3 else 0.0
        _add(window, clip.audio[:WINDOW], self._offset(min(clip.audio.size, WINDOW), cut))
        return window, LABELS.index(UNKNOWN), clip.spec.voice

    def cut_keyword(self) -> tuple[np.ndarray, int, str]:
        """A keyword with less than UNKNOWN_KEEP of it inside the window, at either edge."""
        clip = self._clip(self.keywords)
        audio = clip.audio[:WINDOW]
        keep = int(self.rng.uniform(0.05, UNKNOWN_KEEP) * audio.size)
        offset = keep - audio.size if self.rng.random() < 0.5 else WINDOW - keep
        window = self.background()
        _add(window, audio, offset)
        return window, LABELS.index(UNKNOWN), clip.spec.voice

    def pair(self) -> tuple[np.ndarray, int, str]:
        """The end of one word and the start of the next, each partly outside the window."""
        first, second = self._clip(self.keywords), self._clip(self.others)
        if self.rng.random() < 0.5:
            first, second = second, first
        window = self.background()
        keep_first = int(self.rng.uniform(0.1, UNKNOWN_KEEP) * first.audio.size)
        keep_second = int(self.rng.uniform(0.1, UNKNOWN_KEEP) * second.audio.size)
        _add(window, first.audio, keep_first - first.audio.size)
        _add(window, second.audio, WINDOW - keep_second)
        return window, LABELS.index(UNKNOWN), second.spec.voice

    def phrase(self) -> tuple[np.ndarray, int, str]:
        """A random one-second slice of three to six other words spoken in a row."""
        words = [self._clip(self.others) for _ in range(int(self.rng.integers(3, 7)))]
        voice = words[0].spec.voice
        parts = []
        for word in words:
            gap = int(self.rng.uniform(0.0, 0.12) * SAMPLE_RATE)
            parts += [word.audio, np.zeros(gap, np.float32)]
        joined = np.concatenate(parts)
        start = int(self.rng.integers(0, max(1, joined.size - WINDOW // 2)))
        window = self.background()
        _add(window, joined[start : start + WINDOW], 0)
        return window, LABELS.index(UNKNOWN), voice

    def silence(self) -> tuple[np.ndarray, int, str]:
        return self.background(), LABELS.index(SILENCE), ""

    def draw(self, count: int, shares: dict[str, float] = SHARES) -> Windows:
        """``count`` windows in the proportions of ``shares``, shuffled."""
        makers = {
            "keyword": self.keyword, "other": self.other, "cut": self.cut_keyword,
            "pair": self.pair, "phrase": self.phrase, "silence": self.silence,
        }  # fmt: skip
        kinds = self.rng.choice(list(shares), size=count, p=list(shares.values()))
        rows = [makers[str(kind)]() for kind in kinds]
        x = np.stack([np.clip(w, -1, 1) for w, _, _ in rows]).astype(np.float32)
        return Windows(
            x, np.array([y for _, y, _ in rows], np.int64), np.array([v for *_, v in rows])
        )


def _wrap(noise: np.ndarray, start: int, length: int) -> np.ndarray:
    return np.take(noise, np.arange(start, start + length), mode="wrap")


def _add(window: np.ndarray, audio: np.ndarray, offset: int) -> None:
    """Adds ``audio`` starting at ``offset`` (may be negative or past the end), clipped."""
    lo, hi = max(offset, 0), min(offset + audio.size, window.size)
    if hi > lo:
        window[lo:hi] += audio[lo - offset : hi - offset]


def is_keyword(label: int) -> bool:
    return LABELS[label] in KEYWORDS


# Contrastive views: what changes between two hearings of the same window but not its meaning.


def augment(x: np.ndarray, rng: np.random.Generator, bank: dict[str, np.ndarray]) -> np.ndarray:
    """A random view of each window: speed ±15% (resampling: tempo, pitch and formants move
    together, as between two speakers), time shift ±100 ms, gain
    -10..+6 dB, and added noise 10..40 dB below the window's level."""
    out = np.empty_like(x)
    for i, window in enumerate(x):
        view = _speed(window, float(rng.uniform(0.85, 1.15)))
        view = _shift(view, int(rng.integers(-1600, 1601)))
        view = view * 10 ** (rng.uniform(-10, 6) / 20)
        colour = str(rng.choice(NOISES))
        level = max(rms(view), 1e-5) / 10 ** (rng.uniform(10, 40) / 20)
        noise = _wrap(bank[colour], int(rng.integers(0, len(bank[colour]))), WINDOW)
        out[i] = np.clip(view + level * noise, -1, 1)
    return out


def _shift(window: np.ndarray, samples: int) -> np.ndarray:
    """Delays (positive) or advances ``window`` by ``samples``, filling with zeros (no wrap: a
    word's end must not reappear at the start)."""
    out = np.zeros_like(window)
    _add(out, window, samples)
    return out


def _speed(window: np.ndarray, rate: float) -> np.ndarray:
    """Plays ``window`` ``rate`` times faster (linear resampling), cropped or padded to size."""
    positions = np.arange(0, window.size, rate)
    faster = np.interp(positions, np.arange(window.size), window).astype(np.float32)
    if faster.size >= window.size:
        return faster[: window.size]
    return np.pad(faster, (0, window.size - faster.size))
