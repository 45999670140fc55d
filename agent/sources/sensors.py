"""Numeric sensor samples grouped into windows: from a file, a FIFO, standard input, a serial port
or an MQTT topic.

Each window is a ``Frame`` whose image is a float32 array of shape (window, channels).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import deque
from typing import Any

import numpy as np

from agent.config import MqttConfig, SensorConfig
from agent.contract import PayloadError, parse_json
from agent.errors import SourceError
from agent.sources.base import Frame
from agent.sources.sensor_inputs import (
    FdInput,
    Input,
    MqttInput,
    SerialInput,
    Signal,
    open_path,
    plain_path,
)

log = logging.getLogger(__name__)


_CSV_SPLIT = re.compile(r"\s*,\s*|\s+")


def parse_sample(text: str, fmt: str, fields: tuple[str, ...] = ()) -> list[float] | None:
    """The numbers in one line or message, or None when it is not a sample.

    ``csv``: numbers separated by commas and/or whitespace. ``json``: a number, a list of
    numbers, or an object: its ``fields`` in that order, by default all its numeric values in
    sorted key order (JSON objects are unordered; producers may shuffle keys).
    """
    text = text.strip()
    if not text:
        return None
    values: list[Any]
    if fmt == "csv":
        try:
            values = [float(token) for token in _CSV_SPLIT.split(text)]
        except ValueError:
            return None
    else:
        try:
            data = parse_json(text)  # strict: no NaN, no lone surrogates, bounded depth
        except PayloadError:
            return None
        if isinstance(data, dict):
            if fields:
                if any(key not in data for key in fields):
                    return None
                values = [data[key] for key in fields]
            else:
                values = [data[key] for key in sorted(data) if _is_number(data[key])]
        elif isinstance(data, list):
            values = data
        else:
            values = [data]
        if not all(_is_number(v) for v in values):
            return None
    try:
        floats = [float(v) for v in values]
    except OverflowError:  # a JSON integer past float range
        return None
    if not floats or not all(math.isfinite(v) for v in floats):
        return None
    return floats


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class SensorSource:
    """Windows of ``config.window`` samples, a new one every ``config.hop`` samples.

    ``config.uri``: a file or FIFO path, ``-`` (standard input), ``serial://PATH`` (needs
    pyserial) or ``mqtt:TOPIC`` on the broker in ``mqtt`` (default: ``MqttConfig()``). A FIFO
    outlives its writers: when one closes, the next is awaited. Samples whose channel count
    differs from the first good sample's, or that do not parse or are not finite, are counted in
    ``garbage``; MQTT samples dropped because ``read()`` fell behind are counted in ``overflow``,
    messages dropped unread (too big, or they made the handler fail) in ``oversize``.
    A frame's ``index`` is the window number since ``open()``, ``captured_at`` the time its last
    sample arrived.
    """

    def __init__(self, config: SensorConfig, mqtt: MqttConfig | None = None):
        self.config = config
        self.mqtt = mqtt or MqttConfig()
        self.garbage = 0
        self._overflow_closed = 0  # MQTT overflow of inputs already closed
        self._oversize_closed = 0  # and messages they dropped unread
        self.channels: int | None = None  # fixed by the first good sample
        self._input: Input | None = None
        self._rows: deque[np.ndarray] = deque(maxlen=config.window)
        self._fresh = 0  # samples since the last window
        self._index = 0

    @property
    def name(self) -> str:
        return f"sensor source {self.config.uri!r}"

    @property
    def live(self) -> bool:
        """Never: every window is inferred, whatever the uri (a FIFO, a port and a topic too)."""
        return False

    @property
    def is_file(self) -> bool:
        """Whether ``uri`` is a regular file (a recording), not a FIFO, stdin, a port or a topic."""
        uri = self.config.uri
        return plain_path(uri) and os.path.isfile(uri)

    @property
    def overflow(self) -> int:
        live = self._input.overflow if isinstance(self._input, MqttInput) else 0
        return self._overflow_closed + live

    @property
    def oversize(self) -> int:
        """MQTT messages dropped unread for their size, or because they made the handler fail."""
        live = self._input.oversize if isinstance(self._input, MqttInput) else 0
        return self._oversize_closed + live

    def counters(self) -> dict[str, int]:
        return {"garbage": self.garbage, "overflow": self.overflow, "oversize": self.oversize}

    def open(self) -> None:
        self.close()
        uri = self.config.uri
        if uri == "-":
            self._input = FdInput(self.name, 0)
        elif uri.startswith("serial:"):
            path = uri.removeprefix("serial:")
            self._input = SerialInput(self.name, path.removeprefix("//"), self.config.baud)
        elif uri.startswith("mqtt:"):
            self._input = MqttInput(self.name, uri.removeprefix("mqtt:"), self.mqtt)
        else:
            self._input = open_path(self.name, uri, self.config.loop)
        self._rows.clear()
        self._fresh = 0
        self._index = 0

    def read(self, stop: threading.Event) -> Frame | None:
        """The next window; None at the end of a file (unless looping) or once ``stop`` is set."""
        if self._input is None:
            raise SourceError(f"{self.name} is not open")
        while not stop.is_set():
            record = self._input.next(stop)
            if record is Signal.END:
                return None
            if record is Signal.GAP:
                self._rows.clear()
                self._fresh = 0
                continue
            if isinstance(record, Signal):
                continue
            row = self._sample(record)
            if row is None:
                continue
            self._rows.append(row)
            self._fresh += 1
            if len(self._rows) == self.config.window and self._fresh >= self.config.hop:
                self._fresh = 0
                frame = Frame(np.stack(self._rows), self._index, self._input.arrived)
                self._index += 1
                return frame
        return None

    def close(self) -> None:
        if self._input is not None:
            if isinstance(self._input, MqttInput):
                self._overflow_closed += self._input.overflow
                self._oversize_closed += self._input.oversize
            self._input.close()
            self._input = None

    def _sample(self, record: bytes) -> np.ndarray | None:
        text = record.decode("utf-8", errors="replace")
        if not text.strip():
            return None  # blank lines are spacing, not garbage
        values = parse_sample(text, self.config.format, self.config.fields)
        with np.errstate(over="ignore"):  # out of float32 range becomes inf: garbage below
            row = None if values is None else np.asarray(values, dtype=np.float32)
        if row is None or not np.isfinite(row).all():
            self.garbage += 1
            return None
        if self.channels is None:
            self.channels = len(row)
        elif len(row) != self.channels:
            self.garbage += 1
            return None
        return row
