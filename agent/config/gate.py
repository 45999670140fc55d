"""The ``[gate]`` table: a voice-activity model in front of the serving model (audio only)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    """Audio windows reach the serving model (keyword spotting) only while the voice-activity
    package at ``package`` (a folder as ``edgewise vad`` writes it, signed by a key in
    ``[trust]``) has heard speech within ``hangover_s`` of stream time: the rest of the time
    only the VAD runs, at a fraction of the CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: Path
    # speech probability that counts as speech; None: the package's own threshold
    threshold: float | None = Field(default=None, gt=0, lt=1)
    # At least a window of the serving model: the window that holds a whole word ends up to a
    # window after the word's first speech chunk.
    hangover_s: float = Field(default=1.0, ge=0, le=600)
    enabled: bool = True
