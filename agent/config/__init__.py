"""The agent's TOML config, validated up front into typed objects.

Sources, lowest precedence first: the TOML file; systemd credentials in
``$CREDENTIALS_DIRECTORY`` (``mqtt-password``, ``mqtt-tls-key``); environment variables
``EDGEWISE_<SECTION>__<KEY>`` (a TOML value, else a string). An error names the file and the
dotted key (and the variable it came from), e.g. ``agent.toml: mqtt.port: Input should be a
valid integer``.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 ships Python 3.10
    import tomli as tomllib

from pydantic_core import PydanticCustomError

from agent.config.control import CommandsConfig, HomeAssistantConfig, ShadowConfig
from agent.config.gate import GateConfig
from agent.config.sources import CameraConfig as CameraConfig
from agent.config.sources import CommandConfig as CommandConfig
from agent.config.sources import ImagesConfig as ImagesConfig
from agent.config.sources import PicameraConfig as PicameraConfig
from agent.config.sources import SensorConfig as SensorConfig
from agent.config.sources import SourceConfig, error_location, resolve_paths
from agent.config.sources import StreamConfig as StreamConfig
from agent.config.sources import VideoConfig as VideoConfig
from agent.config.sources import source_config as source_config
from agent.config.upstream import OutboxConfig, ResultsConfig, TelemetryConfig
from agent.contract import DEVICE_ID_PATTERN, ContractError, TrustStore, dot_problem
from agent.errors import ConfigError


def _no_dot(kind: str) -> BeforeValidator:
    """A config written before ids lost '.': one line naming what to rename, before the
    pattern's own message."""

    def check(value: Any) -> Any:
        problem = dot_problem(value, kind) if isinstance(value, str) else None
        if problem:
            raise PydanticCustomError("dotted_topic_level", problem)
        return value

    return BeforeValidator(check)


DeviceId = Annotated[str, _no_dot("device"), Field(pattern=DEVICE_ID_PATTERN)]
GroupName = Annotated[str, _no_dot("group"), Field(pattern=DEVICE_ID_PATTERN)]
TopicRoot = Annotated[str, _no_dot("topic root"), Field(pattern=r"^[^+#/\x00$][^+#/\x00]*$")]
MqttUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["mqtt", "mqtts"], host_required=True)]
ENV_PREFIX = "EDGEWISE_"
# systemd credential name → where it goes, and whether the value is the file's text or its path.
CREDENTIALS = {
    "mqtt-password": (("mqtt", "password"), "text"),
    "mqtt-tls-key": (("mqtt", "tls", "key_file"), "path"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: DeviceId
    groups: tuple[GroupName, ...] = ()
    state_dir: Path = Path("/var/lib/edgewise")


class TlsConfig(_Section):
    """TLS with a client certificate: on a broker with ``use_identity_as_username`` the
    certificate is the device's identity."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class MqttConfig(_Section):
    url: MqttUrl | None = None  # mqtt://host:1883 or mqtts://host:8883; overrides host and port
    # Several brokers or cluster nodes, tried in turn (jittered backoff); overrides url.
    urls: tuple[MqttUrl, ...] = ()
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(default=30, ge=2)
    topic_root: TopicRoot = "edgewise"
    reconnect_max_delay: float = Field(default=30.0, gt=0)
    # "5" reads what the broker offers from CONNACK (and announces this cap in CONNECT), and
    # falls back to 3.1.1 on a broker that refuses 5; "3.1.1" never tries 5.
    # "5" reads the broker (CONNACK) and falls back to 3.1.1; not yet the default: see README
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # The largest MQTT packet sent (a results batch, an event) — below the broker's
    # max_packet_size, which disconnects a client that sends more (1 MiB in the shipped config).
    max_packet_bytes: int = Field(default=512 * 1024, ge=4096, le=268_435_455)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # protocol = 5 (or EDGEWISE_MQTT__PROTOCOL=5, read as TOML) means "5".
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _tls_for_mqtts(self) -> MqttConfig:
        urls = self.urls or ((self.url,) if self.url is not None else ())
        if self.urls and self.url is not None:
            raise ValueError("give url or urls, not both")
        if len({u.scheme for u in urls}) > 1:
            raise ValueError("urls mix mqtt:// and mqtts://; one connection setting serves all")
        if any(u.scheme == "mqtts" for u in urls) and self.tls is None:
            raise ValueError("an mqtts:// url needs [mqtt.tls] (ca_file, cert_file, key_file)")
        return self

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) of every broker or node, in the order tried."""
        urls = self.urls or ((self.url,) if self.url is not None else ())
        if not urls:
            return ((self.host, self.port),)
        return tuple((str(u.host), u.port or (8883 if u.scheme == "mqtts" else 1883)) for u in urls)

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the first broker."""
        return self.endpoints[0]


class TrustConfig(_Section):
    public_keys: tuple[Path, ...] = Field(min_length=1)


class RuntimeConfig(_Section):
    intra_op_threads: int = Field(default=1, ge=0)  # 0: one per core
    inter_op_threads: int = Field(default=1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # In order of preference; those this onnxruntime build lacks are skipped, CPU is the last
    # resort. Jetson: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    warmup_runs: int = Field(default=3, ge=0)
    # What runs the model: "auto" lets the probe load each installed backend, check it against
    # the golden outputs, time it, and serve with the fastest that matches; or one of
    # agent.inference.backends.BACKENDS ("onnxruntime" with `providers` above, "ort-xnnpack",
    # "openvino", "ort-openvino", "ort-cuda", "ort-tensorrt").
    backend: Literal[
        "auto", "onnxruntime", "ort-xnnpack", "openvino", "ort-openvino", "ort-cuda", "ort-tensorrt"
    ] = "auto"
    # Frames inferred per second at most (the `rate` command sets it live); None: every frame.
    max_fps: float | None = Field(default=None, gt=0)


class DeployConfig(_Section):
    # A deploy message over this is dropped in paho's callback, before it is queued or parsed.
    # 64 KiB holds a manifest of ~950 chunks: a 119 MB model at the default 128 KiB chunk size.
    # 96 KiB: a DSSE envelope carries the manifest in base64 (4/3), ~950 chunk hashes still fit
    max_manifest_bytes: int = Field(default=96 * 1024, ge=4096, le=16 * 2**20)
    fetch_timeout: float = Field(
        default=60.0, gt=0, description="seconds connected without a new chunk (MQTT)"
    )
    chunk_window: int = Field(default=32, ge=1, le=1024, description="chunks asked for at once")
    # delivery "request" and "retained": ask again for the chunks in flight when none came for
    # this long — a new request, or (retained) unsubscribe and subscribe again to their topics.
    # The name is kept from when only "request" used it.
    request_retry_s: float = Field(
        default=2.0, gt=0, description="seconds without a chunk before asking again (MQTT)"
    )
    # delivery "http": CA certificates trusted for https:// model URLs besides the system store
    http_ca_file: Path | None = Field(default=None, description="extra CA for https model URLs")
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    probe_timeout: float = Field(default=60.0, gt=0, description="child load + golden check")
    probe_memory_mb: int = Field(default=1024, ge=128)
    max_latency_ms: float | None = Field(default=None, gt=0, description="p99 budget to go live")
    max_memory_mb: float | None = Field(default=None, gt=0, description="probe's peak RSS budget")
    probation_s: float = Field(default=30.0, ge=0, description="watch after a switch")
    max_error_rate: float = Field(default=0.1, ge=0, le=1)


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
    commands: CommandsConfig = CommandsConfig()
    shadow: ShadowConfig = ShadowConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    gate: GateConfig | None = None


# What SIGHUP can change without a restart: read at use time by whoever needs them.
RELOADABLE = (
    "results.",
    "telemetry.interval_s",
    "runtime.max_fps",
    "deploy.fetch_timeout",
    "deploy.request_retry_s",
    "deploy.http_ca_file",
    "deploy.max_manifest_bytes",
    "deploy.max_model_bytes",
    "deploy.probe_timeout",
    "deploy.probe_memory_mb",
    "deploy.max_latency_ms",
    "deploy.max_memory_mb",
    "deploy.probation_s",
    "deploy.max_error_rate",
)


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in error_location(err)) or "(top level)"
        # The override that set this key, or one inside or around it.
        origin = next((o for k, o in origins.items() if _nested(key, k) or _nested(k, key)), "")
        parts.append(f"{key}: {err['msg']}{f' (from {origin})' if origin else ''}")
    return "; ".join(parts)


def _nested(inner: str, outer: str) -> bool:
    return f"{inner}.".startswith(f"{outer}.")


def _put(data: dict[str, Any], keys: tuple[str, ...], value: object) -> None:
    for key in keys[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}  # a scalar under a deeper override: validation then names the key
        data = data[key]
    data[keys[-1]] = value


def _toml_value(raw: str) -> object:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string: EDGEWISE_MQTT__HOST=broker.local


def _overlay(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply credentials, then environment overrides, to the parsed file; returns dotted key →
    where its value came from."""
    origins: dict[str, str] = {}
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        for name, (keys, kind) in CREDENTIALS.items():
            path = Path(credentials) / name
            if path.is_file():
                value = path.read_text().rstrip("\n") if kind == "text" else str(path)
                _put(data, keys, value)
                origins[".".join(keys)] = f"credential {name}"
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            keys = tuple(k.lower() for k in name.removeprefix(ENV_PREFIX).split("__"))
            _put(data, keys, _toml_value(raw))
            origins[".".join(keys)] = f"${name}"
    return origins


def _resolve_deploy(deploy: DeployConfig, base: Path) -> DeployConfig:
    if deploy.http_ca_file is None:
        return deploy
    return deploy.model_copy(update={"http_ca_file": base / deploy.http_ca_file})


def _check_files(config: AgentConfig) -> list[str]:
    """What validation cannot see: files that must be readable and hold the right thing."""
    problems = []
    keys = [("trust", config.trust.public_keys), ("commands", config.commands.public_keys)]
    for section, paths in keys:
        for i, key_path in enumerate(paths):
            try:
                TrustStore.from_files([key_path])
            except (ContractError, OSError) as exc:
                problems.append(f"{section}.public_keys.{i}: {exc}")
    tls = config.mqtt.tls
    if tls is not None:
        unreadable = False
        for field in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, field)
            try:
                path.open("rb").close()
            except OSError as exc:
                problems.append(f"mqtt.tls.{field}: cannot read {path}: {exc.strerror}")
                unreadable = True
        if not unreadable:
            try:
                context = ssl.create_default_context(cafile=str(tls.ca_file))
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except ssl.SSLError as exc:
                problems.append(f"mqtt.tls: the CA, certificate and key do not load: {exc}")
    ca_file = config.deploy.http_ca_file
    if ca_file is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"deploy.http_ca_file: cannot load {ca_file}: {exc}")
    state = config.device.state_dir
    existing = next(p for p in (state, *state.parents) if p.exists())
    if not existing.is_dir():
        problems.append(f"device.state_dir: {existing} is not a directory")
    elif not os.access(existing, os.W_OK):
        problems.append(f"device.state_dir: {existing} is not writable by this user")
    return problems


def changed_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""

    def flat(config: AgentConfig) -> dict[str, object]:
        out: dict[str, object] = {}
        for section, values in config.model_dump().items():
            if not isinstance(values, dict):  # an optional section left out ([gate])
                out[section] = values
                continue
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    before, after = flat(old), flat(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def reloadable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RELOADABLE)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a config file with its overrides (``environ``: default the process
    environment); relative paths inside it resolve against its folder, and the files it names
    are checked. Raises ConfigError naming the file and every key at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    origins = _overlay(data, os.environ if environ is None else environ)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, origins)}") from exc
    base = path.resolve().parent
    tls = config.mqtt.tls
    if tls is not None:
        tls = TlsConfig(
            ca_file=base / tls.ca_file, cert_file=base / tls.cert_file, key_file=base / tls.key_file
        )
    config = config.model_copy(
        update={
            "device": config.device.model_copy(
                update={"state_dir": base / config.device.state_dir}
            ),
            "mqtt": config.mqtt.model_copy(update={"tls": tls}),
            "deploy": _resolve_deploy(config.deploy, base),
            "trust": TrustConfig(public_keys=tuple(base / p for p in config.trust.public_keys)),
            "commands": CommandsConfig(
                public_keys=tuple(base / p for p in config.commands.public_keys)
            ),
            "source": resolve_paths(config.source, base),
            "gate": config.gate
            and config.gate.model_copy(update={"package": base / config.gate.package}),
        }
    )
    problems = _check_files(config)
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    return config
