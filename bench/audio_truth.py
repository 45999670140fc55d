"""The ground truth of a long test recording and its scores, for ``bench/audio.py``: clips laid
end to end with silence and noise between them (where each lies is the truth), then the
agent's keyword events and the voice gate's decisions scored against it.

Pure numpy, no agent and no compiler: the bench feeds it clips from the speech recipe and the
events the agent published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placed:
    """One clip in the recording: what it says and where (seconds from the start)."""

    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Event:
    """A keyword event as the agent reports it: the label and its stream time (the end of the
    window that completed it, seconds from the start of the recording)."""

    label: str
    at_s: float


def lay_out(
    clips: Sequence[np.ndarray],
    labels: Sequence[str],
    noise: np.ndarray,
    rate: int,
    gap_s: tuple[float, float] = (0.6, 2.0),
    noise_level: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, list[Placed]]:
    """The clips in order with a random gap of ``gap_s`` before each, over ``noise`` (looped)
    at ``noise_level`` peak; the recording (float32) and where each clip lies."""
    if len(clips) != len(labels):
        raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    gaps = np.round(rng.uniform(*gap_s, size=len(clips) + 1) * rate).astype(int)
    total = int(gaps.sum() + sum(len(c) for c in clips))
    out = np.resize(np.asarray(noise, np.float32), total) * np.float32(noise_level)
    placed, at = [], int(gaps[0])
    for clip, label, gap in zip(clips, labels, gaps[1:], strict=True):
        out[at : at + len(clip)] += clip
        placed.append(Placed(label, at / rate, (at + len(clip)) / rate))
        at += len(clip) + int(gap)
    return np.clip(out, -1.0, 1.0), placed


@dataclass(frozen=True)
class KeywordScore:
    recall: dict[str, float]  # per keyword: share of its utterances that gave its event
    accuracy: float  # over all keyword utterances
    false_accepts: int  # events matching no utterance of their label


def score_events(
    events: Sequence[Event],
    truth: Sequence[Placed],
    keywords: Sequence[str],
    window_s: float,
    slack_s: float = 0.25,
) -> KeywordScore:
    """Match each event to the earliest unmatched utterance of its label that a window ending
    at the event could hold (start ≤ at ≤ end + window_s + slack_s); the rest are false
    accepts. Only ``keywords`` count for recall (other words are there to be ignored)."""
    wanted = [p for p in truth if p.label in keywords]
    matched = [False] * len(wanted)
    false_accepts = 0
    for event in sorted(events, key=lambda e: e.at_s):
        for i, item in enumerate(wanted):
            fits = item.start_s <= event.at_s <= item.end_s + window_s + slack_s
            if not matched[i] and item.label == event.label and fits:
                matched[i] = True
                break
        else:
            false_accepts += 1
    recall = {}
    for keyword in keywords:
        hits = [m for m, p in zip(matched, wanted, strict=True) if p.label == keyword]
        recall[keyword] = sum(hits) / len(hits) if hits else float("nan")
    accuracy = sum(matched) / len(matched) if matched else float("nan")
    return KeywordScore(recall, accuracy, false_accepts)


def false_accepts_per_hour(events: Sequence[Event], seconds: float) -> float:
    """Events on keyword-free audio (every one is false), per hour of it."""
    return len(events) * 3600.0 / seconds


@dataclass(frozen=True)
class VadScore:
    recall: float  # speech hops the gate let through
    precision: float  # hops let through that held speech (or its hangover)


def score_vad(
    passed: Sequence[bool],
    hop_s: float,
    truth: Sequence[Placed],
    hangover_s: float = 0.0,
) -> VadScore:
    """``passed[k]``: whether the gate let hop k ([k·hop_s, (k+1)·hop_s)) through. A hop is
    speech when it overlaps a clip; one passed within ``hangover_s`` after a clip is not held
    against precision (the gate holds on that long by design)."""
    starts = np.arange(len(passed)) * hop_s
    ends = starts + hop_s
    speech = np.zeros(len(passed), bool)
    excused = np.zeros(len(passed), bool)
    for item in truth:
        speech |= (starts < item.end_s) & (ends > item.start_s)
        excused |= (starts < item.end_s + hangover_s) & (ends > item.start_s)
    flags = np.asarray(passed, bool)
    recall = float(flags[speech].mean()) if speech.any() else float("nan")
    precision = float(excused[flags].mean()) if flags.any() else float("nan")
    return VadScore(recall, precision)
