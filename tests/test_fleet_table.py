"""``edgewise fleet``'s table: sorted by any column, stale and offline rows in colour on a
terminal and marked otherwise, ``--json``, and rows from agents of before base units."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
from helpers import BIN
from telemetry_samples import sample_message

from agent.contract import Topics
from compiler.cli import fleet as fleet_cli
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.table import ATTENTION, document, render, sort_key, sorted_rows
from compiler.fleet.view import FleetView

NOW = 1_000_030.0
TOPICS = Topics()


def _status(device: str, state: str) -> bytes:
    return json.dumps({"state": state, "device": device, "boot_id": "boot"}).encode()


def _telemetry(device: str, p99_s: float, cpu: float, at: float = NOW - 1) -> bytes:
    message = sample_message(
        device=device, boot_id="boot", at=at, latency_p99_seconds=p99_s, cpu_ratio=cpu
    )
    return json.dumps(message).encode()


def _view() -> FleetView:
    """cam-a fast and busy, cam-b slow and idle, cam-c online without figures yet (no
    telemetry: stale), cam-d offline, cam-e online with cam-a's p99 (a tie)."""
    view = FleetView(TOPICS, clock=lambda: NOW)
    for device, state in (("cam-a", "online"), ("cam-b", "online"), ("cam-c", "online"),
                          ("cam-d", "offline"), ("cam-e", "online")):  # fmt: skip
        # Retained: tells nothing of when it was sent (cam-c has nothing newer: stale).
        view.update(TOPICS.status(device), _status(device, state), retained=True)
    view.update(TOPICS.telemetry("cam-b"), _telemetry("cam-b", 0.040, 0.05))
    view.update(TOPICS.telemetry("cam-e"), _telemetry("cam-e", 0.002, 0.5))
    view.update(TOPICS.telemetry("cam-a"), _telemetry("cam-a", 0.002, 0.9))
    return view


def _order(rows: list[dict[str, object]]) -> list[object]:
    return [row["device"] for row in rows]


def test_sort_by_any_column_unknown_last_ties_by_device() -> None:
    rows = _view().rows()
    assert _order(sorted_rows(rows)) == ["cam-a", "cam-b", "cam-c", "cam-d", "cam-e"]
    # cam-c (stale) and cam-d (offline) have no live figures: last, whichever the order.
    assert _order(sorted_rows(rows, "p99_ms")) == ["cam-a", "cam-e", "cam-b", "cam-c", "cam-d"]
    by_p99_reversed = sorted_rows(rows, "p99_ms", reverse=True)
    assert _order(by_p99_reversed) == ["cam-b", "cam-a", "cam-e", "cam-c", "cam-d"]
    assert _order(sorted_rows(rows, "cpu_percent", True))[:3] == ["cam-a", "cam-e", "cam-b"]
    assert _order(sorted_rows(rows, "health")) == ["cam-d", "cam-a", "cam-b", "cam-e", "cam-c"]
    assert _order(sorted_rows(rows, "device", reverse=True))[0] == "cam-e"


def test_a_column_by_key_or_heading() -> None:
    assert [sort_key(s) for s in ("p99_ms", "P99_MS", "CPU%", "deploy", "Errors", "FPS")] == [
        "p99_ms", "p99_ms", "cpu_percent", "deployment", "error_rate", "fps",
    ]  # fmt: skip


def test_stale_and_offline_rows_without_colour_are_marked() -> None:
    lines = _view().table().splitlines()
    health = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert health == {
        "cam-a": "online", "cam-b": "online", "cam-c": "stale!", "cam-d": "offline!",
        "cam-e": "online",
    }  # fmt: skip
    assert "\033[" not in "\n".join(lines)


def test_stale_and_offline_rows_in_colour() -> None:
    view = _view()
    view.broker(False)
    lines = view.table(colour=True).splitlines()
    assert lines[0].startswith("\033[1;31mbroker connection lost since")
    rows = {re.sub(r"\033\[[0-9;]*m", "", line).split()[0]: line for line in lines[2:]}
    assert rows["cam-d"].startswith(ATTENTION["offline"]) and rows["cam-d"].endswith("\033[0m")
    assert rows["cam-c"].startswith(ATTENTION["stale"])
    assert rows["cam-a"].startswith("cam-a") and "\033[" not in rows["cam-a"]
    assert "!" not in "\n".join(lines), "colour replaces the mark"


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert fleet_cli._colour()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not fleet_cli._colour()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert not fleet_cli._colour()


def test_one_json_document_of_the_rows() -> None:
    view = _view()
    data = json.loads(document(sorted_rows(view.rows(), "p99_ms"), None, NOW))
    assert data["broker_connected"] is True and data["broker_lost_since"] is None
    assert [row["device"] for row in data["devices"]][:2] == ["cam-a", "cam-e"]
    first = data["devices"][0]
    assert first["p99_ms"] == 2.0 and first["cpu_percent"] == 90.0 and first["health"] == "online"
    lost = json.loads(document([], 123.0, NOW))
    assert lost["broker_connected"] is False and lost["broker_lost_since"] == 123.0
    assert (
        render([], None)
        == "DEVICE  HEALTH  STATE  MODEL  SOURCE  DEPLOY"
        + "".join(
            f"  {h}" for h in ("FPS", "P99_MS", "ERRORS", "QUEUED", "DROPPED", "CPU%", "RSS_MB")
        )
        + "  TEMP_C  AGE_S"
    )


def test_an_agent_before_base_units_still_fills_its_row() -> None:
    """A fleet mid-upgrade: telemetry with the old names (ms, MB, %) shows as before."""
    view = FleetView(TOPICS, clock=lambda: NOW)
    old = {"device": "cam-o", "boot_id": "b", "at": NOW, "state": "online", "interval_s": 10.0,
           "fps": 7.5, "latency_ms": {"p50": 3.0, "p99": 9.0}, "error_rate": 0.1,
           "results_queued": 2, "results_dropped": 4, "cpu_percent": 12.5, "rss_mb": 80.0,
           "soc_temp_c": 50.0}  # fmt: skip
    view.update(TOPICS.telemetry("cam-o"), json.dumps(old).encode())
    (row,) = view.rows()
    figures = ("fps", "p99_ms", "error_rate", "queued", "dropped", "cpu_percent", "rss_mb")
    assert [row[k] for k in figures] == [7.5, 9.0, 0.1, 2.0, 4.0, 12.5, 80.0]
    assert row["temp_c"] == 50.0


def _fleet(broker: MosquittoBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), "fleet", "--once", "--wait", "1", *args,
         "--host", broker.host, "--port", str(broker.port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_command_sorts_and_prints_json(mosquitto: MosquittoBroker) -> None:
    device = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    try:
        for name, p99, cpu in (("cam-a", 0.004, 0.2), ("cam-b", 0.030, 0.1), ("cam-c", 0.001, 0.7)):
            device.publish(TOPICS.status(name), _status(name, "online"), 1, True)
            message = sample_message(device=name, boot_id="boot", latency_p99_seconds=p99,
                                     cpu_ratio=cpu)  # fmt: skip  # its "at": now, fresh
            device.publish(TOPICS.telemetry(name), json.dumps(message), 1, True).wait_for_publish(5)
        result = _fleet(mosquitto, "--json", "--sort", "P99_MS", "--reverse")
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.splitlines()  # one document, one line
        data = json.loads(line)
        assert [row["device"] for row in data["devices"]] == ["cam-b", "cam-a", "cam-c"]
        assert data["devices"][0]["p99_ms"] == 30.0 and data["broker_connected"] is True
        text = _fleet(mosquitto, "--sort", "cpu%")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:]] == ["cam-b", "cam-a", "cam-c"]
        assert "\033[" not in text.stdout, "not a terminal: no colour, no screen clearing"
        wrong = _fleet(mosquitto, "--sort", "speed")
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
        assert "argument --sort: invalid choice: 'speed'" in wrong.stderr.strip().splitlines()[-1]
    finally:
        for name in ("cam-a", "cam-b", "cam-c"):
            for leaf in ("status", "telemetry"):
                device.publish(TOPICS.device(name, leaf), b"", 1, True).wait_for_publish(5)
        disconnect(device)


def _document_where(proc: subprocess.Popen[str], wanted: str, limit: int = 600) -> dict:
    """The first JSON line (one per table) whose cam-live row has health ``wanted``; every
    line before it must parse too. Bounded by lines, not time: the command prints one per
    --interval."""
    assert proc.stdout is not None
    for _ in range(limit):
        line = proc.stdout.readline()
        assert line, f"fleet ended early: {proc.stderr.read() if proc.stderr else ''}"
        data = json.loads(line)
        assert set(data) == {"at", "broker_connected", "broker_lost_since", "devices"}
        rows = {row["device"]: row for row in data["devices"]}
        if rows.get("cam-live", {}).get("health") == wanted:
            return data
    raise AssertionError(f"no table showed cam-live {wanted} in {limit} lines")


def test_without_once_json_is_a_line_per_table_until_ctrl_c(mosquitto: MosquittoBroker) -> None:
    topics = Topics("json-lines")
    device = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    proc = None
    try:
        device.publish(topics.status("cam-live"), _status("cam-live", "online"), 1, True)
        device.publish(topics.telemetry("cam-live"), json.dumps(sample_message(
            device="cam-live", boot_id="boot")), 1, True).wait_for_publish(5)  # fmt: skip
        proc = subprocess.Popen(
            [str(BIN / "edgewise"), "fleet", "--json", "--interval", "0.1", "--wait", "0.1",
             "--topic-root", topics.root, "--host", mosquitto.host, "--port", str(mosquitto.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        online = _document_where(proc, "online")
        assert online["broker_connected"] is True and online["broker_lost_since"] is None
        device.publish(
            topics.status("cam-live"), _status("cam-live", "offline"), 1, True
        ).wait_for_publish(5)
        offline = _document_where(proc, "offline")  # the same process, a later table
        assert offline["at"] >= online["at"]
        (row,) = [r for r in offline["devices"] if r["device"] == "cam-live"]
        assert row["fps"] is None, "an offline device shows no live figures"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1] == "edgewise: interrupted" and "Traceback" not in err
        assert all(json.loads(line)["devices"] for line in out.splitlines())  # whole lines only
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        for leaf in ("status", "telemetry"):
            device.publish(topics.device("cam-live", leaf), b"", 1, True).wait_for_publish(5)
        disconnect(device)
