"""The command source on real ffmpeg processes: pixel formats decoded to the right image, a video
file's frames in order, a process that dies restarted, one that does not exist named, and close()
leaving no process behind. Picamera2 is absent here: its kind is named as missing."""

from __future__ import annotations

import logging
import os
import queue
import select
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import cv2
import numpy as np
import pytest
from agent.config import CommandConfig, PicameraConfig
from agent.errors import SourceError
from agent.inference.pipeline import CaptureWorker, FrameSlot
from agent.sources import Frame, command, make_source, picamera
from agent.sources.command import CommandSource
from agent.sources.picamera import PicameraSource

TIMEOUT = 20.0  # generous: the suite may share two cores with ffmpeg and ONNX Runtime
FFMPEG = ["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error"]
# Solid blocks aligned to 16 pixels, so 4:2:0 chroma subsampling averages nothing away.
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255), (0, 0, 0), (40, 120, 200),
           (200, 30, 90), (128, 128, 128), (10, 250, 130), (90, 60, 30), (255, 255, 0),
           (0, 255, 255)]  # fmt: skip
FFMPEG_FORMAT = {"yuv420": "yuv420p", "i420": "yuv420p"}  # the agent's names -> ffmpeg's


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def source(argv: list[str], width: int, height: int, fmt: str = "bgr24") -> CommandSource:
    return CommandSource(
        CommandConfig(kind="command", command=argv, width=width, height=height, pixel_format=fmt)
    )  # type: ignore[arg-type]


def rawvideo(fmt: str) -> list[str]:
    return ["-f", "rawvideo", "-pix_fmt", FFMPEG_FORMAT.get(fmt, fmt), "-"]


def blocks() -> np.ndarray:
    image = np.zeros((48, 64, 3), np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, 48, 16) for x in range(0, 64, 16)):
        image[y : y + 16, x : x + 16] = COLOURS[k]
    return image


def read_frames(src: CommandSource, stop: threading.Event, count: int) -> list[Frame]:
    src.open()
    try:
        frames = [src.read(stop) for _ in range(count)]
    finally:
        src.close()
    assert all(isinstance(f, Frame) for f in frames)
    return frames  # type: ignore[return-value]


@pytest.mark.parametrize("fmt", ["bgr24", "rgb24", "gray", "yuv420", "i420", "nv12"])
def test_pixel_formats_decode_to_the_known_image(tmp_path: Path, stop, fmt: str) -> None:
    known = blocks()
    png = tmp_path / "blocks.png"
    assert cv2.imwrite(str(png), known)
    argv = [*FFMPEG, "-i", str(png), "-frames:v", "1", *rawvideo(fmt)]
    (frame,) = read_frames(source(argv, 64, 48, fmt), stop, 1)
    expected = cv2.cvtColor(known, cv2.COLOR_BGR2GRAY) if fmt == "gray" else known
    assert frame.image.shape == expected.shape and frame.image.dtype == np.uint8
    error = np.abs(frame.image.astype(int) - expected)
    # 8-bit RGB through limited-range YUV and back rounds by a few levels; a swapped chroma
    # plane or a wrong layout is off by a hundred.
    assert error.max() <= (0 if fmt in ("bgr24", "rgb24", "gray") else 16), error.max()
    assert error.mean() <= 2


@pytest.mark.parametrize("fmt", ["gray", "yuv420", "nv12"])
def test_testsrc_in_every_format_matches_its_bgr24_frame(stop, fmt: str) -> None:
    def grab(pixel_format: str) -> np.ndarray:
        argv = [*FFMPEG, "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-frames:v", "1",
                *rawvideo(pixel_format)]  # fmt: skip
        return read_frames(source(argv, 320, 240, pixel_format), stop, 1)[0].image

    reference = grab("bgr24")
    if fmt == "gray":
        reference = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY)
    # testsrc's sharp colour edges lose chroma detail in 4:2:0; on average it is a few levels.
    assert np.abs(grab(fmt).astype(int) - reference).mean() < 3


def test_a_written_video_is_read_frame_by_frame_in_order(tmp_path: Path, stop) -> None:
    video = tmp_path / "colours.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened()
    for colour in COLOURS:
        writer.write(np.full((48, 64, 3), colour, np.uint8))
    writer.release()
    src = source([*FFMPEG, "-i", str(video), *rawvideo("bgr24")], 64, 48)
    src.open()
    try:
        frames = [src.read(stop) for _ in COLOURS]
        assert src.read(stop) is None  # ffmpeg reached the end and exited 0: a clean end
    finally:
        src.close()
    for i, (frame, colour) in enumerate(zip(frames, COLOURS, strict=True)):
        assert frame is not None and frame.index == i
        assert np.abs(frame.image.astype(int) - colour).mean() < 4, (i, frame.image[0, 0])


def test_frames_held_downstream_are_not_overwritten(stop) -> None:
    """BGR frames are views of pooled buffers: one still held must keep its pixels."""
    argv = [*FFMPEG, "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-frames:v", "6",
            *rawvideo("bgr24")]  # fmt: skip
    frames = read_frames(source(argv, 64, 48), stop, 6)
    copies = [f.image.copy() for f in frames]
    assert all(np.array_equal(f.image, c) for f, c in zip(frames, copies, strict=True))
    assert not np.array_equal(copies[0], copies[5])  # testsrc moves: the frames differ


def test_wrong_frame_size_is_named(stop) -> None:
    argv = [*FFMPEG, "-f", "lavfi", "-i", "color=c=gray:size=32x16", "-frames:v", "3",
            *rawvideo("gray")]  # fmt: skip
    src = source(argv, 30, 16, "gray")  # 3 × 512 bytes is not a whole number of 480-byte frames
    src.open()
    try:
        with pytest.raises(SourceError, match=r"mid-frame \(96 of 480 bytes\).*width, height"):
            while src.read(stop) is not None:
                pass
    finally:
        src.close()


def test_a_missing_program_is_a_clear_source_error() -> None:
    with pytest.raises(SourceError, match=r"'no-such-capture-tool' not found"):
        source(["no-such-capture-tool", "--fast"], 64, 48).open()


def test_stderr_is_logged_and_explains_the_exit(caplog: pytest.LogCaptureFixture, stop) -> None:
    src = source(["sh", "-c", "echo starting >&2; echo camera unplugged >&2; exit 3"], 64, 48)
    with caplog.at_level(logging.INFO, logger="agent.sources.childlog"):
        src.open()
        try:
            with pytest.raises(SourceError, match=r"'sh' exited with 3: camera unplugged$"):
                src.read(stop)
        finally:
            src.close()
    assert "sh: starting" in caplog.text and "sh: camera unplugged" in caplog.text


def test_a_read_waiting_on_a_silent_process_stops_or_gives_up(
    monkeypatch: pytest.MonkeyPatch, stop
) -> None:
    src = source(["sleep", "300"], 64, 48)
    src.open()
    try:
        pending: queue.Queue[object] = queue.Queue()
        threading.Thread(target=lambda: pending.put(src.read(stop)), daemon=True).start()
        with pytest.raises(queue.Empty):
            pending.get(timeout=0.5)  # nothing written: the read keeps waiting
        stop.set()
        assert pending.get(timeout=TIMEOUT) is None
        monkeypatch.setattr(command, "STALL_S", 0.3)
        with pytest.raises(SourceError, match=r"'sleep': no frame for 0 s"):
            src.read(threading.Event())
    finally:
        src.close()


def wait_gone(pid: int) -> None:
    """Wait (on a pidfd: no polling) until a process, child or not, has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], TIMEOUT)[0], f"process {pid} still running"
    finally:
        os.close(fd)


def test_close_ends_the_whole_process_group_and_reaps_it(tmp_path: Path, stop) -> None:
    pidfile = tmp_path / "helper.pid"
    script = (
        f"sleep 300 & echo $! > {pidfile}; "
        f"exec {' '.join(FFMPEG)} -re -f lavfi -i testsrc=size=64x48:rate=30 -f rawvideo "
        "-pix_fmt gray -"
    )
    src = source(["sh", "-c", script], 64, 48, "gray")
    src.open()
    assert src.read(stop) is not None
    pid, helper = src.pid, int(pidfile.read_text())
    assert pid is not None
    src.close()
    assert not Path(f"/proc/{pid}").exists(), "the child is a zombie or still running"
    wait_gone(helper)  # the script's own child, signalled with its group


# -- restarts through the capture worker ------------------------------------------------------


class Worker:
    """A CaptureWorker on a live slot, its source states in a queue."""

    def __init__(self, src: CommandSource):
        self.source, self.stop = src, threading.Event()
        self.slot = FrameSlot(block=False)
        self.states: queue.Queue[tuple[str, str]] = queue.Queue()
        self.thread = CaptureWorker(src, self.slot, self.stop, lambda s, d: self.states.put((s, d)))  # type: ignore[arg-type]

    def state(self) -> tuple[str, str]:
        return self.states.get(timeout=TIMEOUT)

    def frame(self) -> Frame:
        frame = self.slot.take(TIMEOUT)
        assert frame is not None, "no frame"
        return frame


@pytest.fixture
def worker_for() -> Iterator:  # type: ignore[type-arg]
    started: list[Worker] = []

    def make(argv: list[str], fmt: str = "gray") -> Worker:
        worker = Worker(source(argv, 64, 48, fmt))
        worker.thread.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop.set()
        worker.thread.join(TIMEOUT)
        assert not worker.thread.is_alive()


LIVE = [*FFMPEG, "-re", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", *rawvideo("gray")]


def test_a_killed_process_is_reported_and_restarted(worker_for) -> None:  # type: ignore[no-untyped-def]
    worker = worker_for(LIVE)
    assert worker.state()[0] == "open"
    worker.frame()
    first = worker.source.pid
    assert first is not None
    os.kill(first, 9)
    state, detail = worker.state()
    assert state == "failed" and "was killed by SIGKILL" in detail and "reopening in 1 s" in detail
    assert worker.state()[0] == "open"
    assert worker.source.pid not in (None, first)
    before = worker.source.frames
    worker.frame()
    worker.frame()
    assert worker.source.frames > before  # frames resumed from the new process


def test_a_process_that_exits_with_an_error_is_restarted_with_backoff(worker_for) -> None:  # type: ignore[no-untyped-def]
    script = f"{' '.join(FFMPEG)} -f lavfi -i testsrc=size=64x48 -frames:v 2 -f rawvideo " \
             "-pix_fmt gray -; echo 'lost the camera' >&2; exit 7"  # fmt: skip
    worker = worker_for(["sh", "-c", script])
    states = [worker.state() for _ in range(4)]
    assert [s for s, _ in states] == ["open", "failed", "open", "failed"]
    assert "exited with 7: lost the camera; reopening in 1 s" in states[1][1]
    assert "reopening in 2 s" in states[3][1]
    assert worker.source.frames >= 4  # two frames from each run


def test_a_missing_program_is_reported_and_retried(worker_for) -> None:  # type: ignore[no-untyped-def]
    worker = worker_for(["no-such-capture-tool"])
    first, second = worker.state(), worker.state()
    assert first[0] == second[0] == "failed"
    assert "'no-such-capture-tool' not found" in first[1] and "reopening in 1 s" in first[1]
    assert "reopening in 2 s" in second[1]


# -- picamera -----------------------------------------------------------------------------------


def test_picamera_without_picamera2_names_the_package_and_the_alternative() -> None:
    src = make_source(PicameraConfig(kind="picamera"))
    assert isinstance(src, PicameraSource) and src.config.uri == "0"
    with pytest.raises(SourceError) as info:
        src.open()
    message = str(info.value)
    assert "python3-picamera2" in message and "rpicam-vid" in message
    assert "--system-site-packages" in message


class StandInCamera:
    """Picamera2's calls as its documentation gives them (no camera module here): the
    configuration asked for, ``capture_array(wait=False)`` and ``wait(job, timeout)``."""

    made: ClassVar[list[StandInCamera]] = []

    def __init__(self, number: int):
        self.number, self.frames, self.config, self.started, self.closed = number, 2, None, 0, 0
        StandInCamera.made.append(self)

    def create_video_configuration(self, main: dict, controls: dict) -> dict:  # type: ignore[type-arg]
        return {"main": main, "controls": controls}

    def configure(self, config: dict) -> None:  # type: ignore[type-arg]
        self.config = config

    def start(self) -> None:
        self.started += 1

    def capture_array(self, name: str, wait: bool) -> str:
        assert name == "main" and wait is False
        return "job"

    def wait(self, job: str, timeout: float) -> np.ndarray:
        if self.frames == 0:
            raise TimeoutError  # a camera that stopped delivering
        self.frames -= 1
        return np.full((48, 64, 4), self.frames, np.uint8)  # XRGB-style padding channel

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_picamera_reads_bgr_frames_and_gives_up_on_a_silent_camera(
    monkeypatch: pytest.MonkeyPatch, stop
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", SimpleNamespace(Picamera2=StandInCamera))
    monkeypatch.setattr(picamera, "STALL_S", 0.3)
    src = PicameraSource(PicameraConfig(kind="picamera", uri="1", width=64, height=48, fps=10))
    src.open()
    camera = StandInCamera.made[-1]
    assert camera.number == 1 and camera.started == 1
    assert camera.config == {"main": {"size": (64, 48), "format": "RGB888"},
                             "controls": {"FrameRate": 10}}  # fmt: skip
    frames = [src.read(stop), src.read(stop)]
    assert [f.index for f in frames if f] == [0, 1]
    assert all(f is not None and f.image.shape == (48, 64, 3) for f in frames)
    with pytest.raises(SourceError, match="picamera 1: no frame for 0 s"):
        src.read(stop)
    stop.set()
    assert src.read(stop) is None  # stopping wins over waiting
    src.close()
    assert camera.closed == 1
