"""The control plane's parts alone: replay memory, redaction, the rate gate, per-label result
thresholds, the id a broken command claims, and putting a snapshot back together."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from agent.config import ResultsConfig
from agent.contract import Topics
from agent.contract.snapshot import SnapshotError, assemble, describe, split
from agent.control.actions import redact
from agent.control.controller import claimed_id
from agent.control.memory import PURGE_EVERY, SeenCommands
from agent.control.snapshot import SnapshotFailed, encode_jpeg
from agent.inference.pipeline import RateGate
from agent.inference.postprocess import Prediction
from agent.inference.runtime import Inference
from agent.upstream.results import RateFilter


def test_an_id_is_refused_again_until_it_expires_even_after_a_restart(tmp_path: Path) -> None:
    seen = SeenCommands(tmp_path / "commands.db")
    assert seen.remember("abcdefgh", expires_at=100.0, now=10.0)
    assert not seen.remember("abcdefgh", expires_at=100.0, now=11.0)
    seen.close()
    again = SeenCommands(tmp_path / "commands.db")
    assert not again.remember("abcdefgh", expires_at=100.0, now=12.0)
    for i in range(PURGE_EVERY):  # a sweep after the expiry forgets it
        again.remember(f"other-{i:04d}", expires_at=1000.0, now=200.0)
    assert len(again) == PURGE_EVERY  # abcdefgh swept, the new ones kept (one was refused)


def test_secrets_are_redacted_at_any_depth() -> None:
    config = {"mqtt": {"password": "hunter2", "username": "cam", "tls": None}, "x": [{"token": 1}]}
    assert redact(config) == {
        "mqtt": {"password": "<redacted>", "username": "cam", "tls": None},
        "x": [{"token": "<redacted>"}],
    }
    assert redact({"password": None}) == {"password": None}  # nothing set: nothing to hide


def test_the_rate_gate_admits_at_most_max_fps() -> None:
    gate = RateGate(max_fps=5)
    admitted = sum(gate.admit(i / 100) for i in range(300))  # 3 s of 100 fps
    assert admitted == 15 and gate.skipped == 285
    gate.max_fps = None
    assert all(gate.admit(3 + i / 100) for i in range(10))


def _inference(label: str, score: float) -> Inference:
    return Inference([Prediction(label, score)], 0.0, 0.0, 0.0)


def test_a_label_threshold_holds_back_that_label_in_any_mode() -> None:
    every = RateFilter(ResultsConfig(mode="every", thresholds={"person": 0.8}))
    assert not every.admit(_inference("person", 0.7), 0.0)
    assert every.admit(_inference("person", 0.9), 0.0)
    assert every.admit(_inference("cat", 0.1), 0.0)
    threshold = RateFilter(ResultsConfig(mode="threshold", min_score=0.5, thresholds={"cat": 0.2}))
    assert threshold.admit(_inference("cat", 0.3), 0.0)
    assert not threshold.admit(_inference("dog", 0.3), 0.0)


def test_a_broken_command_is_answered_under_the_id_it_claims() -> None:
    payload = base64.b64encode(json.dumps({"id": "abcdefgh1234"}).encode()).decode()
    assert claimed_id(json.dumps({"payload": payload}).encode()) == "abcdefgh1234"
    assert claimed_id(b"\xff\xfe").startswith("unknown-")
    assert claimed_id(json.dumps({"payload": "e30="}).encode()).startswith("unknown-")


def test_a_snapshot_is_put_back_together_or_named_broken() -> None:
    jpeg = encode_jpeg(np.full((48, 64, 3), 127, np.uint8), 90)
    snapshot = describe(jpeg, 100, 64, 48)
    chunks = dict(enumerate(split(jpeg, 100)))
    assert assemble(snapshot, chunks) == jpeg and snapshot.chunks == len(chunks) > 1
    with pytest.raises(SnapshotError, match=r"1 of \d+ chunks missing"):
        assemble(snapshot, {i: c for i, c in chunks.items() if i != 1})
    altered = {**chunks, 0: b"x" + chunks[0][1:]}
    with pytest.raises(SnapshotError, match="does not match"):
        assemble(snapshot, altered)
    with pytest.raises(SnapshotFailed, match="not pictures"):
        encode_jpeg(np.zeros((100,), np.float32), 90)


def test_command_topics_per_target() -> None:
    topics = Topics()
    assert topics.commands("device:cam-1") == "edgewise/v1/commands/device/cam-1"
    assert topics.commands("group:yard") == "edgewise/v1/commands/group/yard"
    assert topics.commands("all") == "edgewise/v1/commands/all"
    with pytest.raises(ValueError, match="not a command target"):
        topics.commands("cam-1")
