"""The console's Board (every device message folded, rows with health) and its Feed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from telemetry_samples import sample_message

from agent.contract import Topics
from compiler.console.board import Board, BoardOptions
from compiler.console.feed import Feed
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

TOPICS = Topics()
T0 = 1_000_000.0
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"
LIVE = ("fps", "p99_ms", "error_rate", "queued", "dropped", "cpu_percent", "rss_mb", "temp_c")


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


def _status(state: str = "online", boot: str = "boot-1", **extra: object) -> bytes:
    status: dict[str, object] = {
        "state": state, "device": "cam-1", "boot_id": boot, "groups": ["lobby", "north"],
        "model": {"name": "digits-cnn", "version": "1.0.0"},
        "deployment": {"state": "active", "version": "1.0.0"},
    }  # fmt: skip
    status.update(extra)
    return _json(status)


def _telemetry(at: float = T0, boot: str = "boot-1", **extra: object) -> bytes:
    return _json(sample_message(at=at, boot_id=boot, interval_s=10.0, error_ratio=0.02, **extra))


def _board(clock: Clock | None = None, **options: Any) -> tuple[Board, Clock]:
    clock = clock or Clock()
    return Board(TOPICS, BoardOptions(**options), clock=clock), clock


def _online(board: Board) -> None:
    board.take(TOPICS.status("cam-1"), _status(), retained=True)
    board.take(TOPICS.telemetry("cam-1"), _telemetry())


# --- folding --------------------------------------------------------------------------------


def test_status_and_telemetry_make_a_row() -> None:
    board, _ = _board()
    _online(board)
    assert board.rows() == {
        "cam-1": {
            "device": "cam-1", "health": "online", "state": "online", "seen_at": T0,
            "age_s": 0.0, "groups": ["lobby", "north"], "model": "digits-cnn 1.0.0",
            "deployment": "active", "probation": False, "shadow": None, "fps": 12.5,
            "p99_ms": 14.25, "error_rate": 0.02, "queued": 4.0, "dropped": 1.0,
            "cpu_percent": 37.5, "rss_mb": 84.934656, "temp_c": 55.2,
        }
    }  # fmt: skip


def test_events_replies_results_and_snapshot_fold_into_the_detail() -> None:
    board, clock = _board(keep_events=3, keep_results=4)
    _online(board)
    for n in range(5):
        board.take(TOPICS.events("cam-1"), _json({"type": "source", "n": n}))
    board.take(TOPICS.replies("cam-1"), _json({"id": "c1", "state": "accepted"}))
    board.take(TOPICS.replies("cam-1"), _json({"id": "c1", "state": "done"}))
    board.take(TOPICS.results("cam-1"), _json([{"seq": 1}, {"seq": 2}, {"seq": 3}]))
    board.take(TOPICS.results("cam-1"), _json([{"seq": 4}, {"seq": 5}]))
    clock.now = T0 + 2
    board.take(TOPICS.snapshot("cam-1"), JPEG, retained=True)
    detail = board.device("cam-1")
    assert detail is not None
    assert [e["n"] for e in detail["events"]] == [4, 3, 2], "newest first, the oldest dropped"
    assert [r["state"] for r in detail["replies"]] == ["done", "accepted"]
    assert [r["seq"] for r in detail["results"]] == [5, 4, 3, 2]
    assert detail["status"]["boot_id"] == "boot-1"
    assert detail["telemetry"]["frames_per_second"] == 12.5
    assert detail["row"] == board.rows()["cam-1"]
    snap = detail["snapshot"]
    assert snap["at"] == T0 + 2 and snap["size"] == len(JPEG)
    assert snap["url"].startswith("/api/devices/cam-1/snapshot.jpg?v=")
    assert board.snapshot("cam-1") == (JPEG, T0 + 2)
    assert board.device("cam-9") is None and board.snapshot("cam-9") is None


def test_shadow_and_probation() -> None:
    board, _ = _board()
    _online(board)
    shadow = {"type": "shadow", "state": "report", "agreement": 0.97, "agreement_lower": 0.95,
              "frames": 400, "candidate": {"name": "digits-cnn", "version": "1.1.0"}}  # fmt: skip
    board.take(TOPICS.events("cam-1"), _json(shadow))
    board.take(TOPICS.status("cam-1"), _status(deployment={"state": "probation"}))
    row = board.rows()["cam-1"]
    assert row["shadow"] == {"state": "report", "agreement": 0.97, "agreement_lower": 0.95,
                             "frames": 400}  # fmt: skip
    assert row["probation"] is True and row["deployment"] == "probation"
    detail = board.device("cam-1")
    assert detail is not None and detail["shadow"] == shadow


# --- freshness ------------------------------------------------------------------------------


def test_the_previous_boots_telemetry_is_ignored() -> None:
    board, clock = _board()
    board.take(TOPICS.telemetry("cam-1"), _telemetry(at=T0 - 600, boot="boot-0"), retained=True)
    board.take(TOPICS.status("cam-1"), _status(boot="boot-1"))  # live birth of the new boot
    row = board.rows()["cam-1"]
    assert row["health"] == "online" and row["seen_at"] == T0
    assert all(row[key] is None for key in LIVE), row
    detail = board.device("cam-1")
    assert detail is not None and detail["telemetry"] is None
    clock.now = T0 + 5
    board.take(TOPICS.telemetry("cam-1"), _telemetry(at=T0 + 5, boot="boot-1"))
    assert board.rows()["cam-1"]["fps"] == 12.5


def test_offline_blanks_the_live_figures_but_keeps_the_deployment() -> None:
    board, _ = _board()
    _online(board)
    board.take(TOPICS.status("cam-1"), _status("offline"))  # the last will
    row = board.rows()["cam-1"]
    assert row["health"] == "offline" and row["state"] == "offline"
    assert all(row[key] is None for key in LIVE), row
    assert row["deployment"] == "active" and row["model"] == "digits-cnn 1.0.0"


def test_stale_after_three_intervals_or_the_option() -> None:
    board, clock = _board()
    _online(board)  # interval_s 10: stale after 30 s without news
    clock.now = T0 + 30
    assert board.rows()["cam-1"]["health"] == "online"
    clock.now = T0 + 30.5
    row = board.rows()["cam-1"]
    assert row["health"] == "stale" and row["fps"] is None and row["age_s"] == 30.5
    assert board.fleet()["counts"] == {"online": 0, "stale": 1, "offline": 0, "unknown": 0}

    strict, clock = _board(stale_after=5.0)
    _online(strict)
    clock.now = T0 + 5.5
    assert strict.rows()["cam-1"]["health"] == "stale"

    unknown_interval, clock = _board()
    unknown_interval.take(TOPICS.status("cam-1"), _status())  # live, no telemetry yet
    clock.now = T0 + 29
    assert unknown_interval.rows()["cam-1"]["health"] == "online"
    clock.now = T0 + 31
    assert unknown_interval.rows()["cam-1"]["health"] == "stale"


def test_retained_and_live_seen_at() -> None:
    board, clock = _board()
    clock.now = T0 + 100
    board.take(TOPICS.status("cam-1"), _status(), retained=True)
    row = board.rows()["cam-1"]
    assert row["seen_at"] is None and row["health"] == "stale", "a retained status says nothing"
    board.take(TOPICS.telemetry("cam-1"), _telemetry(at=T0 + 90), retained=True)
    row = board.rows()["cam-1"]
    assert row["seen_at"] == T0 + 90 and row["age_s"] == 10.0 and row["health"] == "online"
    board.take(TOPICS.telemetry("cam-1"), _telemetry(at=T0 - 1000))  # live: its arrival counts
    assert board.rows()["cam-1"]["seen_at"] == T0 + 100
    clock.now = T0 + 120
    board.take(TOPICS.events("cam-1"), _json({"type": "source"}))
    assert board.rows()["cam-1"]["seen_at"] == T0 + 120


def test_a_state_nobody_knows_is_unknown() -> None:
    board, _ = _board()
    board.take(TOPICS.events("cam-2"), _json({"type": "source"}))
    assert board.rows()["cam-2"]["health"] == "unknown"


# --- clearing, garbage, deltas ---------------------------------------------------------------


def test_an_empty_retained_payload_clears() -> None:
    board, _ = _board()
    _online(board)
    board.take(TOPICS.snapshot("cam-1"), JPEG, retained=True)
    board.take(TOPICS.telemetry("cam-1"), b"", retained=True)
    detail = board.device("cam-1")
    assert detail is not None and detail["telemetry"] is None and detail["row"]["fps"] is None
    board.take(TOPICS.snapshot("cam-1"), b"", retained=True)
    assert board.snapshot("cam-1") is None
    before = board.device_version("cam-1")
    board.take(TOPICS.status("cam-1"), b"", retained=True)
    assert board.rows() == {} and board.device("cam-1") is None, "nothing retained is left"
    assert board.device_version("cam-1") > before, "a reader sees the device went away"
    assert board.ignored == 0


def test_garbage_is_ignored_and_counted() -> None:
    board, _ = _board()
    _online(board)
    before, version = board.rows(), board.version
    garbage = [
        (TOPICS.status("cam-1"), b"{not json"),
        (TOPICS.status("cam-1"), b"[1, 2]"),
        (TOPICS.telemetry("cam-1"), b"\xff\xfe"),
        (TOPICS.events("cam-1"), b"42"),
        (TOPICS.results("cam-1"), b'["a", 1]'),
        (TOPICS.snapshot("cam-1"), b"not a jpeg"),
    ]
    for topic, payload in garbage:
        board.take(topic, payload)
    assert board.ignored == len(garbage)
    for topic in (TOPICS.deploy_all(), TOPICS.wants("cam-1"), "elsewhere/v1/devices/x/status",
                  TOPICS.device("cam-1", "ha/state"), TOPICS.fleet_state()):  # fmt: skip
        board.take(topic, b'{"state": "online"}')
    assert board.ignored == len(garbage), "other topics are not the Board's business"
    assert board.rows() == before and board.version == version


def test_versions_tell_what_changed() -> None:
    board, clock = _board()
    assert board.device_version("cam-1") == 0
    _online(board)
    board.take(TOPICS.status("cam-2"), _status())
    v1, d1, d2 = board.version, board.device_version("cam-1"), board.device_version("cam-2")
    board.take(TOPICS.replies("cam-1"), _json({"id": "c", "state": "done"}))
    assert board.version > v1 and board.device_version("cam-1") > d1
    assert board.device_version("cam-2") == d2, "another device's news is not cam-2's"
    v2 = board.version
    clock.now += 100  # time alone changes health, not the version
    assert board.version == v2
    board.broker(True)
    board.broker(True)
    assert board.version == v2 + 1, "only a change of the broker's state counts"
    clock.now += 1
    board.broker(False, "disconnected: keepalive")
    assert board.fleet()["broker"] == {
        "connected": False, "since": clock.now, "detail": "disconnected: keepalive"
    }  # fmt: skip


def test_fleet_is_sorted_and_counted() -> None:
    board, _ = _board()
    _online(board)
    board.take(TOPICS.status("cam-0"), _status("offline"), retained=True)
    board.take(TOPICS.status("a-cam"), _status(), retained=True)
    fleet = board.fleet()
    assert [row["device"] for row in fleet["devices"]] == ["a-cam", "cam-0", "cam-1"]
    assert fleet["counts"] == {"online": 1, "stale": 1, "offline": 1, "unknown": 0}
    assert fleet["now"] == T0 and fleet["version"] == board.version
    assert fleet["broker"] == {"connected": False, "since": None, "detail": None}
    json.dumps(fleet)  # JSON-ready


def test_a_thousand_devices_fold_into_a_thousand_rows() -> None:
    """What it costs is bench/console.py's to measure (speed goals live in benchmarks); here,
    that 1,000 devices' status and telemetry fold into 1,000 right rows, and that reading them
    again, once each device's cached part exists, gives the same rows."""
    board, _ = _board()
    messages = [(TOPICS.status(f"cam-{i}"), _status()) for i in range(1000)] + [
        (TOPICS.telemetry(f"cam-{i}"), _telemetry(results_queued=i)) for i in range(1000)
    ]
    for topic, payload in messages:
        board.take(topic, payload)
    first, again = board.rows(), board.rows()
    assert len(first) == 1000 and first["cam-999"]["queued"] == 999.0
    assert first == again


def test_many_threads_at_once() -> None:
    board, _ = _board()
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                board.fleet()
                board.device("cam-3")
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    for i in range(3000):
        board.take(TOPICS.telemetry(f"cam-{i % 50}"), _telemetry())
        if i % 7 == 0:
            board.take(TOPICS.telemetry(f"cam-{i % 50}"), b"")
    stop.set()
    for thread in readers:
        thread.join(10)
    assert failures == []


# --- the Feed, on a real broker --------------------------------------------------------------


class WatchedBoard(Board):
    """A Board that wakes the test whenever paho's thread hands it something."""

    def __init__(self) -> None:
        super().__init__(TOPICS)
        self.cond = threading.Condition()

    def take(self, topic: str, payload: bytes, retained: bool = False) -> None:
        super().take(topic, payload, retained)
        with self.cond:
            self.cond.notify_all()

    def broker(self, connected: bool, detail: str | None = None) -> None:
        super().broker(connected, detail)
        with self.cond:
            self.cond.notify_all()

    def wait(self, check: Callable[[], bool], timeout: float = 20) -> None:
        with self.cond:
            assert self.cond.wait_for(check, timeout), self.fleet()


def _publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def test_the_feed_on_a_real_broker(mosquitto: MosquittoBroker) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    device = connect(address)
    _publish(device, TOPICS.status("cam-1"), _status(), retain=True)
    _publish(device, TOPICS.snapshot("cam-1"), JPEG, retain=True)
    board = WatchedBoard()
    console = connect(address)
    connects: list[object] = []
    before = console.on_connect
    console.on_message = lambda *_: connects.append("message")  # another use of the client
    try:
        Feed(console, board, TOPICS).start()
        assert console.on_connect is not before, "wrapped"
        board.wait(lambda: board.snapshot("cam-1") is not None)
        assert board.fleet()["broker"]["connected"] is True
        row = board.rows()["cam-1"]
        assert row["seen_at"] is None, "retained status: not heard from yet"
        _publish(device, TOPICS.telemetry("cam-1"), _telemetry(at=time.time()))
        _publish(device, TOPICS.results("cam-1"), _json([{"seq": 1}]))
        board.wait(lambda: bool((board.device("cam-1") or {}).get("results")))
        assert board.rows()["cam-1"]["health"] == "online"
        _publish(device, TOPICS.deploy_all(), b"{}")  # not subscribed: nothing for the Board
        assert connects == [] and board.ignored == 0

        mosquitto.stop()
        board.wait(lambda: board.fleet()["broker"]["connected"] is False)
        assert board.fleet()["broker"]["detail"].startswith("disconnected: ")
        mosquitto.start()
        board.wait(lambda: board.fleet()["broker"]["connected"] is True, timeout=60)
        # Subscribed again: live messages come through the new connection.
        disconnect(device)
        device = connect(address)
        _publish(device, TOPICS.replies("cam-1"), _json({"id": "after", "state": "done"}))
        board.wait(lambda: bool((board.device("cam-1") or {}).get("replies")))
    finally:
        disconnect(console)
        disconnect(device)
