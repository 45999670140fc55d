"""Where sensor samples come from, one record (a line or a message) at a time: a file, a FIFO,
standard input, a serial port or an MQTT topic. ``agent.sources.sensors`` groups records into
windows."""

from __future__ import annotations

import enum
import io
import logging
import os
import secrets
import select
import stat
import threading
import time
from collections import deque
from typing import Protocol

import paho.mqtt.client as mqtt

from agent.comms.bounded import DropOldest
from agent.comms.guard import Boundary
from agent.comms.link import configure_client
from agent.config import MqttConfig
from agent.errors import SourceError

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


class Signal(enum.Enum):
    IDLE = "idle"  # nothing arrived within POLL_S
    END = "end"  # no more data will come
    GAP = "gap"  # the data starts over: a window must not span it


Record = bytes | Signal


class Input(Protocol):
    arrived: float  # unix time the last record returned by next() came in

    def next(self, stop: threading.Event) -> Record: ...

    def close(self) -> None: ...


def plain_path(uri: str) -> bool:
    return uri != "-" and not uri.startswith(("serial:", "mqtt:"))


def open_path(name: str, path: str, loop: bool) -> Input:
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
                return Signal.IDLE
            chunk = self._chunk()
            if isinstance(chunk, Signal):
                if chunk is Signal.IDLE:
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

    def _chunk(self) -> bytes | Signal:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FdInput(_LineInput):
    """A file descriptor that may block (standard input, a pipe): select, then read."""

    def __init__(self, name: str, fd: int, owned: bool = False):
        super().__init__(name)
        self._fd: int | None = fd
        self._owned = owned

    def _chunk(self) -> bytes | Signal:
        fd = self._fd
        if fd is None:
            return Signal.END
        try:
            readable, _, _ = select.select([fd], [], [], POLL_S)
            if not readable:
                return self._idle()
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return Signal.IDLE
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc
        return data or self._eof()

    def _idle(self) -> Signal:
        return Signal.IDLE

    def _eof(self) -> bytes | Signal:
        return Signal.END

    def close(self) -> None:
        if self._fd is not None and self._owned:
            os.close(self._fd)
        self._fd = None


class _FifoInput(FdInput):
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

    def _idle(self) -> Signal:
        try:
            current = os.stat(self._path)
        except OSError as exc:
            raise SourceError(f"{self.name}: FIFO gone: {exc.strerror}") from exc
        if self._fd is not None and current.st_ino != os.fstat(self._fd).st_ino:
            self._reopen()  # replaced by a new FIFO of the same name
        return Signal.IDLE

    def _eof(self) -> bytes | Signal:
        self._reopen()
        return Signal.IDLE


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

    def _chunk(self) -> bytes | Signal:
        if self._file is None:
            return Signal.END
        try:
            data = self._file.read(CHUNK)
        except OSError as exc:
            raise SourceError(f"{self.name}: {exc.strerror}") from exc
        if data:
            self._read_any = True
            return data
        if not (self._loop and self._read_any):
            return Signal.END
        self._file.close()
        self._file = None
        self._file = self._open()  # by name again: a vanished file is an error
        self._read_any = False
        return Signal.GAP

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SerialInput(_LineInput):
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

    def _chunk(self) -> bytes | Signal:
        try:
            data: bytes = self._port.read(max(1, self._port.in_waiting))
        except self._errors as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        if not data:
            return Signal.IDLE
        if not self._synced:
            cut = data.find(b"\n")
            if cut < 0:
                return Signal.IDLE
            self._synced = True
            data = data[cut + 1 :]
        return data

    def close(self) -> None:
        self._port.close()


class MqttInput:
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
            return Signal.IDLE
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
