"""The keyword-spotting recipe end to end: generated speech, one-second windows, contrastive
pre-training, fine-tuning, per-label thresholds, and the files ``edgewise compile`` takes.

Three disjoint sources of windows: training voices split by clip into *train* (pre-training
and fine-tuning) and *validation* (threshold tuning only), and HELD_OUT_VOICES for the reported
accuracy. A threshold is never tuned on the voices it is judged on.

Input: LogMelSpec with per-window normalisation. It makes the input independent of gain (a
quiet and a loud "stop" are the same image) and needs no statistics carried from training; a
window of near-silent noise becomes normalised noise, which the ``_silence_`` label learns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from agent.contract import LogMelSpec

from ..errors import InputError
from .kws_model import finetune, kws_cnn, pretrain, probabilities, progress_bar
from .kws_windows import SHARES, TRAIN_SHARES, WINDOW, WindowMaker, Windows
from .speech import (
    HELD_OUT_VOICES,
    KEYWORDS,
    LABELS,
    OTHER_WORDS,
    SILENCE,
    TRAIN_VOICES,
    UNKNOWN,
    Clip,
    build_corpus,
    noise_bank,
    plan,
)

SPEC = LogMelSpec(
    kind="logmel", window=WINDOW, n_fft=512, hop=160, n_mels=40, fmin=20.0, fmax=7600.0,
    normalisation="per_window",
)  # fmt: skip
DEFAULT_THRESHOLD = 0.6
MIN_THRESHOLD = 0.5  # below this a keyword may not even be the most likely label
MAX_FALSE_ACCEPT = 0.005  # per keyword, on validation _unknown_ and _silence_ windows
DEBOUNCE_S = 1.0
SMOOTHING = 3


@dataclass(frozen=True)
class KwsSize:
    train_voices: tuple[str, ...]
    held_out_voices: tuple[str, ...]
    other_words: tuple[str, ...]
    keyword_clips: int  # per keyword, training voices
    other_clips: int  # per other word, training voices
    held_out_clips: tuple[int, int]  # per keyword and per other word, held-out voices
    train_windows: int
    val_windows: int
    test_windows: int
    calibration_windows: int  # train windows kept in data.npz for int8 calibration
    pretrain_epochs: int
    finetune_epochs: int
    val_share: float = 0.15  # of the training voices' clips, kept for threshold tuning


SIZES = {
    "default": KwsSize(
        TRAIN_VOICES, HELD_OUT_VOICES, OTHER_WORDS, 120, 80, (15, 6),
        train_windows=16000, val_windows=3000, test_windows=1500, calibration_windows=300,
        pretrain_epochs=2, finetune_epochs=20,
    ),
    "small": KwsSize(
        TRAIN_VOICES[:2], HELD_OUT_VOICES[:1], OTHER_WORDS[:8], 2, 2, (1, 1),
        train_windows=160, val_windows=80, test_windows=60, calibration_windows=20,
        pretrain_epochs=1, finetune_epochs=1,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class KwsOutcome:
    folder: Path
    accuracy: float  # held-out voices, per window
    recall: dict[str, float]  # per keyword, held-out voices
    thresholds: dict[str, float]
    files: dict[str, Path]
    seconds: float
    synthesized: int  # clips made by this run (the rest came from the cache)
    confusion: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


@dataclass(frozen=True)
class KwsData:
    train: Windows
    val: Windows
    test: Windows
    bank: dict[str, np.ndarray]
    synthesized: int


def split_clips(clips: list[Clip], share: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """About ``share`` of each word's clips for validation (at least one of every word with two
    or more, so both sides hold keywords and other words), the rest for training."""
    rng = np.random.default_rng(seed)
    by_word: dict[str, list[Clip]] = {}
    for clip in clips:
        by_word.setdefault(clip.spec.text, []).append(clip)
    fit: list[Clip] = []
    val: list[Clip] = []
    for takes in by_word.values():
        order = rng.permutation(len(takes))
        held = max(1, round(share * len(takes))) if len(takes) > 1 else 0
        val += [takes[i] for i in order[:held]]
        fit += [takes[i] for i in order[held:]]
    return fit, val


def make_data(cache: Path, size: KwsSize, seed: int, progress: bool) -> KwsData:
    """Synthesizes (or reads from ``cache``) the clips and draws the three sets of windows."""
    train_specs = plan(KEYWORDS, size.train_voices, size.keyword_clips, seed) + plan(
        size.other_words, size.train_voices, size.other_clips, seed + 1
    )
    kept, other = size.held_out_clips
    test_specs = plan(KEYWORDS, size.held_out_voices, kept, seed + 2) + plan(
        size.other_words, size.held_out_voices, other, seed + 3
    )
    corpus = build_corpus(cache, train_specs + test_specs, progress=progress)
    bank = noise_bank(cache)
    train_clips, test_clips = corpus.clips[: len(train_specs)], corpus.clips[len(train_specs) :]
    fit, val = split_clips(train_clips, size.val_share, seed)
    rng = np.random.default_rng(seed + 4)

    def windows(clips: list[Clip], count: int, shares: dict[str, float] = SHARES) -> Windows:
        keywords = [c for c in clips if c.spec.text in KEYWORDS]
        others = [c for c in clips if c.spec.text not in KEYWORDS]
        return WindowMaker(keywords, others, bank, rng).draw(count, shares)

    return KwsData(
        windows(fit, size.train_windows, TRAIN_SHARES),
        windows(val, size.val_windows),
        windows(test_clips, size.test_windows),
        bank,
        corpus.made,
    )


def tune_thresholds(
    probs: np.ndarray, y: np.ndarray, rate: float = MAX_FALSE_ACCEPT
) -> dict[str, float]:
    """Per keyword, the lowest threshold (not below MIN_THRESHOLD) at which at most ``rate`` of
    the negative windows (``_unknown_`` and ``_silence_``) score that keyword at or above it."""
    negative = np.isin(y, [LABELS.index(UNKNOWN), LABELS.index(SILENCE)])
    thresholds = {}
    for word in KEYWORDS:
        scores = np.sort(probs[negative, LABELS.index(word)])[::-1]
        allowed = int(np.floor(rate * scores.size))  # negatives that may still pass
        # just above the first score that must be rejected
        level = float(scores[allowed]) + 1e-4 if allowed < scores.size else 0.0
        thresholds[word] = round(min(max(level, MIN_THRESHOLD), 0.999), 4)
    return thresholds


def evaluate(probs: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float], np.ndarray]:
    """Per-window accuracy (argmax), per-keyword recall and the confusion matrix."""
    predicted = probs.argmax(1)
    confusion = np.zeros((len(LABELS), len(LABELS)), np.int64)
    np.add.at(confusion, (y, predicted), 1)
    recall = {
        word: float(confusion[i, i] / max(confusion[i].sum(), 1))
        for i, word in enumerate(LABELS)
        if word in KEYWORDS
    }
    return float((predicted == y).mean()) if y.size else 0.0, recall, confusion


def toml_text(table: Mapping[str, object]) -> str:
    """Flat TOML for str, bool, numbers, lists of str and one level of sub-tables."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(item) for item in v) + "]"
        if isinstance(v, float):
            return repr(v)
        return str(v)

    plain = [
        f"{k} = {value(v)}"
        for k, v in table.items()
        if not isinstance(v, Mapping) and v is not None
    ]
    tables = [
        f"\n[{k}]\n" + "\n".join(f'"{key}" = {value(item)}' for key, item in v.items())
        for k, v in table.items()
        if isinstance(v, Mapping)
    ]
    return "\n".join(plain) + "\n" + "".join(t + "\n" for t in tables)


def events_spec(thresholds: Mapping[str, float]) -> dict[str, object]:
    """The postprocess the device runs: softmax, smoothing over SMOOTHING windows, a threshold
    per keyword, one event per keyword per DEBOUNCE_S."""
    return {
        "kind": "events",
        "labels": list(LABELS),
        "softmax": True,
        "threshold": DEFAULT_THRESHOLD,
        "ignore": [UNKNOWN, SILENCE],
        "debounce_s": DEBOUNCE_S,
        "smoothing": SMOOTHING,
        "thresholds": dict(thresholds),
    }


def write_outputs(
    folder: Path, model: torch.nn.Module, data: KwsData, size: KwsSize, thresholds: dict[str, float]
) -> dict[str, Path]:
    """model.pt, data.npz (held-out test windows, then a few training windows for calibration),
    preprocess.toml and postprocess.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        name: folder / name
        for name in ("model.pt", "data.npz", "preprocess.toml", "postprocess.toml")
    }
    torch.save(model.eval(), files["model.pt"])
    calib = slice(0, size.calibration_windows)
    test, train = data.test, data.train
    np.savez(
        files["data.npz"],
        x=np.concatenate([test.x, train.x[calib]]),
        y=np.concatenate([test.y, train.y[calib]]),
        labels=np.array(LABELS),
        voices=np.concatenate([test.voices, train.voices[calib]]),
        split=np.array(["test"] * len(test.y) + ["train"] * len(train.y[calib])),
    )
    spec = SPEC.model_dump(exclude={"mean", "std"})
    files["preprocess.toml"].write_text(toml_text(spec))
    files["postprocess.toml"].write_text(toml_text(events_spec(thresholds)))
    return files


def train_kws(
    workdir: Path,
    *,
    size: str = "default",
    seed: int = 0,
    progress: bool = False,
    pretrain_epochs: int | None = None,
    finetune_epochs: int | None = None,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> KwsOutcome:
    """Generates the corpus into ``workdir/cache``, trains, tunes thresholds and writes the
    model and its specs into ``workdir/model``; returns the held-out figures. The epochs
    default to the size's."""
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    started = time.monotonic()
    chosen = replace(
        SIZES[size],
        pretrain_epochs=SIZES[size].pretrain_epochs if pretrain_epochs is None else pretrain_epochs,
        finetune_epochs=SIZES[size].finetune_epochs if finetune_epochs is None else finetune_epochs,
    )
    data = make_data(workdir / "cache", chosen, seed, progress)
    torch.manual_seed(seed)
    model = kws_cnn()
    epochs = chosen.pretrain_epochs + chosen.finetune_epochs
    report = on_epoch or progress_bar(epochs, progress)
    pretrain(
        model,
        data.train.x,
        SPEC,
        data.bank,
        epochs=chosen.pretrain_epochs,
        seed=seed,
        on_epoch=report,
    )
    finetune(
        model,
        data.train.x,
        data.train.y,
        SPEC,
        data.bank,
        epochs=chosen.finetune_epochs,
        seed=seed,
        on_epoch=report,
    )
    thresholds = tune_thresholds(probabilities(model, data.val.x, SPEC), data.val.y)
    accuracy, recall, confusion = evaluate(probabilities(model, data.test.x, SPEC), data.test.y)
    files = write_outputs(workdir / "model", model, data, chosen, thresholds)
    return KwsOutcome(
        workdir / "model", accuracy, recall, thresholds, files,
        time.monotonic() - started, data.synthesized, confusion,
    )  # fmt: skip
