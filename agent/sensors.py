"""Numeric sensor samples grouped into windows: from a file, a FIFO, standard input, a serial port
or an MQTT topic.

Each window is a ``Frame`` whose image is a float32 array of shape (window, channels).
"""

from __future__ import annotations

import enum
import io
import logging
import math
import os
import re
import secrets
import select
import stat
import threading
import time
from collections import deque
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt

from .bounded import DropOldest
from .config import MqttConfig, SourceConfig
from .contract import PayloadError, parse_json
from .errors import SourceError
from .guard import Boundary
from .link import configure_client
from .sources import Frame

log = logging.getLogger(__name__)

POLL_S = 0.2  # longest a read waits before looking at its stop event again
CHUNK = 65536
MAX_LINE = 64 * 1024  # a longer run without a newline is noise (e.g. a wrong baud rate)
MQTT_QUEUE = 4096  # samples held for read(); the oldest go first when it is full
# A sample message is a few numbers: a longer one is dropped in paho's callback, before it is
# queued, and the queue holds at most this many bytes, so a flood cannot fill memory.
MQTT_MAX_MESSAGE = 4096
MQTT_QUEUE_BYTES = 4 * 2**20
MQTT_OPEN_TIMEOUT_S = 10.0

_CSV_SPLIT = re.compile(r"\s*,\s*|\s+")


class _Signal(enum.Enum):
    IDLE = "idle"  # nothing arrived within POLL_S
    END = "end"  # no more data will come
    GAP = "gap"  # the data starts over: a window must not span it


Record = bytes | _Signal


class _Input(Protocol):
    arrived: float  # unix time the last record returned by next() came in

    def next(self, stop: threading.Event) -> Record: ...

    def close(self) -> None: ...


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
    if not values or not all(math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class SensorSource:
    """Windows of ``config.window`` samples, a new one every ``config.hop`` samples.

    ``config.uri``: a file or FIFO path, ``-`` (standard input), ``serial://PATH`` (needs
    pyserial) or ``mqtt:TOPIC`` on the broker in ``mqtt`` (default: ``MqttConfig()``). A FIFO
    outlives its writers: when one closes, the next is awaited. Samples whose channel count
    differs from the first good sample's, or that do not parse or are not finite, are counted in
    ``garbage``; MQTT samples dropped because ``read()`` fell behind are counted in ``overflow``.
    A frame's ``index`` is the window number since ``open()``, ``captured_at`` the time its last
    sample arrived.
    """

    def __init__(self, config: SourceConfig, mqtt: MqttConfig | None = None):
        self.config = config
        self.mqtt = mqtt or MqttConfig()
        self.garbage = 0
        self._overflow_closed = 0  # MQTT overflow of inputs already closed
        self.channels: int | None = None  # fixed by the first good sample
        self._input: _Input | None = None
        self._rows: deque[np.ndarray] = deque(maxlen=config.window)
        self._fresh = 0  # samples since the last window
        self._index = 0

    @property
    def name(self) -> str:
        return f"sensor source {self.config.uri!r}"

    @property
    def is_file(self) -> bool:
        """A recorded file: every window is inferred, none dropped."""
        uri = self.config.uri
        return _plain_path(uri) and os.path.isfile(uri)

    @property
    def overflow(self) -> int:
        live = self._input.overflow if isinstance(self._input, _MqttInput) else 0
        return self._overflow_closed + live

    def open(self) -> None:
        self.close()
        uri = self.config.uri
        if uri == "-":
            self._input = _FdInput(self.name, 0)
        elif uri.startswith("serial:"):
            path = uri.removeprefix("serial:")
            self._input = _SerialInput(self.name, path.removeprefix("//"), self.config.baud)
        elif uri.startswith("mqtt:"):
            self._input = _MqttInput(self.name, uri.removeprefix("mqtt:"), self.mqtt)
        else:
            self._input = _open_path(self.name, uri, self.config.loop)
        self._rows.clear()
        self._fresh = 0
        self._index = 0

    def read(self, stop: threading.Event) -> Frame | None:
        """The next window; None at the end of a file (unless looping) or once ``stop`` is set."""
        if self._input is None:
            raise SourceError(f"{self.name} is not open")
        while not stop.is_set():
            record = self._input.next(stop)
            if record is _Signal.END:
                return None
            if record is _Signal.GAP:
                self._rows.clear()
                self._fresh = 0
                continue
            if isinstance(record, _Signal):
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
            if isinstance(self._input, _MqttInput):
                self._overflow_closed += self._input.overflow
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


def _plain_path(uri: str) -> bool:
    return uri != "-" and not uri.startswith(("serial:", "mqtt:"))


def _open_path(name: str, path: str, loop: bool) -> _Input:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SourceError(f"{name}: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        return _FileInput(name, path, loop)
    if stat.S_ISFIFO(mode):
        return _FifoInput(name, path)
    raise SourceError(f"{name}: not a file or FIFO (serial ports: serial://{path})")


class _LineInput:
    """Cuts a byte stream into lines; subclasses fetch the bytes (``_chunk``)."""

    def __init__(self, name: str):
        self.name = name
        self.arrived = 0.0
        self._partial = bytearray()
        self._ready: deque[Record] = deque()

    def next(self, stop: threading.Event) -> Record:
        while not self._ready:
            if stop.is_set():
                return _Signal.IDLE
            chunk = self._chunk()
            if isinstance(chunk, _Signal):
                if chunk is _Signal.IDLE:
                    return chunk
                if self._partial:  # the last line needs no newline
                    self._ready.append(bytes(self._partial))
                    self._partial.clear()
                self._ready.append(chunk)
            else:
                self.arrived = time.time()
                self._split(chunk)
        return self._ready.popleft()

    def _split(self, chunk: bytes) -> None:
        self._partial += chunk
        *lines, rest = self._partial.split(b"\n")
        self._ready.extend(bytes(line) for line in lines)
        if len(rest) > MAX_LINE:
            # Dropped as one garbage line; its tail, up to the next newline, becomes another.
            self._ready.append(b"\x00")
            rest = bytearray()
        self._partial = bytearray(rest)

    def _chunk(self) -> bytes | _Signal:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _FdInput(_LineInput):
    """A file descriptor that may block (standard input, a pipe): select, then read."""

    def __init__(self, name: str, fd: int, owned: bool = False):
        super().__init__(name)
        self._fd: int | None = fd
        self._owned = owned

    def _chunk(self) -> bytes | _Signal:
        fd = self._fd
        if fd is None:
            return _Signal.END
        try:
            readable, _, _ = select.select([fd], [], [], POLL_S)
            if not readable:
                return self._idle()
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return _Signal.IDLE
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc
        return data or self._eof()

    def _idle(self) -> _Signal:
        return _Signal.IDLE

    def _eof(self) -> bytes | _Signal:
        return _Signal.END

    def close(self) -> None:
        if self._fd is not None and self._owned:
            os.close(self._fd)
        self._fd = None


class _FifoInput(_FdInput):
    """A named pipe: waits for a writer, and for the next one when a writer closes."""

    def __init__(self, name: str, path: str):
        self._path = path
        super().__init__(name, self._open(), owned=True)

    def _open(self) -> int:
        try:
            # Non-blocking, or open() itself would wait for a writer, deaf to stop.
            return os.open(self._path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc

    def _reopen(self) -> None:
        # The new end opens before the old one closes, so a writer never finds no reader.
        fd = self._open()
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def _idle(self) -> _Signal:
        try:
            current = os.stat(self._path)
        except OSError as exc:
            raise SourceError(f"{self.name}: FIFO gone: {exc.strerror}") from exc
        if self._fd is not None and current.st_ino != os.fstat(self._fd).st_ino:
            self._reopen()  # replaced by a new FIFO of the same name
        return _Signal.IDLE

    def _eof(self) -> bytes | _Signal:
        self._reopen()
        return _Signal.IDLE


class _FileInput(_LineInput):
    """A regular file, read to its end; with ``loop`` read again from the start."""

    def __init__(self, name: str, path: str, loop: bool):
        super().__init__(name)
        self._path, self._loop = path, loop
        self._file: io.FileIO | None = self._open()
        self._read_any = False

    def _open(self) -> io.FileIO:
        try:
            return io.FileIO(self._path, "r")
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc

    def _chunk(self) -> bytes | _Signal:
        if self._file is None:
            return _Signal.END
        try:
            data = self._file.read(CHUNK)
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc
        if data:
            self._read_any = True
            return data
        if not (self._loop and self._read_any):
            return _Signal.END
        self._file.close()
        self._file = None
        self._file = self._open()  # by name again: a vanished file is an error
        self._read_any = False
        return _Signal.GAP

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _SerialInput(_LineInput):
    """A serial port through pyserial. Bytes up to the first newline are dropped: a port is
    usually joined mid-line."""

    def __init__(self, name: str, path: str, baud: int):
        super().__init__(name)
        try:
            import serial  # optional: only serial sources need it
        except ImportError as exc:
            raise SourceError("serial sources need pyserial: pip install pyserial") from exc
        self._errors: tuple[type[BaseException], ...] = (OSError, serial.SerialException)
        try:
            self._port = serial.Serial(path, baudrate=baud, timeout=POLL_S)
            self._port.reset_input_buffer()
        except self._errors as exc:
            raise SourceError(f"{name}: cannot open: {exc}") from exc
        self._synced = False

    def _chunk(self) -> bytes | _Signal:
        try:
            data: bytes = self._port.read(max(1, self._port.in_waiting))
        except self._errors as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        if not data:
            return _Signal.IDLE
        if not self._synced:
            cut = data.find(b"\n")
            if cut < 0:
                return _Signal.IDLE
            self._synced = True
            data = data[cut + 1 :]
        return data

    def close(self) -> None:
        self._port.close()


class _MqttInput:
    """One sample per message on ``topic``, from a paho client of its own."""

    def __init__(self, name: str, topic: str, config: MqttConfig):
        if not topic:
            raise SourceError(f"{name}: no topic")
        self.name = name
        self.arrived = 0.0
        self.oversize = 0  # dropped unread for their size, or because they made the handler fail
        self._topic = topic
        self._queue: DropOldest[tuple[float, bytes]] = DropOldest(MQTT_QUEUE, MQTT_QUEUE_BYTES)
        self._boundary = Boundary(name, self._rejected)
        self._ready = threading.Event()
        self._refused: str | None = None
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgewise-sensor-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        configure_client(client, config)
        client.reconnect_delay_set(min_delay=1, max_delay=int(config.reconnect_max_delay))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._guarded_message
        self._client = client
        host, port = config.endpoint
        where = f"{host}:{port}"
        try:
            client.connect(host, port, config.keepalive)
        except OSError as exc:
            raise SourceError(f"{name}: cannot reach broker {where}: {exc}") from exc
        client.loop_start()
        # Waiting for the SUBACK means no message published after open() is missed.
        if not self._ready.wait(MQTT_OPEN_TIMEOUT_S) or self._refused:
            self.close()
            why = self._refused or f"no subscription after {MQTT_OPEN_TIMEOUT_S:.0f} s"
            raise SourceError(f"{name}: broker {where}: {why}")

    @property
    def overflow(self) -> int:
        """Samples dropped because read() fell behind."""
        return self._queue.dropped

    def next(self, stop: threading.Event) -> Record:
        item = self._queue.get(timeout=POLL_S)
        if item is None:
            return _Signal.IDLE
        self.arrived, payload = item
        return payload

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self._refused = f"connection refused: {reason_code}"
            self._ready.set()
            return
        client.subscribe(self._topic, qos=1)  # again on every reconnect

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        if any(code.is_failure for code in reason_codes):
            self._refused = f"subscription to {self._topic!r} refused"
        self._ready.set()

    def _guarded_message(
        self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage
    ) -> None:
        self._boundary.call(self._on_message, msg)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """On paho's thread, inside the boundary: drop what is too big, queue the rest."""
        if len(msg.payload) > MQTT_MAX_MESSAGE:
            self.oversize += 1
            return
        self._queue.put((time.time(), bytes(msg.payload)), len(msg.payload))

    def _rejected(self, reason: str, detail: dict[str, object]) -> None:
        """The boundary's sink: a sample message that made the handler fail is garbage."""
        self.oversize += 1
        log.warning("%s: message dropped: %s", self.name, reason)
