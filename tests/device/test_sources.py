"""Image folders and sensor windows (file, FIFO, stdin, serial via a pty, MQTT) as frame sources;
every kind through the registry: live or recorded, its counters, its own settings only."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent.config import ImagesConfig, MqttConfig, SensorConfig, SourceConfig, source_config
from agent.config.sources import SOURCE_KINDS, error_location
from agent.errors import SourceError
from agent.sources import FACTORIES, Frame, Source, make_source, sensor_inputs, sensors
from agent.sources.images import ImageFolderSource
from agent.sources.sensors import SensorSource, parse_sample
from pydantic import ValidationError
from source_reading import TIMEOUT, read_in_thread, rows


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def image(value: int) -> np.ndarray:
    img = np.zeros((8, 6, 3), np.uint8)
    img[..., 0] = value  # blue channel: BGR must come back as written
    return img


def read_all(source: ImageFolderSource | SensorSource, stop: threading.Event) -> list[Frame]:
    frames = []
    while (frame := source.read(stop)) is not None:
        frames.append(frame)
    return frames


# -- image folders -----------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for name, value in (("b.png", 20), ("a.png", 10), ("c.png", 30)):
        assert cv2.imwrite(str(root / name), image(value))
    (root / "bad.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


def test_image_folder_reads_sorted_skips_corrupt_and_ends(folder: Path, stop) -> None:
    source = ImageFolderSource(ImagesConfig(kind="images", uri=str(folder)))
    source.open()
    frames = read_all(source, stop)
    source.close()
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 30]
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (8, 6, 3) and frames[0].image[0, 0, 2] == 0
    assert source.skipped == 1
    assert source.is_file


def test_image_folder_loops_with_running_index(folder: Path, stop) -> None:
    source = ImageFolderSource(ImagesConfig(kind="images", uri=str(folder), loop=True))
    source.open()
    frames = [source.read(stop) for _ in range(7)]
    source.close()
    assert [int(f.image[0, 0, 0]) for f in frames if f] == [10, 20, 30, 10, 20, 30, 10]
    assert [f.index for f in frames if f] == list(range(7))
    assert source.skipped == 1  # counted once, not once per pass


def test_image_folder_watch_yields_new_files_and_honours_stop(folder: Path, stop) -> None:
    source = ImageFolderSource(ImagesConfig(kind="images", uri=str(folder), watch=True))
    source.open()
    try:
        assert [int(source.read(stop).image[0, 0, 0]) for _ in range(3)] == [10, 20, 30]
        pending = read_in_thread(source.read, stop)
        assert cv2.imwrite(str(folder / "d.png"), image(40))
        frame = pending.get(timeout=TIMEOUT)
        assert isinstance(frame, Frame)
        assert int(frame.image[0, 0, 0]) == 40 and frame.index == 3

        waiting = read_in_thread(source.read, stop)
        with pytest.raises(queue.Empty):
            waiting.get(timeout=0.5)  # nothing new: a watching read keeps waiting
        stop.set()
        assert waiting.get(timeout=TIMEOUT) is None
        assert source.skipped == 1  # the corrupt file, once it stopped changing
    finally:
        source.close()


def test_image_folder_missing_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match="nowhere"):
        ImageFolderSource(ImagesConfig(kind="images", uri=str(missing))).open()


# -- sensor parsing ------------------------------------------------------------------------------


def test_parse_sample_formats() -> None:
    assert parse_sample("1, 2 ,3", "csv") == [1.0, 2.0, 3.0]
    assert parse_sample("1 2\t3\r", "csv") == [1.0, 2.0, 3.0]
    assert parse_sample("1,,3", "csv") is None
    assert parse_sample("1,nan", "csv") is None
    assert parse_sample("[1, 2.5]", "json") == [1.0, 2.5]
    assert parse_sample("4", "json") == [4.0]
    assert parse_sample('{"z": 3, "a": 1, "t": "x", "ok": true}', "json") == [1.0, 3.0]
    assert parse_sample('{"z": 3, "a": 1}', "json", ("z", "a")) == [3.0, 1.0]
    assert parse_sample('{"z": 3}', "json", ("z", "a")) is None
    assert parse_sample('{"z": "3", "a": 1}', "json", ("z", "a")) is None
    assert parse_sample("[1, Infinity]", "json") is None
    assert parse_sample("[]", "json") is None


# -- sensor files --------------------------------------------------------------------------------


def sensor(uri: str | Path, **options: object) -> SensorSource:
    return SensorSource(SensorConfig(kind="sensor", uri=str(uri), **options))  # type: ignore[arg-type]


def test_csv_file_windows_with_hop(tmp_path: Path, stop) -> None:
    path = tmp_path / "samples.csv"
    path.write_text("".join(f"{i},{10 * i}\n" for i in range(10)))
    source = sensor(path, window=4, hop=2)
    source.open()
    assert source.is_file
    frames = read_all(source, stop)
    source.close()
    assert [f.index for f in frames] == [0, 1, 2, 3]
    for frame, start in zip(frames, (0, 2, 4, 6), strict=True):
        assert frame.image.dtype == np.float32 and frame.image.shape == (4, 2)
        assert rows(frame) == [[i, 10 * i] for i in range(start, start + 4)]
    assert frames[0].captured_at <= frames[-1].captured_at
    assert source.garbage == 0


def test_json_lines_with_fields(tmp_path: Path, stop) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(
        '{"t": "09:00", "x": 1, "y": 2, "z": 3}\n'
        '{"z": 6, "y": 5, "x": 4}\n'
        '{"x": 7, "y": 8}\n'  # no z: garbage
        '{"x": 9, "y": 10, "z": 11}'  # the last line needs no newline
    )
    source = sensor(path, format="json", fields=("z", "x"), window=3, hop=1)
    source.open()
    frames = read_all(source, stop)
    source.close()
    assert [rows(f) for f in frames] == [[[3, 1], [6, 4], [11, 9]]]
    assert source.garbage == 1


def test_garbage_lines_are_skipped_and_counted(tmp_path: Path, stop) -> None:
    path = tmp_path / "noisy.csv"
    path.write_text(
        "ax,ay\n"  # header: not numbers
        "1,2\n"
        "\n"  # blank: spacing, not garbage
        "3,4,5\n"  # wrong channel count
        "nan,1\n"
        "inf,1\n"
        "1e39,1\n"  # finite as float64, not as float32
        "\xff\xfe,1\n"
        "5,6\n"
    )
    source = sensor(path, window=2, hop=2)
    source.open()
    frames = read_all(source, stop)
    source.close()
    assert [rows(f) for f in frames] == [[[1, 2], [5, 6]]]
    assert source.garbage == 6
    assert source.channels == 2


def test_file_loop_starts_again_without_spanning_the_seam(tmp_path: Path, stop) -> None:
    path = tmp_path / "short.csv"
    path.write_text("0\n1\n2\n")
    source = sensor(path, window=2, hop=2, loop=True)
    source.open()
    frames = [source.read(stop) for _ in range(3)]
    source.close()
    assert [rows(f) for f in frames if f] == [[[0], [1]], [[0], [1]], [[0], [1]]]
    assert [f.index for f in frames if f] == [0, 1, 2]


def test_missing_or_wrong_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"sensor source '.*missing\.csv'"):
        sensor(tmp_path / "missing.csv").open()
    with pytest.raises(SourceError, match="not a file or FIFO"):
        sensor(tmp_path).open()


def test_read_before_open_raises(tmp_path: Path, stop) -> None:
    with pytest.raises(SourceError, match="not open"):
        sensor(tmp_path / "x.csv").read(stop)


# -- FIFO and standard input ---------------------------------------------------------------------


def test_fifo_outlives_its_writers(tmp_path: Path, stop) -> None:
    fifo = tmp_path / "samples.fifo"
    os.mkfifo(fifo)
    source = sensor(fifo, window=3, hop=3)
    source.open()  # no writer yet: must not block
    assert not source.is_file

    def write(lines: list[str]) -> None:
        with open(fifo, "w") as f:
            f.writelines(lines)

    def writers() -> None:
        write([f"{i},{-i}\n" for i in range(3)])
        write([f"{i},{-i}\n" for i in range(3, 6)])

    writer = threading.Thread(target=writers, daemon=True)
    writer.start()
    try:
        first = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        second = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(first, Frame) and isinstance(second, Frame)
        assert rows(first) == [[i, -i] for i in range(3)]
        assert rows(second) == [[i, -i] for i in range(3, 6)]
        writer.join(TIMEOUT)
        assert not writer.is_alive()

        waiting = read_in_thread(source.read, stop)  # all writers gone: wait, do not end
        with pytest.raises(queue.Empty):
            waiting.get(timeout=0.5)
        stop.set()
        assert waiting.get(timeout=TIMEOUT) is None
    finally:
        source.close()


def test_fifo_removed_while_waiting_raises(tmp_path: Path, stop) -> None:
    fifo = tmp_path / "gone.fifo"
    os.mkfifo(fifo)
    source = sensor(fifo)
    source.open()
    try:
        fifo.unlink()
        result = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(result, SourceError) and "gone.fifo" in str(result)
    finally:
        source.close()


STDIN_READER = """
import threading
from agent.config import SensorConfig
from agent.sources.sensors import SensorSource
source = SensorSource(SensorConfig(kind="sensor", uri="-", window=2, hop=1))
source.open()
stop = threading.Event()
while (frame := source.read(stop)) is not None:
    print(frame.index, frame.image.tolist(), flush=True)
print("garbage", source.garbage)
source.close()
"""


def test_standard_input() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STDIN_READER],
        input="1 2\n3 4\noops\n5 6",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "0 [[1.0, 2.0], [3.0, 4.0]]",
        "1 [[3.0, 4.0], [5.0, 6.0]]",
        "garbage 1",
    ]


# -- serial, over a pseudo-terminal --------------------------------------------------------------


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the master end for the test, the slave's path for the source."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # the test may have closed it
            os.close(fd)


def test_serial_port_lines_and_unplug(pty: tuple[int, str], stop) -> None:
    # pyserial comes with the dev extra, so the serial path is always exercised here.
    master, path = pty
    source = sensor(f"serial://{path}", window=2, hop=2, baud=9600)
    source.open()
    try:
        assert not source.is_file
        os.write(master, b"3.5,-1\n")  # joined mid-line: dropped up to the first newline
        os.write(master, b"1.5,2\r\n3,4\r\n5,6\r\nbad\r\n")
        first = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(first, Frame) and rows(first) == [[1.5, 2], [3, 4]]
        os.write(master, b"7,8\n")
        second = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(second, Frame) and rows(second) == [[5, 6], [7, 8]]
        assert source.garbage == 1

        os.close(master)  # unplugged
        error = read_in_thread(source.read, stop).get(timeout=TIMEOUT)
        assert isinstance(error, SourceError) and path in str(error)
    finally:
        source.close()


def test_serial_without_pyserial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "serial", None)  # import serial -> ImportError
    with pytest.raises(SourceError, match="pip install pyserial"):
        sensor("serial:///dev/ttyUSB0").open()


def test_serial_missing_port_is_named(tmp_path: Path) -> None:
    # pyserial comes with the dev extra, so the serial path is always exercised here.
    with pytest.raises(SourceError, match="ttyNOPE"):
        sensor(f"serial://{tmp_path}/ttyNOPE").open()


# -- MQTT ----------------------------------------------------------------------------------------


# -- every kind: the registry, live or recorded, counters, settings ------------------------------


def every_kind(tmp_path: Path) -> dict[str, SourceConfig]:
    """A valid config of each kind (nothing is opened)."""
    return {
        "video": source_config(kind="video", uri=str(tmp_path / "clip.avi")),
        "camera": source_config(kind="camera", uri="0", width=64, height=48, fps=5),
        "stream": source_config(kind="stream", uri="rtsp://192.0.2.1/stream"),
        "images": source_config(kind="images", uri=str(tmp_path), watch=True),
        "sensor": source_config(kind="sensor", uri="-", window=4, hop=2),
        "command": source_config(kind="command", command="cat frames.raw", width=4, height=2),
        "picamera": source_config(kind="picamera"),
        "audio": source_config(kind="audio"),
    }


def test_every_kind_has_a_factory_whose_source_satisfies_the_protocol(tmp_path: Path) -> None:
    configs = every_kind(tmp_path)
    assert set(FACTORIES) == set(SOURCE_KINDS) == set(configs)
    for kind, config in configs.items():
        source = make_source(config, MqttConfig())
        assert isinstance(source, Source), kind
        assert source.config is config and source.config.kind == kind
        counters = source.counters()
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in counters.items()), kind


@pytest.mark.parametrize(
    ("settings", "live"),
    [
        ({"kind": "video", "uri": "clip.avi"}, True),  # played in real time
        ({"kind": "video", "uri": "clip.avi", "realtime": False}, False),
        ({"uri": "clip.avi", "loop": True}, True),  # no kind: a video
        ({"kind": "camera", "uri": "/dev/video0"}, True),
        ({"kind": "stream", "uri": "rtsp://192.0.2.1/s"}, True),
        ({"kind": "images", "uri": "photos"}, False),
        ({"kind": "images", "uri": "photos", "watch": True}, False),
        ({"kind": "sensor", "uri": "samples.csv"}, False),
        ({"kind": "sensor", "uri": "-"}, False),
        ({"kind": "sensor", "uri": "serial:///dev/ttyUSB0"}, False),
        ({"kind": "sensor", "uri": "mqtt:plant/line1"}, False),
        ({"kind": "command", "command": ["cat"], "width": 2, "height": 2}, True),
        ({"kind": "picamera", "uri": "1"}, True),
        ({"kind": "audio"}, True),  # the default microphone
        ({"kind": "audio", "command": ["arecord", "-t", "raw"]}, True),
        ({"kind": "audio", "uri": "talk.wav"}, True),  # played in real time
        ({"kind": "audio", "uri": "talk.wav", "realtime": False}, False),
    ],
)
def test_live_or_recorded_by_kind(settings: dict[str, object], live: bool) -> None:
    # What the daemon decided before sources said it: images, sensors and a video read as fast
    # as inference wait for it; everything else drops a stale frame.
    source = make_source(source_config(**settings))
    assert source.live is live


def test_image_folder_counts_skipped_files(folder: Path, stop) -> None:
    source = make_source(source_config(kind="images", uri=str(folder)))
    assert source.counters() == {"skipped": 0}
    source.open()
    while source.read(stop) is not None:
        pass
    source.close()
    assert source.counters() == {"skipped": 1}


def test_sensor_counts_garbage(tmp_path: Path, stop) -> None:
    path = tmp_path / "noisy.csv"
    path.write_text("1,2\nnot a sample\n3,4,5\n5,6\n")
    source = make_source(source_config(kind="sensor", uri=str(path), window=2, hop=2))
    source.open()
    while source.read(stop) is not None:
        pass
    source.close()
    assert source.counters() == {"garbage": 2, "overflow": 0, "oversize": 0}


class CountingTopic:
    """An ``mqtt:`` input that has dropped messages, in place of a broker's."""

    def __init__(self, name: str, topic: str, config: MqttConfig):
        self.arrived, self.overflow, self.oversize = 0.0, 3, 2

    def next(self, stop: threading.Event) -> sensor_inputs.Record:
        return sensor_inputs.Signal.END

    def close(self) -> None:
        pass


def test_sensor_counts_mqtt_drops_over_reconnects(monkeypatch: pytest.MonkeyPatch, stop) -> None:
    monkeypatch.setattr(sensors, "MqttInput", CountingTopic)
    source = make_source(source_config(kind="sensor", uri="mqtt:plant/line1"))
    for _ in range(2):  # opened twice: what the first input dropped is kept
        source.open()
        assert source.read(stop) is None
    assert source.counters() == {"garbage": 0, "overflow": 6, "oversize": 4}
    source.close()
    assert source.counters() == {"garbage": 0, "overflow": 6, "oversize": 4}


def test_command_counts_frames_and_unlogged_stderr_over_restarts(stop) -> None:
    # 60 stderr lines at once: the first 50 are logged, the rest only counted. Then one 2x2 gray
    # frame, and a clean exit.
    script = "for i in $(seq 60); do echo line $i >&2; done; printf abcd"
    config = source_config(
        kind="command", command=["sh", "-c", script], width=2, height=2, pixel_format="gray"
    )
    source = make_source(config)
    assert source.counters() == {"frames": 0, "stderr_unlogged": 0}
    unlogged = []
    for _ in range(2):  # a restart, as the capture worker does
        source.open()
        frame = source.read(stop)
        assert frame is not None and frame.image.tolist() == [[97, 98], [99, 100]]
        assert source.read(stop) is None  # exited with 0: its stderr is drained by now
        unlogged.append(source.counters()["stderr_unlogged"])
        source.close()
    assert source.counters()["frames"] == 2
    assert 0 < unlogged[0] < unlogged[1] == source.counters()["stderr_unlogged"]


def test_opencv_and_picamera_sources_keep_no_counters(tmp_path: Path) -> None:
    for kind in ("video", "camera", "stream", "picamera"):
        assert make_source(every_kind(tmp_path)[kind]).counters() == {}


@pytest.mark.parametrize(
    ("settings", "field", "owners"),
    [
        ({"kind": "camera", "uri": "0", "window": 4}, "window", "apply to kind = 'sensor' only"),
        ({"uri": "clip.avi", "command": ["x"]}, "command", "to kind = 'command' or 'audio' only"),
        ({"kind": "video", "uri": "v", "hop": 2}, "hop", "apply to kind = 'sensor' only"),
        ({"kind": "images", "uri": "p", "fields": ["x"]}, "fields", "kind = 'sensor' only"),
        ({"kind": "sensor", "uri": "-", "pixel_format": "gray"}, "pixel_format", "'command' only"),
    ],
)
def test_a_setting_of_another_kind_is_refused_in_one_line(
    settings: dict[str, object], field: str, owners: str
) -> None:
    with pytest.raises(ValidationError) as info:
        source_config(**settings)
    (error,) = info.value.errors()
    kind = settings.get("kind", "video")
    assert f"{field} is not a setting of kind = {kind!r}" in error["msg"]
    assert owners in error["msg"] and "\n" not in error["msg"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"kind": "images", "uri": "p", "realtime": False}, "realtime"),
        ({"kind": "video", "uri": "v", "fps": 5}, "fps"),
        ({"kind": "sensor", "uri": "-", "width": 4}, "width"),
        ({"kind": "stream", "uri": "s", "loop": True}, "loop"),
        ({"kind": "camera", "uri": "0", "window": 1}, "window"),
    ],
)
def test_a_setting_that_always_did_nothing_for_a_kind_is_ignored_with_a_warning(
    settings: dict[str, object], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Configs written before the per-kind tables keep loading: an agent upgraded in the field
    must still start on the config it has."""
    with caplog.at_level(logging.WARNING, logger="agent.config.sources"):
        config = source_config(**settings)
    assert not hasattr(config, field)
    assert f"source.{field} does nothing for kind = {config.kind!r}; ignored" in caplog.text


def test_source_errors_are_named_as_the_toml_names_them() -> None:
    def keys(settings: dict[str, object]) -> list[str]:
        with pytest.raises(ValidationError) as info:
            source_config(**settings)
        return [".".join(map(str, error_location({**e, "loc": ("source", *e["loc"])})))
                for e in info.value.errors()]  # fmt: skip

    assert keys({"kind": "webcam", "uri": "x"}) == ["source.kind"]
    assert keys({"kind": "video"}) == ["source.uri"]
    assert keys({"kind": "sensor", "uri": "-", "baud": 0}) == ["source.baud"]
    assert keys({"kind": "images", "uri": "p", "colour": True}) == ["source.colour"]
