"""The agent's TOML config, validated up front into typed objects.

An error names the file and the dotted key, e.g. ``agent.toml: mqtt.port: Input should be a
valid integer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: DeviceId
    groups: tuple[DeviceId, ...] = ()
    state_dir: Path = Path("/var/lib/edgewise")


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(default=30, ge=2)
    topic_root: str = "edgewise"
    reconnect_max_delay: float = Field(default=30.0, gt=0)


class TrustConfig(_Section):
    public_keys: tuple[Path, ...] = Field(min_length=1)


class SourceConfig(_Section):
    """Where frames or samples come from.

    ``uri`` by kind: ``video`` a file; ``camera`` an index (``"0"``) or ``/dev/videoN``;
    ``stream`` an RTSP/HTTP URL; ``images`` a folder; ``sensor`` a file or FIFO path, ``-`` for
    standard input, ``serial:///dev/ttyUSB0`` (needs pyserial) or ``mqtt:some/topic``.
    """

    kind: Literal["video", "camera", "stream", "images", "sensor"] = "video"
    uri: str
    loop: bool = False  # video, images: start again at the end
    # video: paced at the file's frame rate like a camera; False reads as fast as inference.
    realtime: bool = True
    width: int | None = Field(default=None, gt=0)  # camera, stream: requested resolution
    height: int | None = Field(default=None, gt=0)
    fps: float | None = Field(default=None, gt=0)
    watch: bool = False  # images: keep looking for new files
    format: Literal["csv", "json"] = "csv"  # sensor: one sample per line or message
    fields: tuple[str, ...] = ()  # sensor, json: keys to read, in order (default: all numbers)
    window: int = Field(default=1, gt=0)  # sensor: samples per model input
    hop: int = Field(default=1, gt=0)  # sensor: samples between two windows
    baud: int = Field(default=115200, gt=0)  # sensor, serial

    @model_validator(mode="after")
    def _kind_options(self) -> SourceConfig:
        if self.kind != "sensor" and (self.window != 1 or self.hop != 1 or self.fields):
            raise ValueError("window, hop and fields apply to kind = 'sensor' only")
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop}) larger than window ({self.window}) skips samples")
        return self


class RuntimeConfig(_Section):
    intra_op_threads: int = Field(default=1, ge=0)  # 0: one per core
    inter_op_threads: int = Field(default=1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # In order of preference; those this onnxruntime build lacks are skipped, CPU is the last
    # resort. Jetson: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    warmup_runs: int = Field(default=3, ge=0)


class ResultsConfig(_Section):
    """Which results are published: ``every`` one, ``on_change`` of the top label, at most one
    per ``interval_s`` (``interval``), or those whose top score passes ``min_score``
    (``threshold``)."""

    mode: Literal["every", "on_change", "interval", "threshold"] = "every"
    interval_s: float = Field(default=1.0, gt=0)
    min_score: float = Field(default=0.5, ge=0)


class DeployConfig(_Section):
    fetch_timeout: float = Field(default=60.0, gt=0, description="seconds without a new chunk")
    chunk_window: int = Field(default=32, ge=1, le=1024, description="chunks asked for at once")
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    probe_timeout: float = Field(default=60.0, gt=0, description="child load + golden check")
    probe_memory_mb: int = Field(default=1024, ge=128)
    max_latency_ms: float | None = Field(default=None, gt=0, description="p99 budget to go live")
    max_memory_mb: float | None = Field(default=None, gt=0, description="probe's peak RSS budget")
    probation_s: float = Field(default=30.0, ge=0, description="watch after a switch")
    max_error_rate: float = Field(default=0.1, ge=0, le=1)


class OutboxConfig(_Section):
    """Results wait on disk until the broker has them; when full, the oldest are dropped."""

    max_rows: int = Field(default=100_000, gt=0)
    max_bytes: int = Field(default=64 * 2**20, gt=0)
    batch_max: int = Field(default=500, gt=0, description="results per MQTT message at most")
    window: int = Field(default=8, gt=0, description="messages awaiting PUBACK at once")


class TelemetryConfig(_Section):
    interval_s: float = Field(default=10.0, gt=0)
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)


class AgentConfig(_Section):
    device: DeviceConfig
    mqtt: MqttConfig = MqttConfig()
    trust: TrustConfig
    source: SourceConfig
    runtime: RuntimeConfig = RuntimeConfig()
    deploy: DeployConfig = DeployConfig()
    results: ResultsConfig = ResultsConfig()
    outbox: OutboxConfig = OutboxConfig()
    telemetry: TelemetryConfig = TelemetryConfig()


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate a config file; relative paths inside it resolve against its folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc
    base = path.resolve().parent
    source = config.source
    if source.kind in ("video", "images") or (
        source.kind == "sensor" and source.uri != "-" and ":" not in source.uri
    ):
        source = source.model_copy(update={"uri": str(base / source.uri)})
    return config.model_copy(
        update={
            "device": config.device.model_copy(
                update={"state_dir": base / config.device.state_dir}
            ),
            "trust": TrustConfig(public_keys=tuple(base / p for p in config.trust.public_keys)),
            "source": source,
        }
    )
