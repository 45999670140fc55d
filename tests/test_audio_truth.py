"""bench/audio_truth.py: the test recording's layout and the keyword and gate scores."""

from __future__ import annotations

import numpy as np
import pytest

from bench.audio_truth import (
    Event,
    Placed,
    false_accepts_per_hour,
    lay_out,
    score_events,
    score_vad,
)

RATE = 1000


def test_lay_out_puts_each_clip_where_the_truth_says() -> None:
    clips = [np.full(300, 0.5, np.float32), np.full(200, -0.25, np.float32)]
    noise = np.zeros(50, np.float32)
    audio, truth = lay_out(clips, ["yes", "cat"], noise, RATE, gap_s=(0.5, 0.5))
    assert [p.label for p in truth] == ["yes", "cat"]
    assert truth[0] == Placed("yes", 0.5, 0.8) and truth[1] == Placed("cat", 1.3, 1.5)
    assert len(audio) == 2000 and audio.dtype == np.float32
    assert np.all(audio[500:800] == 0.5) and np.all(audio[1300:1500] == -0.25)
    assert np.all(audio[:500] == 0) and np.all(audio[800:1300] == 0)
    with pytest.raises(ValueError, match="2 clips but 1 labels"):
        lay_out(clips, ["yes"], noise, RATE)


def test_events_match_their_utterance_once_and_the_rest_are_false() -> None:
    truth = [Placed("yes", 1.0, 1.5), Placed("no", 4.0, 4.4), Placed("yes", 8.0, 8.6)]
    events = [
        Event("yes", 1.9),  # the first yes, heard by a window ending after it
        Event("yes", 2.0),  # the same yes again: false
        Event("no", 9.0),  # no "no" near: false
        Event("yes", 8.9),  # the second yes
    ]
    score = score_events(events, truth, ["yes", "no"], window_s=1.0)
    assert score.recall == {"yes": 1.0, "no": 0.0}
    assert score.accuracy == pytest.approx(2 / 3) and score.false_accepts == 2
    # an event after the window could have held the word is late: false, and a miss
    late = score_events([Event("yes", 2.8)], truth[:1], ["yes"], window_s=1.0)
    assert late.recall == {"yes": 0.0} and late.false_accepts == 1


def test_other_words_count_for_nothing_but_events_on_them_are_false() -> None:
    truth = [Placed("cat", 1.0, 1.5)]
    score = score_events([Event("yes", 1.6)], truth, ["yes"], window_s=1.0)
    assert np.isnan(score.recall["yes"]) and score.false_accepts == 1
    assert false_accepts_per_hour([Event("go", 5.0)] * 3, 1800.0) == 6.0


def test_vad_scores_by_hop_with_the_hangover_excused() -> None:
    truth = [Placed("yes", 1.0, 2.0)]
    hop = 0.5  # hops: [0,.5) [.5,1) [1,1.5) [1.5,2) [2,2.5) [2.5,3)
    passed = [False, False, True, False, True, True]
    score = score_vad(passed, hop, truth, hangover_s=0.5)
    assert score.recall == 0.5  # one of the two speech hops
    assert score.precision == pytest.approx(2 / 3)  # [2,2.5) is hangover; [2.5,3) is not
