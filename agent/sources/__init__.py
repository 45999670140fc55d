"""Where frames and sensor windows come from: one module per kind of source, and
``make_source``, which looks the configured kind up in ``FACTORIES``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from agent.config import (
    CameraConfig,
    CommandConfig,
    ImagesConfig,
    MqttConfig,
    PicameraConfig,
    SensorConfig,
    SourceConfig,
    StreamConfig,
    VideoConfig,
)
from agent.config.sources import AudioConfig
from agent.errors import SourceError
from agent.sources.base import Frame as Frame
from agent.sources.base import Source

Factory = Callable[[SourceConfig, MqttConfig | None], Source]
_C = TypeVar("_C")


def _expect(config: SourceConfig, model: type[_C]) -> _C:
    if not isinstance(config, model):
        raise SourceError(f"a {model.__name__} was expected, not kind {config.kind!r}")
    return config


# Each kind's module is imported when a source of that kind is made: picamera2, pyserial,
# sounddevice and soundfile are optional, and the modules they live in import them only on open().


def _opencv(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.opencv import FrameSource

    if not isinstance(config, VideoConfig | CameraConfig | StreamConfig):
        raise SourceError(f"OpenCV reads no source of kind {config.kind!r}")
    return FrameSource(config)


def _images(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.images import ImageFolderSource

    return ImageFolderSource(_expect(config, ImagesConfig))


def _sensor(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.sensors import SensorSource

    return SensorSource(_expect(config, SensorConfig), mqtt)


def _command(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.command import CommandSource

    return CommandSource(_expect(config, CommandConfig))


def _picamera(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.picamera import PicameraSource

    return PicameraSource(_expect(config, PicameraConfig))


def _audio(config: SourceConfig, mqtt: MqttConfig | None) -> Source:
    from agent.sources.audio import AudioSource

    return AudioSource(_expect(config, AudioConfig))


FACTORIES: dict[str, Factory] = {
    "video": _opencv,
    "camera": _opencv,
    "stream": _opencv,
    "images": _images,
    "sensor": _sensor,
    "command": _command,
    "picamera": _picamera,
    "audio": _audio,
}


def make_source(config: SourceConfig, mqtt: MqttConfig | None = None) -> Source:
    """The source for ``config.kind``; ``mqtt``: the broker of an ``mqtt:`` sensor topic."""
    factory = FACTORIES.get(config.kind)
    if factory is None:
        raise SourceError(f"no source of kind {config.kind!r}")
    return factory(config, mqtt)
