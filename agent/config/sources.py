"""The ``[source]`` table: one model per kind, each with only the settings that kind takes.

``SourceConfig`` is their union, told apart by ``kind`` (``video`` when the table has none).
``uri`` by kind: ``video`` a file; ``camera`` an index (``"0"``) or ``/dev/videoN``; ``stream``
an RTSP/HTTP URL; ``images`` a folder; ``sensor`` a file or FIFO path, ``-`` for standard input,
``serial:///dev/ttyUSB0`` (needs pyserial) or ``mqtt:some/topic``; ``picamera`` the camera number
(default ``"0"``); ``command`` only a label for results and status (default
``command:<program>``: the command line may hold a stream's password); ``audio`` ``mic`` (the
default input device), ``mic:<index or name>``, a WAV/FLAC file, or with ``command`` a label.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)
from pydantic_core import ErrorDetails

# Raw frames a capture command writes (ffmpeg's -pix_fmt names; i420 = yuv420 = yuv420p).
PixelFormat = Literal["bgr24", "rgb24", "gray", "yuv420", "yuv420p", "i420", "nv12"]
CHROMA_SUBSAMPLED = frozenset({"yuv420", "yuv420p", "i420", "nv12"})
SourceKind = Literal[
    "video", "camera", "stream", "images", "sensor", "command", "picamera", "audio"
]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
DEFAULT_KIND = "video"  # a [source] table without kind
MIC = "mic"  # an audio source's uri for the default input device ("mic:<device>": another)
KIND_ERROR = "source_kind"  # the error type of a kind that is none of SOURCE_KINDS
# Settings of one kind that another kind refuses unless left at this default (all others are
# ignored there with a warning, as they always were).
_STRICT: dict[str, object] = {
    "window": 1,
    "hop": 1,
    "fields": (),
    "command": (),
    "pixel_format": "bgr24",
}

log = logging.getLogger(__name__)


class _Kind(BaseModel):
    """What every kind has: a ``uri``, and no setting of another kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str

    @model_validator(mode="before")
    @classmethod
    def _no_foreign_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = cls.model_fields["kind"].default
        kept = dict(data)
        for key, value in data.items():
            if key in cls.model_fields or key not in _OWNERS:
                continue  # its own setting, or unknown (extra="forbid" names it)
            if _STRICT.get(key, value) != value:
                raise ValueError(_foreign(key, kind))
            # Configs that set it have always loaded (it did nothing): a warning, not a refusal,
            # so that an agent upgraded in the field still starts on its old config.
            log.warning("source.%s does nothing for kind = %r; ignored", key, kind)
            del kept[key]
        return kept


class _Sized(_Kind):
    # camera, stream, picamera: the resolution asked for; command: the size of the frames it writes
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)


class _Capture(_Sized):
    fps: float | None = Field(default=None, gt=0)


class VideoConfig(_Kind):
    kind: Literal["video"] = "video"
    loop: bool = False  # start again at the end
    # paced at the file's frame rate like a camera; False: read as fast as inference
    realtime: bool = True


class CameraConfig(_Capture):
    kind: Literal["camera"] = "camera"


class StreamConfig(_Capture):
    kind: Literal["stream"] = "stream"


class ImagesConfig(_Kind):
    kind: Literal["images"] = "images"
    loop: bool = False  # start again at the end
    watch: bool = False  # keep looking for new files


class SensorConfig(_Kind):
    kind: Literal["sensor"] = "sensor"
    loop: bool = False  # a file: start again at the end
    window: int = Field(default=1, gt=0)  # samples per model input
    hop: int = Field(default=1, gt=0)  # samples between two windows
    fields: tuple[str, ...] = ()  # json: keys to read, in order (default: all numbers)
    format: Literal["csv", "json"] = "csv"  # one sample per line or message
    baud: int = Field(default=115200, gt=0)  # serial

    @model_validator(mode="after")
    def _hop_within_window(self) -> SensorConfig:
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop}) larger than window ({self.window}) skips samples")
        return self


class CommandConfig(_Sized):
    kind: Literal["command"] = "command"
    uri: str = ""  # a label; absent: command:<program>
    # the capture process as argv (no shell), or one string split like a shell would
    command: tuple[str, ...] = ()
    pixel_format: PixelFormat = "bgr24"  # the raw frames on its standard output

    @model_validator(mode="before")
    @classmethod
    def _split_and_label(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("command"), str):
            try:
                data["command"] = shlex.split(data["command"])
            except ValueError as exc:  # an unbalanced quote
                raise ValueError(f"command: cannot split {data['command']!r}: {exc}") from exc
        if "uri" not in data:
            program = data.get("command") or [""]  # none: the check below names what is missing
            data["uri"] = f"command:{Path(str(program[0])).name}".rstrip(":")
        return data

    @model_validator(mode="after")
    def _runnable(self) -> CommandConfig:
        if not self.command or not self.command[0]:
            raise ValueError('kind = \'command\' needs command = ["program", "arg", ...]')
        if self.width is None or self.height is None:
            raise ValueError("kind = 'command' needs width and height: the size of its frames")
        if self.pixel_format in CHROMA_SUBSAMPLED and (self.width % 2 or self.height % 2):
            raise ValueError(
                f"pixel_format {self.pixel_format!r} needs an even width and height, "
                f"not {self.width}x{self.height}"
            )
        return self


class PicameraConfig(_Capture):
    kind: Literal["picamera"] = "picamera"
    uri: str = "0"  # the camera number

    @model_validator(mode="after")
    def _camera_number(self) -> PicameraConfig:
        if not self.uri.isdigit():
            raise ValueError(f"kind = 'picamera' takes the camera number as uri, not {self.uri!r}")
        return self


class AudioConfig(_Kind):
    """Mono windows of ``window_s`` seconds every ``hop_s`` at ``sample_rate``: from a
    microphone (``uri = "mic"`` or ``"mic:<index or name>"``, needs sounddevice), a WAV/FLAC
    file (FLAC and float WAV need soundfile) or ``command``'s s16le samples on its stdout."""

    kind: Literal["audio"] = "audio"
    uri: str = MIC
    command: tuple[str, ...] = ()  # a process writing raw s16le samples (uri: a label)
    sample_rate: int = Field(default=16000, gt=0, le=384_000)
    channels: int = Field(default=1, gt=0, le=64)  # opened or written; mixed down to mono
    window_s: float = Field(default=1.0, gt=0, le=600)
    hop_s: float = Field(default=0.25, gt=0, le=600)
    # a live input: how much audio may wait for the capture thread before the oldest windows
    # are dropped (counted as windows_dropped)
    buffer_s: float = Field(default=2.0, gt=0, le=600)
    loop: bool = False  # a file: start again at the end
    realtime: bool = True  # a file: paced like a microphone; False: as fast as inference

    @model_validator(mode="before")
    @classmethod
    def _split_and_label(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("command"):
            return data
        data = dict(data)
        if isinstance(data["command"], str):
            try:
                data["command"] = shlex.split(data["command"])
            except ValueError as exc:
                raise ValueError(f"command: cannot split {data['command']!r}: {exc}") from exc
        if "uri" not in data and data["command"]:
            data["uri"] = f"command:{Path(str(data['command'][0])).name}"
        return data

    @property
    def window(self) -> int:
        """Samples per window."""
        return round(self.window_s * self.sample_rate)

    @property
    def hop(self) -> int:
        """Samples between the starts of two windows."""
        return round(self.hop_s * self.sample_rate)

    @property
    def input(self) -> Literal["mic", "file", "command"]:
        if self.command:
            return "command"
        return "mic" if self.uri == MIC or self.uri.startswith(MIC + ":") else "file"

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if self.hop > self.window:
            raise ValueError(
                f"hop_s ({self.hop_s}) longer than window_s ({self.window_s}) skips audio"
            )
        if self.hop < 1:
            raise ValueError(f"hop_s ({self.hop_s}) is under one sample at {self.sample_rate} Hz")
        if self.command and not self.command[0]:
            raise ValueError('command = ["program", "arg", ...] names no program')
        if self.input != "file" and (self.loop or not self.realtime):
            raise ValueError(f"loop and realtime apply to an audio file only, not {self.uri!r}")
        return self


_KINDS: tuple[type[_Kind], ...] = (
    VideoConfig,
    CameraConfig,
    StreamConfig,
    ImagesConfig,
    SensorConfig,
    CommandConfig,
    PicameraConfig,
    AudioConfig,
)
# setting -> the kinds that take it (uri and kind: all of them)
_OWNERS: dict[str, tuple[str, ...]] = {}
for _model in _KINDS:
    for _name in _model.model_fields:
        if _name not in ("uri", "kind"):
            _OWNERS.setdefault(_name, ())
            _OWNERS[_name] += (_model.model_fields["kind"].default,)


def _foreign(key: str, kind: str) -> str:
    """``window is not a setting of kind = 'video': window, hop, ... apply to kind = 'sensor'
    only``: the setting, the kind it was given to, and the kinds that take it."""
    owners = _OWNERS[key]
    group = [name for name, kinds in _OWNERS.items() if kinds == owners]
    names = group[0] if len(group) == 1 else f"{', '.join(group[:-1])} and {group[-1]}"
    kinds = [repr(k) for k in owners]
    where = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    verb = "applies" if len(group) == 1 else "apply"
    return f"{key} is not a setting of kind = {kind!r}: {names} {verb} to kind = {where} only"


def _kind_of(data: Any) -> Any:
    """The tag of a [source] table: its kind, ``video`` by default."""
    if isinstance(data, dict):
        kind = data.get("kind", DEFAULT_KIND)
        return kind if isinstance(kind, str) else repr(kind)
    return getattr(data, "kind", DEFAULT_KIND)  # not a table: the video model says what it needs


SourceConfig: TypeAlias = Annotated[
    Annotated[VideoConfig, Tag("video")]
    | Annotated[CameraConfig, Tag("camera")]
    | Annotated[StreamConfig, Tag("stream")]
    | Annotated[ImagesConfig, Tag("images")]
    | Annotated[SensorConfig, Tag("sensor")]
    | Annotated[CommandConfig, Tag("command")]
    | Annotated[PicameraConfig, Tag("picamera")]
    | Annotated[AudioConfig, Tag("audio")],
    Discriminator(
        _kind_of,
        custom_error_type=KIND_ERROR,
        custom_error_message="Input should be "
        + ", ".join(repr(k) for k in SOURCE_KINDS[:-1])
        + f" or {SOURCE_KINDS[-1]!r}",
    ),
]
_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def source_config(**settings: Any) -> SourceConfig:
    """The model of ``settings["kind"]`` (default video), validated like the TOML table."""
    return _ADAPTER.validate_python(settings)


def error_location(error: ErrorDetails) -> tuple[int | str, ...]:
    """An error's key as the TOML names it: ``source.uri``, not ``source.video.uri`` (the kind
    pydantic adds to the path), and ``source.kind`` for a kind that does not exist."""
    loc = tuple(error["loc"])
    if loc[:1] != ("source",):
        return loc
    if error["type"] == KIND_ERROR:
        return ("source", "kind")
    if len(loc) > 1 and loc[1] in SOURCE_KINDS:
        return ("source", *loc[2:])
    return loc


def resolve_paths(source: SourceConfig, base: Path) -> SourceConfig:
    """Relative paths in the source resolved against ``base`` (the config's folder): the file or
    folder a recording is read from, and a command's program given as a path."""
    if (
        source.kind in ("video", "images")
        or (source.kind == "sensor" and source.uri != "-" and ":" not in source.uri)
        or (source.kind == "audio" and source.input == "file")
    ):
        source = source.model_copy(update={"uri": str(base / source.uri)})
    if source.kind in ("command", "audio"):
        program = source.command[:1]
        if program and "/" in program[0] and not Path(program[0]).is_absolute():
            # ./capture.sh beside the config, like every other relative path in it
            source = source.model_copy(
                update={"command": (str(base / program[0]), *source.command[1:])}
            )
    return source
