"""The agent config's sections about remote control: ``[commands]`` (who may command the
device), ``[shadow]`` (a candidate beside the serving model) and ``[homeassistant]``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommandsConfig(_Section):
    """Signed commands run only when signed by one of these keys — kept apart from the keys
    trusted for packages, so a build machine's key cannot restart a fleet. None: every command
    is rejected (and said so)."""

    public_keys: tuple[Path, ...] = ()


class ShadowConfig(_Section):
    """A candidate runs beside the serving model on a sampled share of frames, within a CPU
    budget, and is compared with it; its results are never published."""

    sample: float = Field(default=0.1, gt=0, le=1, description="share of frames also shadowed")
    # Of one core, averaged over the last seconds; frames offered beyond it are skipped.
    max_cpu_percent: float = Field(default=50.0, gt=0, le=100)
    interval_s: float = Field(default=10.0, gt=0, description="seconds between agreement reports")
    iou: float = Field(default=0.5, gt=0, le=1, description="detections match at this IoU")
    # Frames where the two disagree kept as JPEG under state_dir/shadow/ for the next fine-tune:
    # at most this many a minute (0: none) and ``max_kept`` in all (the oldest go first).
    disagreements_per_minute: int = Field(default=0, ge=0)
    max_kept: int = Field(default=200, ge=1)
    # Promote by itself once the Wilson lower bound of agreement reaches ``promote_at`` over at
    # least ``promote_after`` compared frames; None: only by command.
    promote_at: float | None = Field(default=None, gt=0, le=1)
    promote_after: int = Field(default=500, ge=1)


class HomeAssistantConfig(_Section):
    """Device-based MQTT discovery. Home Assistant cannot sign, so what it may command is
    listed here and nothing else: ``allow = ["snapshot", "restart"]``."""

    enabled: bool = False
    prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_-]+$")
    allow: tuple[Literal["snapshot", "restart", "rollback", "threshold"], ...] = ()
    labels: tuple[str, ...] = Field(default=(), description="a binary sensor for each label")
    off_delay_s: float = Field(default=10.0, gt=0, description="a label's sensor turns off after")
    min_score: float = Field(default=0.5, ge=0, description="a label counts as seen from here")
