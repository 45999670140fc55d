"""``edgewise fleet``: the fleet view built from retained status and telemetry messages."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

from telemetry_samples import sample_message

from agent.contract import Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.view import FleetView


def _status(device: str, state: str, **extra: object) -> bytes:
    status: dict[str, object] = {
        "state": state,
        "device": device,
        "agent_version": "0.1.0",
        "boot_id": "boot",
        "model": None,
        "source": None,
        "uptime_s": 1.0,
        "deployment": None,
    }
    status.update(extra)
    return json.dumps(status).encode()


def _fleet(clock: Callable[[], float] = lambda: 1_000_030.0) -> tuple[FleetView, Topics]:
    topics = Topics()
    view = FleetView(topics, clock=clock)
    view.update(
        topics.status("cam-1"),
        _status(
            "cam-1",
            "online",
            model={"name": "digits-cnn", "version": "1.0.0"},
            source={"uri": "file:///v.mp4", "state": "open", "detail": ""},
            deployment={"state": "active", "version": "1.0.0"},
        ),
        retained=True,
    )
    telemetry = sample_message(at=1_000_000.0, boot_id="boot", interval_s=10.0, error_ratio=0.25)
    view.update(topics.device("cam-1", "telemetry"), json.dumps(telemetry).encode(), retained=True)
    view.update(topics.status("cam-0"), _status("cam-0", "offline"), retained=True)
    return view, topics


def test_fleet_rows() -> None:
    view, _ = _fleet()
    offline, online = view.rows()
    assert offline["device"] == "cam-0" and offline["state"] == "offline"
    assert offline["model"] is None and offline["fps"] is None and offline["age_s"] is None
    assert offline["health"] == "offline" and offline["seen_at"] is None
    assert online == {
        "device": "cam-1",
        "health": "online",
        "state": "online",
        "model": "digits-cnn 1.0.0",
        "source": "open",
        "deployment": "active",
        "fps": 12.5,
        "p99_ms": 14.25,
        "error_rate": 0.25,
        "queued": 4.0,
        "dropped": 1.0,
        "cpu_percent": 37.5,
        "rss_mb": 84.934656,  # 81 MiB in MB (10^6 bytes)
        "temp_c": 55.2,
        "seen_at": 1_000_000.0,  # a retained telemetry: its own time
        "age_s": 30.0,
    }


def test_fleet_ignores_what_it_does_not_show() -> None:
    view, topics = _fleet()
    before = view.rows()
    view.update(topics.results("cam-1"), b'{"label": 3}')
    view.update(topics.status("cam-1"), b"{not json")
    view.update(topics.status("cam-1"), b"[1, 2]")
    view.update(topics.deploy_all(), b"{}")
    view.update(topics.status("cam-9"), b"\xff\xfe")
    assert view.rows() == before


def test_fleet_empty_payload_removes() -> None:
    view, topics = _fleet()
    view.update(topics.device("cam-1", "telemetry"), b"")
    cam1 = view.rows()[1]
    assert cam1["state"] == "online" and cam1["fps"] is None and cam1["age_s"] is None
    view.update(topics.status("cam-0"), b"")
    assert [row["device"] for row in view.rows()] == ["cam-1"]
    view.update(topics.status("cam-1"), b"")
    assert view.rows() == []


def test_fleet_table() -> None:
    view, _ = _fleet()
    lines = view.table().splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:4] == ["DEVICE", "HEALTH", "STATE", "MODEL"]
    offline = lines[1].split()
    # Not a terminal: no colour, the health marked.
    assert offline[:3] == ["cam-0", "offline!", "offline"] and set(offline[3:]) == {"-"}
    assert lines[2].split()[:3] == ["cam-1", "online", "online"]
    assert lines[2].startswith("cam-1") and "digits-cnn 1.0.0" in lines[2]
    assert "12.5" in lines[2] and "55.2" in lines[2]
    # Columns line up: every row puts FPS at the same place.
    fps_end = lines[0].index("FPS") + len("FPS")
    assert lines[2][fps_end - len("12.5") : fps_end] == "12.5"
    assert lines[1][fps_end - 1] == "-"


# --- where retained messages do not reach wildcard subscriptions (RabbitMQ) -----------------


def _summary(**devices: dict[str, object]) -> bytes:
    return json.dumps({"devices": devices, "updated_at": 1_000_020.0}).encode()


def test_the_fleet_summary_fills_devices_nothing_else_told_about() -> None:
    topics = Topics()
    view = FleetView(topics, clock=lambda: 1_000_030.0)
    entry = {"state": "online", "model": {"name": "digits-cnn", "version": "1.0.0"},
             "source": "open", "deployment": "active", "fps": 9.5, "p99_ms": 3.25, "queued": 2,
             "dropped": 0, "cpu_percent": 12.0, "rss_mb": 80, "temp_c": 50.5,
             "at": 1_000_010.0}  # fmt: skip
    view.update(topics.fleet_state(), _summary(**{"cam-7": entry, "cam-8": {"model": "m 2.0.0"}}))
    cam7, cam8 = view.rows()
    assert cam7 == {"device": "cam-7", "health": "online", "state": "online",
                    "model": "digits-cnn 1.0.0", "source": "open", "deployment": "active",
                    "fps": 9.5, "p99_ms": 3.25, "error_rate": None, "queued": 2.0,
                    "dropped": 0.0, "cpu_percent": 12.0, "rss_mb": 80.0, "temp_c": 50.5,
                    "seen_at": 1_000_010.0, "age_s": 20.0}  # fmt: skip
    assert cam8["model"] == "m 2.0.0" and cam8["state"] is None and cam8["health"] == "stale"
    view.update(topics.fleet_state(), b"{not json")
    assert len(view.rows()) == 2, "an unreadable summary keeps the last one"
    view.update(topics.fleet_state(), b"")
    assert view.rows() == []


def test_a_devices_own_messages_win_over_the_summary() -> None:
    view, topics = _fleet()
    own = {row["device"]: row for row in view.rows()}
    stale = {"state": "offline", "model": "old 0.1.0", "fps": 1.0, "p99_ms": 99.0}
    view.update(topics.fleet_state(), _summary(**{"cam-1": stale, "cam-0": {"rss_mb": 70}}))
    rows = {row["device"]: row for row in view.rows()}
    assert rows["cam-1"] == own["cam-1"]
    # The summary fills what the device's messages leave unknown, but an offline device shows
    # no live figures, wherever they come from.
    assert rows["cam-0"]["state"] == "offline" and rows["cam-0"]["rss_mb"] is None


def test_live_telemetry_alone_fills_a_row() -> None:
    """The agent re-announces its status in every telemetry message (agent.upstream.telemetry
    ANNOUNCED): a device whose retained status never arrived still gets its whole row."""
    topics = Topics()
    view = FleetView(topics, clock=lambda: 1_000_030.0)
    telemetry = sample_message(
        at=1_000_000.0, state="online", source_state="open",
        deployment={"state": "active", "version": "1.0.0"},
    )  # fmt: skip
    view.update(topics.telemetry("cam-1"), json.dumps(telemetry).encode())
    (row,) = view.rows()
    assert row["state"] == "online" and row["source"] == "open"
    assert row["deployment"] == "active" and row["fps"] == 12.5 and row["health"] == "online"
    assert row["seen_at"] == 1_000_030.0 and row["age_s"] == 0.0, "live: heard from just now"


# --- freshness: the rules the console's Board shares ------------------------------------------


class _Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_previous_boots_telemetry_is_not_shown_next_to_online() -> None:
    topics, clock = Topics(), _Clock(1_000_030.0)
    view = FleetView(topics, clock=clock)
    old = sample_message(at=1_000_000.0, boot_id="old-boot", interval_s=10.0)
    view.update(topics.telemetry("cam-1"), json.dumps(old).encode(), retained=True)
    view.update(topics.status("cam-1"), _status("cam-1", "online", boot_id="new-boot"))
    (row,) = view.rows()
    assert row["health"] == "online" and row["state"] == "online"
    assert row["fps"] is None and row["cpu_percent"] is None, "figures of another boot"
    assert row["seen_at"] == 1_000_030.0, "the live birth, not the old telemetry"


def test_offline_and_stale_devices_show_no_live_figures() -> None:
    clock = _Clock(1_000_030.0)
    view, topics = _fleet(clock)  # cam-1: telemetry every 10 s, last at 1_000_000
    assert view.rows()[1]["health"] == "online"
    clock.now = 1_000_031.0  # 3 intervals without news
    cam1 = view.rows()[1]
    assert cam1["health"] == "stale" and cam1["fps"] is None and cam1["age_s"] == 31.0
    assert cam1["deployment"] == "active", "a fact, not a live figure"
    assert "stale!" in view.table().splitlines()[2].split()[:2]
    strict = FleetView(topics, clock=lambda: 1_000_006.0, stale_after=5.0)
    live = sample_message(at=1.0, state="online")
    strict.update(topics.telemetry("cam-1"), json.dumps(live).encode())
    assert strict.rows()[0]["health"] == "online", "live: heard from just now"
    later = FleetView(topics, clock=lambda: 1_000_006.0, stale_after=5.0)
    later.update(topics.telemetry("cam-1"), json.dumps(sample_message(at=1_000_000.0)).encode(),
                 retained=True)  # fmt: skip
    assert later.rows()[0]["health"] == "stale"


class _WatchedView(FleetView):
    """Wakes the test when the broker connection changes."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(topics)
        self.cond = threading.Condition()

    def broker(self, connected: bool, detail: str | None = None) -> None:
        super().broker(connected, detail)
        with self.cond:
            self.cond.notify_all()

    def update(self, topic: str, payload: bytes, retained: bool = False) -> None:
        super().update(topic, payload, retained)
        with self.cond:
            self.cond.notify_all()

    def wait(self, check: Callable[[], bool], timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(check, timeout), self.table()


def test_the_banner_while_the_broker_is_gone(mosquitto: MosquittoBroker) -> None:
    topics = Topics()
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    view = _WatchedView(topics)
    client = connect(address)
    try:
        view.follow(client)
        assert view.banner() is None and not view.table().startswith("broker")
        mosquitto.stop()
        view.wait(lambda: view.banner() is not None)
        first = view.table().splitlines()[0]
        assert re.fullmatch(
            r"broker connection lost since \d\d:\d\d:\d\d; figures below are as of then", first
        ), first
        mosquitto.start()
        view.wait(lambda: view.banner() is None)
        # Subscribed again after the reconnect: a live status reaches the table.
        device = connect(address)
        device.publish(topics.status("cam-5"), _status("cam-5", "online"), qos=1).wait_for_publish(
            5
        )
        disconnect(device)
        view.wait(lambda: any(row["device"] == "cam-5" for row in view.rows()))
    finally:
        disconnect(client)
