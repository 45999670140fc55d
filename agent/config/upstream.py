"""The agent config's sections about what goes upstream: ``[results]`` (which results),
``[outbox]`` (where they wait, and how much of them at once) and ``[telemetry]``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResultsConfig(_Section):
    """Which results are published: ``every`` one, ``on_change`` of the top label, at most one
    per ``interval_s`` (``interval``), or those whose top score passes ``min_score``
    (``threshold``)."""

    mode: Literal["every", "on_change", "interval", "threshold"] = "every"
    interval_s: float = Field(default=1.0, gt=0)
    min_score: float = Field(default=0.5, ge=0)
    # Per label: a result whose top label is listed is published only from this score on, in
    # every mode (Frigate's per-object min_score); in "threshold" mode the rest use min_score.
    thresholds: dict[str, float] = Field(default_factory=dict, max_length=256)


class OutboxConfig(_Section):
    """Results wait on disk until the broker has them; when full, the oldest are dropped."""

    max_rows: int = Field(default=100_000, gt=0)
    max_bytes: int = Field(default=64 * 2**20, gt=0)
    batch_max: int = Field(default=500, gt=0, description="results per MQTT message at most")
    window: int = Field(default=8, gt=0, description="messages awaiting PUBACK at once")
    # While the database cannot be written (disk full, I/O errors): results held in memory up
    # to this many bytes, oldest dropped and counted beyond it; written when the disk returns.
    memory_bytes: int = Field(default=8 * 2**20, ge=0)
    # Exit 1 (systemd restarts the agent) after this long without a single successful write.
    max_failing_s: float = Field(default=600.0, gt=0)


class TelemetryConfig(_Section):
    interval_s: float = Field(default=10.0, gt=0)
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
