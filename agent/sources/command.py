"""Frames from a capture process's standard output: ``rpicam-vid``, ``ffmpeg``, ``gst-launch-1.0``.

The process writes raw frames of a declared size and pixel format; the agent reads exactly one
frame's bytes at a time into a pooled buffer (the pipe is non-blocking, so a read takes whatever
is there and ``poll`` waits for more without holding up a stop). Like Frigate's ffmpeg readers,
the capture tool does the hardware-specific work — libcamera, V4L2, RTSP, NVMM — and the agent
only ever sees a pipe.

A process that exits, is killed or stops writing for ``STALL_S`` raises ``SourceError``; the
capture worker then reports a ``source`` event and starts it again with backoff. ``close``
terminates the whole process group (then kills it) and reaps it, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import cast

import numpy as np

from agent.config import CommandConfig
from agent.errors import SourceError
from agent.sources.base import Frame
from agent.sources.childlog import StderrDrain
from agent.sources.rawvideo import BufferPool, frame_bytes, shares_buffer, to_image

POLL_S = 0.2  # longest a read waits before looking at its stop event again
STALL_S = 15.0  # no whole frame for this long: the process is hung (an RTSP open can take 10 s)
TERM_S = 1.0  # SIGTERM, then this long, then SIGKILL: the agent's stop budget is 5 s in all
_PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")


class CommandSource:
    """``config.command``'s raw frames: ``config.width`` × ``config.height`` in
    ``config.pixel_format``, handed on as BGR (or gray) images. Live: a stale frame is dropped.

    Counts ``frames`` read and stderr lines not logged (``stderr_unlogged``), over every restart.
    """

    def __init__(self, config: CommandConfig):
        if not config.command or config.width is None or config.height is None:
            raise SourceError("a command source needs command, width and height")
        self.config = config
        self._argv = list(config.command)
        self._program = Path(self._argv[0]).name
        self._shape = (config.width, config.height)
        self._size = frame_bytes(config.pixel_format, config.width, config.height)
        # BGR and gray frames go on as views of their buffer: each needs its own. Converted
        # formats are copied by the conversion, so one buffer does.
        self._pool = BufferPool(self._size) if shares_buffer(config.pixel_format) else None
        self._raw = np.empty(self._size, np.uint8)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: io.RawIOBase | None = None
        self._stderr: StderrDrain | None = None
        self._poller = select.poll()
        self._index = 0
        self.frames = 0  # frames read since construction, over every restart
        self._unlogged_before = 0  # stderr lines not logged, of processes before this one

    @property
    def live(self) -> bool:
        return True

    def counters(self) -> dict[str, int]:
        unlogged = self._stderr.unlogged if self._stderr is not None else 0
        return {"frames": self.frames, "stderr_unlogged": self._unlogged_before + unlogged}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def name(self) -> str:
        return f"command source {self._program!r}"

    def open(self) -> None:
        self.close()
        try:
            # A session of its own: close() signals the whole group (a wrapper script's
            # children too), and a Ctrl-C meant for the agent does not hit the child first.
            proc = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise SourceError(
                f"{self.name}: {self._argv[0]!r} not found (install it, or give its full path)"
            ) from exc
        except PermissionError as exc:
            raise SourceError(f"{self.name}: {self._argv[0]!r} is not executable") from exc
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot start {self._argv[0]!r}: {exc}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        # bufsize=0: the raw pipe, whose readinto takes what is there without buffering it.
        self._proc, self._stdout = proc, cast(io.RawIOBase, proc.stdout)
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        _grow_pipe(fd, self._size)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        if self._stderr is not None:
            self._unlogged_before += self._stderr.unlogged
        self._stderr = StderrDrain(proc.stderr, self._program)
        self._stderr.start()
        self._index = 0

    def read(self, stop: threading.Event) -> Frame | None:
        """The next frame; None once ``stop`` is set or when the process ended cleanly."""
        if self._stdout is None:
            raise SourceError("source is not open")
        buffer = self._pool.take() if self._pool is not None else self._raw
        if not self._fill(buffer, stop):
            return None
        image = to_image(buffer, self.config.pixel_format, *self._shape)
        frame = Frame(image, self._index, time.time())
        self._index += 1
        self.frames += 1
        return frame

    def _fill(self, buffer: np.ndarray, stop: threading.Event) -> bool:
        """Read exactly one frame into ``buffer``; False when stopped or at a clean end."""
        assert self._stdout is not None
        view, got = memoryview(buffer), 0  # type: ignore[arg-type]
        started = time.monotonic()
        while got < self._size:
            # Wait first: a writer (ffmpeg writes 32 KiB at a time) is usually slower than the
            # reader, so reading first would mostly meet an empty pipe — one syscall wasted.
            if not self._poller.poll(POLL_S * 1000):
                if stop.is_set():
                    return False
                if time.monotonic() - started > STALL_S:
                    raise SourceError(f"{self.name}: no frame for {STALL_S:.0f} s{self._why()}")
                continue
            count = self._stdout.readinto(view[got:])
            if count == 0:  # end of the pipe: the process is gone or closed it
                return self._ended(got)
            got += count or 0  # None: woken without data after all
        return True

    def _ended(self, got: int) -> bool:
        assert self._proc is not None
        try:
            code = self._proc.wait(TERM_S)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{self.name} closed its output{self._why()}") from None
        if self._stderr is not None:
            self._stderr.join(TERM_S)  # its last words explain the exit
        if got:
            raise SourceError(
                f"{self.name} stopped mid-frame ({got} of {self._size} bytes): do width, "
                f"height and pixel_format match what it writes?{self._why()}"
            )
        if code == 0:
            return False
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with {code}"
        raise SourceError(f"{self.name} {how}{self._why()}")

    def _why(self) -> str:
        last = self._stderr.last if self._stderr is not None else None
        return f": {last}" if last else ""

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(TERM_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self._stderr is not None:
            self._stderr.join(TERM_S)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    # Only while the leader is unreaped: its pid, the group's id, cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _grow_pipe(fd: int, frame_size: int) -> None:
    """A pipe that holds a whole frame (up to the system's limit, 1 MiB by default): the writer
    puts a frame in with one write and the reader takes it with few reads."""
    try:
        limit = int(_PIPE_MAX.read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    with contextlib.suppress(OSError):  # the default 64 KiB still works, only more slowly
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(max(frame_size, 1 << 16), limit))
