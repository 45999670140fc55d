"""Keyword events: smoothing over windows, per-label thresholds, ignored labels, debounce on
stream time, a new stream, and the manifest's checks of the spec."""

from __future__ import annotations

import numpy as np
import pytest
from agent.contract import EventsSpec, Manifest, ManifestError
from agent.inference.events import EventDetector, Postprocessor
from agent.inference.postprocess import postprocess
from pydantic import ValidationError

LABELS = ("yes", "no", "_unknown_", "_silence_")


def spec(**kwargs: object) -> EventsSpec:
    return EventsSpec(kind="events", labels=LABELS, softmax=False, **kwargs)  # type: ignore[arg-type]


def probs(**by_label: float) -> np.ndarray:
    row = np.array([by_label.get(label.strip("_"), 0.0) for label in LABELS], np.float32)
    return row


def test_an_event_fires_once_per_word_then_again_after_the_debounce() -> None:
    detect = EventDetector(spec(threshold=0.5, debounce_s=1.0))
    heard = [detect(probs(yes=0.9), at) for at in (1.0, 1.25, 1.5, 1.75, 2.0)]
    assert [len(h) for h in heard] == [1, 0, 0, 0, 1]
    assert heard[0][0].label == "yes" and heard[0][0].score == pytest.approx(0.9)
    assert detect.events == 2


def test_ignored_labels_never_fire_and_each_label_has_its_own_threshold() -> None:
    detect = EventDetector(spec(threshold=0.5, thresholds={"no": 0.95}, debounce_s=0))
    assert detect(probs(unknown=0.99), 1.0) == []
    assert detect(probs(silence=0.99), 2.0) == []
    assert detect(probs(no=0.9), 3.0) == []  # under its own 0.95
    assert [p.label for p in detect(probs(no=0.97), 4.0)] == ["no"]
    assert [p.label for p in detect(probs(yes=0.6), 5.0)] == ["yes"]


def test_smoothing_averages_windows_so_one_stray_window_is_not_an_event() -> None:
    detect = EventDetector(spec(threshold=0.55, smoothing=3, debounce_s=0))
    assert detect(probs(unknown=1.0), 0.25) == []
    assert detect(probs(yes=0.9), 0.5) == []  # one stray window: mean 0.45
    assert detect(probs(unknown=1.0), 0.75) == []  # mean 0.3
    (event,) = detect(probs(yes=0.9), 1.0)  # two of the last three: mean 0.6
    assert event.label == "yes" and event.score == pytest.approx(0.6)


def test_a_stream_that_starts_again_is_not_debounced_against_the_old_one() -> None:
    detect = EventDetector(spec(threshold=0.5, debounce_s=10))
    assert detect(probs(yes=0.9), 100.0)
    assert detect(probs(yes=0.9), 0.5), "a looped file starts at 0 again: a new stream"


def test_softmax_turns_logits_into_probabilities() -> None:
    detect = EventDetector(
        EventsSpec(kind="events", labels=LABELS, softmax=True, threshold=0.9, debounce_s=0)
    )
    assert detect(np.array([0.0, 0.0, 0.0, 0.0]), 1.0) == []  # 0.25 each
    (event,) = detect(np.array([8.0, 0.0, 0.0, 0.0]), 2.0)
    assert event.label == "yes" and 0.99 < event.score <= 1.0


def test_the_postprocessor_reads_the_first_output_and_checks_its_width() -> None:
    post = Postprocessor(spec(threshold=0.5), preprocess=None)  # type: ignore[arg-type]
    assert post([probs(yes=0.9)[None]], (16000,), 1.0)[0].label == "yes"
    with pytest.raises(ValueError, match="3 scores for 4 labels"):
        post([np.zeros((1, 3), np.float32)], (16000,), 9.0)
    post.reset()
    assert post([probs(yes=0.9)[None]], (16000,), 1.0), "reset forgets the last event"


def test_stateless_postprocess_refuses_events_rather_than_guessing() -> None:
    with pytest.raises(TypeError, match="remember the stream"):
        postprocess([np.zeros((1, 4))], spec(), (16000,), None)  # type: ignore[arg-type]


def test_the_spec_refuses_thresholds_for_labels_it_lacks_and_all_labels_ignored() -> None:
    with pytest.raises(ValidationError, match="lacks"):
        spec(thresholds={"maybe": 0.5})
    with pytest.raises(ValidationError, match="every label is ignored"):
        spec(ignore=LABELS)
    with pytest.raises(ValidationError):
        spec(threshold=1.5)


def test_a_manifest_names_each_model_input_once() -> None:
    base = {
        "name": "kws",
        "version": "1.0.0",
        "created_at": "now",
        "model": {"sha256": "0" * 64, "size": 1, "chunks": ["0" * 64]},
        "input": {"name": "x", "shape": [1, 4]},
        "preprocess": {"kind": "waveform", "window": 4},
        "postprocess": {"kind": "score", "threshold": 0.5},
    }
    Manifest.from_dict({**base, "state": [{"input": "s", "output": "sN", "shape": [1, 4]}]})
    with pytest.raises(ManifestError, match="named twice"):
        Manifest.from_dict({**base, "constants": [{"name": "x", "value": 1}]})
    with pytest.raises(ManifestError, match="over"):
        Manifest.from_dict(
            {**base, "state": [{"input": "s", "output": "sN", "shape": [4096, 4096, 2]}]}
        )
