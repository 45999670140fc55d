"""``edgewise push`` as a user runs it, against the real agent on a private Mosquitto: ``--wait``
reports each device's verdict in the exit code, a device nobody has seen is warned about,
progress is drawn only on a terminal, and every failure is one line, never a traceback."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install
from forge import package_from
from helpers import BIN, AgentProcess

from agent.contract import generate_keypair
from compiler.fleet.broker import MosquittoBroker, free_port
from compiler.fleet.mqtt import Subscriber
from compiler.fleet.results import DeviceFeed
from compiler.fleet.verdicts import judge
from compiler.recipe.demo import write_agent_config

WARNING = (
    "edgewise: warning: device {} has never connected to this broker; "
    "the package waits retained until it does"
)
PROGRESS = re.compile(r"chunk (\d+)/(\d+) \(\d+%\), [\d.]+/[\d.]+ MB, [\d.]+ MB/s")


def edgewise(
    broker: MosquittoBroker, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgewise"), *args, "--host", broker.host, "--port", str(broker.port)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    """Polls a condition another process brings about (its log file, a retained message)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- --wait: the device's verdict is the exit code ----------------------------------------------


def test_wait_reports_active_and_exits_0(device, mosquitto, v2) -> None:  # type: ignore[no-untyped-def]
    run = edgewise(mosquitto, "push", str(v2.root), "--to", f"device:{DEVICE}", "--wait", "90")
    assert run.returncode == 0, run.stdout + run.stderr + device.agent.output()[-3000:]
    out = lines(run.stdout)
    assert out[0].startswith(f"pushed digits-cnn 1.1.0 to device:{DEVICE} (")
    assert out[1:] == [f"{DEVICE}: active"]
    # Not a terminal: no progress, and a device that has connected is not warned about.
    assert run.stderr == ""
    assert os.readlink(device.state / "current").endswith("1.1.0")


def test_wait_reports_a_rejection_with_its_reason_and_exits_1(  # type: ignore[no-untyped-def]
    device, mosquitto, compiled, tmp_path
) -> None:
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = package_from(compiled.package, tmp_path / "p", tmp_path / "rogue.key", version="2.0.0")
    run = edgewise(mosquitto, "push", str(rogue.root), "--to", f"device:{DEVICE}", "--wait", "90")
    assert run.returncode == 1, run.stdout + run.stderr
    out = lines(run.stdout)
    assert len(out) == 2, run.stdout
    assert out[1].startswith(f"{DEVICE}: rejected: ") and "untrusted key" in out[1]
    assert "Traceback" not in run.stderr
    assert device.serving() == {"1.0.0"}


@pytest.fixture
def lobby_device(mosquitto, cloud, compiled, signing_keys, video, tmp_path):  # type: ignore[no-untyped-def]
    """The agent serving digits-cnn 1.0.0, in deploy group ``lobby``."""
    install(compiled.package, tmp_path / "state")
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=DEPLOY,
    )  # fmt: skip
    config.write_text(config.read_text().replace("[device]\n", '[device]\ngroups = ["lobby"]\n'))
    dev = Device(
        AgentProcess(config), DeviceFeed(cloud, TOPICS, DEVICE), config, tmp_path / "state"
    )
    assert dev.serving() == {"1.0.0"}
    yield dev
    assert dev.agent.stop() == 0, dev.agent.output()[-3000:]


def test_wait_on_a_group_reports_the_devices_that_answered(lobby_device, mosquitto, v2) -> None:  # type: ignore[no-untyped-def]
    run = edgewise(mosquitto, "push", str(v2.root), "--to", "group:lobby", "--wait", "90")
    assert run.returncode == 0, run.stdout + run.stderr + lobby_device.agent.output()[-3000:]
    assert lines(run.stdout)[1:] == [f"{DEVICE}: active"]
    # The status carries no groups; the user is told what "the group" meant.
    assert lines(run.stderr) == [
        "edgewise: note: a device's status does not say which groups it is in; waiting 90 s "
        "and reporting the devices that answer for group:lobby"
    ]


def test_wait_on_all_then_again_when_already_serving(device, mosquitto, v2) -> None:  # type: ignore[no-untyped-def]
    first = edgewise(mosquitto, "push", str(v2.root), "--to", "all", "--wait", "90")
    assert first.returncode == 0, first.stdout + first.stderr + device.agent.output()[-3000:]
    assert lines(first.stdout)[1:] == [f"{DEVICE}: active"]
    # The same package again: the agent says nothing about what it already serves, and the
    # retained status is the answer (once the status shows the new model).
    assert eventually(lambda: "1.1.0" in fleet_line(mosquitto))
    again = edgewise(mosquitto, "push", str(v2.root), "--to", "all", "--wait", "90")
    assert again.returncode == 0, again.stdout + again.stderr
    assert lines(again.stdout)[1:] == [f"{DEVICE}: active: already serving it"]


def fleet_line(broker: MosquittoBroker) -> str:
    run = edgewise(broker, "fleet", "--once", "--interval", "0.2")
    return next((line for line in run.stdout.splitlines() if line.startswith(DEVICE)), "")


def test_a_device_that_never_connected_is_warned_about(mosquitto, compiled, cloud) -> None:  # type: ignore[no-untyped-def]
    package = str(compiled.package.root)
    started = time.monotonic()
    waited = edgewise(mosquitto, "push", package, "--to", "device:ghost", "--wait", "3")
    elapsed = time.monotonic() - started
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert lines(waited.stderr) == [WARNING.format("ghost")]
    assert lines(waited.stdout)[1:] == [
        "ghost: no answer within 3 s (it has never connected to this broker)"
    ]
    assert 3 <= elapsed < 60

    plain = edgewise(mosquitto, "push", package, "--to", "device:ghost")
    assert plain.returncode == 0, plain.stderr
    assert lines(plain.stderr) == [WARNING.format("ghost")]
    # The manifest waits, retained, for the device to connect.
    got: list[bytes] = []
    cloud.message_callback_add(
        TOPICS.deploy_device("ghost"), lambda _c, _u, m: got.append(m.payload)
    )
    Subscriber(cloud).subscribe([(TOPICS.deploy_device("ghost"), 1)])
    assert eventually(lambda: bool(got)) and got[0] == compiled.package.envelope


# --- progress: a terminal gets it, a log does not ------------------------------------------------


def test_progress_is_drawn_on_a_terminal_only(mosquitto, compiled) -> None:  # type: ignore[no-untyped-def]
    command = [
        str(BIN / "edgewise"), "push", str(compiled.package.root), "--to", "all",
        "--host", mosquitto.host, "--port", str(mosquitto.port),
    ]  # fmt: skip
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert len(lines(piped.stdout)) == 1 and "MB/s" in piped.stdout  # the one summary line

    primary, replica = pty.openpty()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=replica, text=True)
    os.close(replica)
    terminal = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        terminal += data
    os.close(primary)
    assert proc.wait(60) == 0
    drawn = terminal.decode()
    counts = PROGRESS.findall(drawn)
    total = sum(len(blob.chunks) for blob, _ in compiled.package.blobs())
    assert counts and counts[-1] == (str(total), str(total)), drawn
    assert "\r" in drawn


# --- failures: one line, the documented exit code ----------------------------------------------


def test_ctrl_c_while_waiting_exits_130_and_disconnects_cleanly(mosquitto, compiled) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [str(BIN / "edgewise"), "push", str(compiled.package.root), "--to", "device:ghost",
         "--wait", "300", "--host", mosquitto.host, "--port", str(mosquitto.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("pushed ")  # printed just before the wait starts
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert lines(err) == [WARNING.format("ghost"), "edgewise: interrupted"]
    log = mosquitto.log_path
    client = re.findall(r"New client connected from \S+ as (\S+) ", log.read_text())[-1]
    assert eventually(lambda: f"Client {client} disconnected." in log.read_text()), log.read_text()


@pytest.mark.parametrize("command", [["push", "{pkg}", "--to", "all"], ["results"], ["fleet"]])
def test_an_unreachable_broker_is_one_line(command: list[str], compiled) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    argv = [a.format(pkg=compiled.package.root) for a in command]
    run = subprocess.run(
        [str(BIN / "edgewise"), *argv, "--port", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert lines(run.stderr) == [
        f"edgewise: cannot reach the broker at 127.0.0.1:{port}: Connection refused; "
        "check --host/--port"
    ]


def test_a_missing_or_broken_package_exits_2(tmp_path: Path, compiled) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.json").write_bytes(compiled.package.envelope)  # no model
    expected = {
        "missing": "does not exist",
        "file": "is a file; give the package folder",
        "empty": "is not a package: it has no manifest.json",
        "half": "is incomplete: model.onnx is missing",
    }
    for name, why in expected.items():
        run = subprocess.run(
            [str(BIN / "edgewise"), "push", str(tmp_path / name), "--to", "all",
             "--port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2, (name, run.stderr)
        assert len(lines(run.stderr)) == 1 and why in run.stderr, run.stderr


# --- how an agent's deployment event reads as a verdict ------------------------------------------

MODEL = {"name": "digits-cnn", "version": "1.1.0"}
DEPLOY_TOPIC = TOPICS.deploy_device(DEVICE)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        ({"state": "active", "model": MODEL}, "cam-1: active"),
        ({"state": "rejected", "model": MODEL, "reason": "too slow:\n p99 9 ms"},
         "cam-1: rejected: too slow: p99 9 ms"),
        ({"state": "rolled_back", "model": MODEL, "reason": "error rate 40% > 5%",
          "restored": "1.0.0"}, "cam-1: rolled_back: error rate 40% > 5% (restored 1.0.0)"),
        ({"state": "downloading", "model": MODEL, "percent": 40}, "cam-1: downloading: 40%"),
        ({"state": "rejected", "model": None, "reason": f"{DEPLOY_TOPIC}: untrusted key k1"},
         "cam-1: rejected: untrusted key k1"),
    ],
)  # fmt: skip
def test_an_event_about_this_package_is_its_verdict(event: dict, line: str) -> None:  # type: ignore[type-arg]
    verdict = judge(DEVICE, event, MODEL, DEPLOY_TOPIC)
    assert verdict is not None and verdict.line() == line
    assert verdict.final == (event["state"] in ("active", "rejected", "rolled_back"))


@pytest.mark.parametrize(
    "event",
    [
        {"state": "active", "model": {"name": "digits-cnn", "version": "1.0.0"}},
        {"state": "rejected", "model": None, "reason": "x/v1/deploy/all: untrusted key k1"},
        {"state": "rejected", "model": None, "reason": f"{DEPLOY_TOPIC}x: untrusted key k1"},
    ],
)
def test_an_event_about_something_else_is_not(event: dict) -> None:  # type: ignore[type-arg]
    assert judge(DEVICE, event, MODEL, DEPLOY_TOPIC) is None
