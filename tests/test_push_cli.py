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
from helpers import BIN, AgentProcess, run_edgewise

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
# --wait's clean-up once all are active: the device fixture installed 1.0.0 from disk, so the
# broker holds only 1.1.0's two blobs (the model and the golden file), both in use.
GC_NOTHING = (
    "gc after digits-cnn 1.1.0 went active: removed 0 chunk topics of 0 blobs; kept 2 blobs in use"
)
PROGRESS = re.compile(r"chunk (\d+)/(\d+) \(\d+%\), [\d.]+/[\d.]+ MB, [\d.]+ MB/s")


def edgewise(
    broker: MosquittoBroker, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_edgewise(broker.host, broker.port, *args, timeout=timeout)


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
    assert out[1:] == [f"{DEVICE}: active", GC_NOTHING]
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
    run = edgewise(
        mosquitto, "push", str(v2.root), "--to", "group:lobby", "--wait", "90", "--keep-blobs"
    )
    assert run.returncode == 0, run.stdout + run.stderr + lobby_device.agent.output()[-3000:]
    assert lines(run.stdout)[1:] == [f"{DEVICE}: active"]  # --keep-blobs: no clean-up
    # push does not list a group's members first; the user is told what "the group" meant.
    assert lines(run.stderr) == [
        "edgewise: note: a group's members answer as they come; waiting 90 s and reporting the "
        "devices that answer for group:lobby (`edgewise rollout` takes a group's devices from "
        "their status)"
    ]


def test_wait_on_all_then_again_when_already_serving(device, mosquitto, v2) -> None:  # type: ignore[no-untyped-def]
    first = edgewise(mosquitto, "push", str(v2.root), "--to", "all", "--wait", "90")
    assert first.returncode == 0, first.stdout + first.stderr + device.agent.output()[-3000:]
    assert lines(first.stdout)[1:] == [f"{DEVICE}: active", GC_NOTHING]
    # The same package again: the agent says nothing about what it already serves, and the
    # retained status is the answer (once the status shows the new model).
    assert eventually(lambda: "1.1.0" in fleet_line(mosquitto))
    again = edgewise(mosquitto, "push", str(v2.root), "--to", "all", "--wait", "90")
    assert again.returncode == 0, again.stdout + again.stderr
    assert lines(again.stdout)[1:] == [f"{DEVICE}: active: already serving it", GC_NOTHING]


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


# --- --chunks: how devices get the chunks (signed, so request and http need --key) ---------------


def _retained(broker: MosquittoBroker):  # type: ignore[no-untyped-def]
    from compiler.fleet.gc import collect
    from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

    client = connect(BrokerAddress(broker.host, broker.port))
    try:
        return collect(client, TOPICS)
    finally:
        disconnect(client)


def _deployed(broker: MosquittoBroker, public_key: Path, target: str = "all"):  # type: ignore[no-untyped-def]
    """The retained manifest on ``target``'s deploy topic, verified as a device would."""
    from agent.contract import TrustStore
    from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

    got: list[bytes] = []
    client = connect(BrokerAddress(broker.host, broker.port))
    client.message_callback_add(TOPICS.deploy(target), lambda _c, _u, m: got.append(m.payload))
    try:
        Subscriber(client).subscribe([(TOPICS.deploy(target), 1)])
        assert eventually(lambda: bool(got))
    finally:
        disconnect(client)
    return TrustStore.from_files([public_key]).verify(got[0])


def test_push_chunks_request_fills_the_store_and_publishes_no_chunk(  # type: ignore[no-untyped-def]
    mosquitto, compiled, signing_keys, tmp_path
) -> None:
    store = tmp_path / "store"
    package = compiled.package
    run = edgewise(
        mosquitto, "push", str(package.root), "--to", "all", "--chunks", "request",
        "--key", str(signing_keys[0]), "--blobs", str(store),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    chunks = sum(len(b.chunks) for b in package.manifest.blobs)
    assert lines(run.stdout) == [
        f"stored 2 blobs in {store}: serve them with `edgewise serve --blobs {store}`",
        f"pushed digits-cnn 1.0.0 to all ({chunks} chunks on request from `edgewise serve`)",
    ]
    assert _retained(mosquitto).chunks == {}  # no blobs/ topic at all
    manifest = _deployed(mosquitto, signing_keys[1])
    assert manifest.delivery == "request" and manifest.target == "all"
    assert manifest.model == package.manifest.model and manifest.golden == package.manifest.golden
    for blob, path in package.blobs():
        assert (store / blob.sha256).read_bytes() == path.read_bytes()
        assert (store / f"{blob.sha256}.json").is_file()


def test_push_chunks_http_signs_the_urls(mosquitto, compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    run = edgewise(
        mosquitto, "push", str(compiled.package.root), "--to", "all", "--chunks", "http",
        "--key", str(signing_keys[0]), "--url", "https://cdn.example/models/",
        "--url", "http://backup:8080",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert lines(run.stdout) == [
        "pushed digits-cnn 1.0.0 to all (chunks over HTTP from 2 URL(s) per blob)"
    ]
    assert _retained(mosquitto).chunks == {}
    manifest = _deployed(mosquitto, signing_keys[1])
    assert manifest.delivery == "http"
    for blob in manifest.blobs:
        assert blob.urls == (
            f"https://cdn.example/models/{blob.sha256}",
            f"http://backup:8080/{blob.sha256}",
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--chunks", "request"], "--chunks request is a signed manifest field: give --key"),
        (["--chunks", "http", "--key", "{key}"], "--chunks http needs at least one --url BASE"),
        (["--url", "https://x.example", "--key", "{key}"], "--url is for --chunks http only"),
        (["--blobs", "{tmp}"], "--blobs is for --chunks request or http"),
        (["--chunks", "http", "--url", "ftp://x"], "argument --url: 'ftp://x' is not an http://"),
        (["--chunks", "bittorrent"], "argument --chunks: invalid choice: 'bittorrent'"),
    ],
)
def test_a_chunks_choice_that_cannot_work_is_one_line_exit_2(  # type: ignore[no-untyped-def]
    mosquitto, compiled, signing_keys, tmp_path, extra, message
) -> None:
    args = [a.format(key=signing_keys[0], tmp=tmp_path) for a in extra]
    run = edgewise(mosquitto, "push", str(compiled.package.root), "--to", "all", *args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines(run.stderr)) == 1 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert _retained(mosquitto).manifests == {}  # nothing was pushed


def test_a_broker_packet_cap_rechunks_a_signed_push_and_refuses_an_unsigned_one(  # type: ignore[no-untyped-def]
    compiled, signing_keys
) -> None:
    from agent.contract import TrustStore
    from agent.contract.broker import BrokerCapabilities
    from compiler.errors import InputError
    from compiler.fleet.delivery import DeliveryChoice, packet_overhead, plan_blobs
    from compiler.fleet.push import deployment_envelope

    package, caps = compiled.package, BrokerCapabilities(protocol="5", maximum_packet_size=40_000)
    specs = plan_blobs(package, DeliveryChoice(), caps, TOPICS, signed=True)
    assert [s.sha256 for s in specs] == [b.sha256 for b in package.manifest.blobs]
    assert {s.chunk_size for s in specs} == {32 * 1024}
    assert all(s.chunk_size + packet_overhead(TOPICS, "retained") <= 40_000 for s in specs)
    envelope = deployment_envelope(package, "all", signing_keys[0], specs=specs)
    signed = TrustStore.from_files([signing_keys[1]]).verify(envelope)
    assert signed.model.chunk_size == 32 * 1024 and list(signed.blobs) == specs

    with pytest.raises(InputError) as refused:
        plan_blobs(package, DeliveryChoice(), caps, TOPICS, signed=False)
    assert "at most 40000 bytes" in str(refused.value) and "are 65536 bytes" in str(refused.value)
    # A broker with no cap (or room enough) leaves the package as compiled.
    assert plan_blobs(package, DeliveryChoice(), BrokerCapabilities(), TOPICS, False) == [
        b for b, _ in package.blobs()
    ]


def test_a_broker_capping_packets_gets_a_signed_push_in_smaller_chunks(  # type: ignore[no-untyped-def]
    compiled, signing_keys
) -> None:
    """Mosquitto's max_packet_size reaches the cloud client in CONNACK (MQTT 5): a chunk of
    64 KiB would not pass, so the push re-chunks, and without --key refuses in one line."""
    from compiler.fleet.delivery import packet_overhead

    broker = MosquittoBroker(extra_config="max_packet_size 40000\n").start()
    try:
        package = str(compiled.package.root)
        refused = edgewise(broker, "push", package, "--to", "all")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        overhead = packet_overhead(TOPICS, "retained")
        assert lines(refused.stderr) == [
            "edgewise: the broker takes packets of at most 40000 bytes and this package's chunks "
            f"are 65536 bytes (plus {overhead} for the topic); give --key to re-chunk it"
        ]
        run = edgewise(broker, "push", package, "--to", "all", "--key", str(signing_keys[0]))
        assert run.returncode == 0, run.stdout + run.stderr
        assert lines(run.stderr) == [
            "edgewise: note: the broker takes packets of at most 40000 bytes; re-chunked to "
            "32768-byte chunks for this push"
        ]
        manifest = _deployed(broker, signing_keys[1])
        assert {b.chunk_size for b in manifest.blobs} == {32768}
        chunks = _retained(broker).chunks
        assert {sha: len(found) for sha, found in chunks.items()} == {
            b.sha256: -(-b.size // 32768) for b in manifest.blobs
        }
    finally:
        broker.close()
