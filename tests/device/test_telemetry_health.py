"""The telemetry fields readers judge a device by: its configured ``interval_s`` (when to call
it stale) and ``error_ratio`` (failed / seen frames since the serving model came in)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.inference.pipeline import FrameSlot, HealthStats
from agent.inference.stats import StageStats
from agent.upstream.collector import TelemetryCollector
from agent.upstream.telemetry import HEALTH, TelemetryReporter
from telemetry_samples import idle_message, sample_message


def _collector(tmp_path: Path, health: HealthStats | None) -> TelemetryCollector:
    parts: Any = SimpleNamespace(
        counters=lambda: {}, truncated=0, suppressed=0, queued=0, dropped=0, errors=0,
        error=None, in_memory=0, shortened=0, max_packet=None, rejected=0,
        capabilities=SimpleNamespace(as_dict=lambda: {"protocol": "5"}),
    )  # fmt: skip
    return TelemetryCollector(
        device="cam-1", boot_id="b", state_dir=tmp_path, stages=StageStats(),
        frames=FrameSlot(block=False), source=parts, results=parts, outbox=parts,
        uplink=parts, link=parts, boundary=parts, model=lambda: None, health=health,
    )  # fmt: skip


def test_the_message_carries_both_fields() -> None:
    message = sample_message()
    assert message["interval_s"] == 10.0 and message["error_ratio"] is None
    assert idle_message(error_rate=0.5)["error_ratio"] == 0.5
    assert set(HEALTH) == {"interval_s", "error_ratio"}
    json.dumps(message)


def test_error_ratio_is_failed_over_seen_since_the_model_came_in(tmp_path: Path) -> None:
    health = HealthStats()
    collect = _collector(tmp_path, health)
    assert collect(10.0)["error_ratio"] == 0.0, "no frame yet: no error"
    for latency in (5.0, 6.0, None, 7.0):
        health.record(latency)
    assert collect(10.0)["error_ratio"] == 0.25
    health.reset()  # a new model serves (probation resets the figures)
    health.record(None)
    assert collect(10.0)["error_ratio"] == 1.0
    assert _collector(tmp_path, None)(10.0)["error_ratio"] is None


def test_the_reporter_sends_its_configured_interval() -> None:
    stop, sent = threading.Event(), threading.Event()
    messages: list[dict[str, object]] = []

    def publish(message: dict[str, object]) -> None:
        messages.append(message)
        stop.set()
        sent.set()

    # The measured interval (what fps is computed over) differs from the configured one.
    reporter = TelemetryReporter(0.01, lambda elapsed: {"interval_s": 99.0}, publish, stop)
    reporter.start()
    assert sent.wait(10)
    reporter.join(10)
    assert messages[0]["interval_s"] == 0.01
