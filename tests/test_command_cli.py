"""``edgewise command`` as a user runs it: ARGS and usage refused before any work (exit 2);
against a scripted device on a real Mosquitto, a snapshot's chunks put together whichever comes
first and a lost chunk named; against the real agent, every command end to end, and a command
signed by a key the device does not trust rejected (exit 1)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install, publish
from helpers import AgentProcess, run_edgewise

from agent.contract import TrustStore, generate_keypair, load_public_key
from agent.contract.commands import open_command
from agent.contract.snapshot import describe, split
from compiler.cli import main
from compiler.cli.control import command_args
from compiler.errors import InputError
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config
from compiler.recipe.video import FRAME_SIZE


@pytest.fixture
def command_keys(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "command-keys"
    root.mkdir()
    generate_keypair(root / "command.key", root / "command.pub")
    return root / "command.key", root / "command.pub"


def edgewise(broker: MosquittoBroker, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_edgewise(broker.host, broker.port, "command", *args, "--key", str(key), timeout=60)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- ARGS and usage: refused before connecting ---------------------------------------------------


def test_args_read_json_values_else_strings_and_a_bare_word_is_the_action() -> None:
    got = command_args(
        ["start", "version=1.1.0", "max_fps=2.5", "n=3", "x=null", "on=true", "name=",
         'thresholds={"person":0.7}', "word=NaN", "q=\"quoted\""]
    )  # fmt: skip
    assert got == {
        "action": "start", "version": "1.1.0", "max_fps": 2.5, "n": 3, "x": None, "on": True,
        "name": "", "thresholds": {"person": 0.7}, "word": "NaN", "q": "quoted",
    }  # fmt: skip
    assert command_args([]) == {}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["a=1", "a=2"], "'a' given twice"),
        (["start", "action=stop"], "'action' given twice"),
        (["start", "stop"], "one bare word only"),
        (["=1"], "the key must be"),
        (["bad-key=1"], "the key must be"),
    ],
)
def test_bad_args_are_input_errors(items: list[str], says: str) -> None:
    with pytest.raises(InputError, match=says):
        command_args(items)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["cam-1", "ping"], "argument device:ID|group:NAME|all"),
        (["device:", "ping"], "argument device:ID|group:NAME|all"),
        (["device:a/b", "ping"], "argument device:ID|group:NAME|all"),
        (["all", "Ping"], "is not a command"),
        (["all", "ping", "--ttl", "0"], "--ttl"),
        (["all", "ping", "--ttl", "90000"], "at most 86400 s"),
        (["all", "ping", "--timeout", "-1"], "--timeout"),
        (["all", "ping", "--expect", "0"], "--expect"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], says: str, command_keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["command", *argv, "--key", str(command_keys[0])])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and len(lines(err)) == 1, err


def test_missing_or_wrong_key_is_exit_2(
    command_keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["command", "all", "ping"])
    assert exited.value.code == 2 and "--key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["command", "all", "ping", "--key", str(tmp_path / "none.key")])
    assert exited.value.code == 2 and "no such file" in capsys.readouterr().err
    # A public key where the private one belongs: refused before the broker is tried.
    assert main(["command", "all", "ping", "--key", str(command_keys[1]), "--port", "1"]) == 2
    assert "not a PEM Ed25519 private key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["device:cam-1", "ping", "--expect", "2"], "--expect is for group:NAME or all"),
        (["all", "rate", "max_fps=1", "max_fps=2"], "'max_fps' given twice"),
        (["all", "results", *(f"k{i}=1" for i in range(40))], "not a command this CLI can send"),
        (["all", "config", f"pad={'x' * 20000}"], "devices take at most 16384"),
    ],
)
def test_input_errors_are_exit_2_without_a_broker(
    args: list[str], says: str, command_keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["command", *args, "--key", str(command_keys[0]), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(lines(err)) == 1 and "Traceback" not in err, err


def test_an_unreachable_broker_is_exit_1(
    command_keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["command", "all", "ping", "--key", str(command_keys[0]), "--port", "1"]) == 1
    assert "cannot reach the broker" in capsys.readouterr().err


# --- a scripted device: replies and chunks as the test orders them ------------------------------


class ScriptedDevice:
    """Opens each command as a device would, then answers as ``script`` says."""

    def __init__(self, broker: MosquittoBroker, pub: Path, name: str, script: str):
        self.name, self.script, self.trust = name, script, TrustStore([load_public_key(pub)])
        self.client = connect(BrokerAddress(broker.host, broker.port))
        self.client.on_message = self._on_command
        topics = [TOPICS.commands_all(), TOPICS.commands_device(name)]
        Subscriber(self.client).subscribe([(t, 1) for t in topics])
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
        self.jpeg, self.shot = jpeg, describe(jpeg, 200, 64, 48)

    def _on_command(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        scopes = {"all", f"device:{self.name}"}
        command = open_command(bytes(msg.payload), self.trust, scopes, time.time())
        # Out of paho's callback: publishing from it and waiting would stall the network loop.
        threading.Thread(target=self._answer, args=(command.id,), daemon=True).start()

    def _reply(self, cmd_id: str, state: str, result: dict | None = None) -> None:
        reply = {"id": cmd_id, "state": state, "at": time.time(), "device": self.name}
        if result is not None:
            reply["result"] = result
        self.client.publish(TOPICS.replies(self.name), json.dumps(reply), qos=1)

    def _chunks(self, cmd_id: str, skip: int | None = None, flip: int | None = None) -> None:
        for i, chunk in enumerate(split(self.jpeg, self.shot.chunk_bytes)):
            if i == flip:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
            if i != skip:
                self.client.publish(TOPICS.snapshot_chunk(self.name, cmd_id, i), chunk, qos=1)

    def _answer(self, cmd_id: str) -> None:
        self._reply(cmd_id, "accepted")
        done = {"snapshot": self.shot.model_dump()}
        if self.script == "chunks first":
            self._chunks(cmd_id)
            self._reply(cmd_id, "done", done)
        elif self.script == "reply first":
            self._reply(cmd_id, "done", done)
            self._chunks(cmd_id)
        elif self.script == "lose a chunk":
            self._chunks(cmd_id, skip=1)
            self._reply(cmd_id, "done", done)
        elif self.script == "alter a chunk":
            self._chunks(cmd_id, flip=2)
            self._reply(cmd_id, "done", done)
        elif self.script == "describe nothing":
            self._reply(cmd_id, "done", {"snapshot": {"bytes": -1}})
        elif self.script == "ping":
            self._reply(cmd_id, "done", {"pong": time.time()})

    def close(self) -> None:
        disconnect(self.client)


@pytest.fixture
def scripted(mosquitto: MosquittoBroker, command_keys: tuple[Path, Path]) -> Iterator:
    made: list[ScriptedDevice] = []

    def make(name: str, script: str) -> ScriptedDevice:
        made.append(ScriptedDevice(mosquitto, command_keys[1], name, script))
        return made[-1]

    yield make
    for device in made:
        device.close()


@pytest.mark.parametrize("script", ["chunks first", "reply first"])
def test_a_snapshot_is_put_together_whichever_comes_first(
    mosquitto, command_keys, scripted, tmp_path: Path, script: str
) -> None:  # type: ignore[no-untyped-def]
    device = scripted("cam-9", script)
    out = tmp_path / "shots"
    done = edgewise(mosquitto, command_keys[0], "device:cam-9", "snapshot", "--out", str(out))
    assert done.returncode == 0, done.stderr
    [path] = out.glob("cam-9-*.jpg")
    assert path.read_bytes() == device.jpeg
    assert lines(done.stdout) == ["cam-9  accepted", f"cam-9  done  saved {path} (64x48, "
                                  f"{len(device.jpeg)} bytes)"]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("lose a chunk", "snapshot incomplete: 1 of 4 chunks missing (1)"),
        ("alter a chunk", "snapshot sha256 "),
        ("describe nothing", "the reply describes no valid snapshot: "),
    ],
)
def test_a_bad_snapshot_fails_that_device_with_the_reason(
    mosquitto, command_keys, scripted, tmp_path: Path, script: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    scripted("cam-9", script)
    args = ["device:cam-9", "snapshot", "--out", str(tmp_path), "--timeout", "2"]
    done = edgewise(mosquitto, command_keys[0], *args)
    assert done.returncode == 1
    assert lines(done.stdout)[0] == "cam-9  accepted" and len(lines(done.stdout)) == 2
    assert lines(done.stdout)[1].startswith(f"cam-9  failed  {reason}"), done.stdout
    assert not list(tmp_path.glob("*.jpg")) and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.jpg")) and "Traceback" not in done.stderr


def test_all_gathers_every_device_until_expect(mosquitto, command_keys, scripted) -> None:  # type: ignore[no-untyped-def]
    scripted("cam-8", "ping")
    scripted("cam-9", "ping")
    done = edgewise(mosquitto, command_keys[0], "all", "ping", "--expect", "2", "--json")
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in lines(done.stdout)]
    assert sorted((r["device"], r["state"]) for r in replies) == [
        ("cam-8", "accepted"), ("cam-8", "done"), ("cam-9", "accepted"), ("cam-9", "done"),
    ]  # fmt: skip
    assert len({r["id"] for r in replies}) == 1 and "pong" in replies[-1]["result"]


def test_silence_is_exit_1_saying_what_to_check(mosquitto, command_keys) -> None:  # type: ignore[no-untyped-def]
    done = edgewise(mosquitto, command_keys[0], "device:cam-1", "ping", "--timeout", "0.5")
    assert done.returncode == 1 and done.stdout == ""
    assert "no reply to ping from device:cam-1 within 0.5 s" in done.stderr
    assert "[commands] public_keys" in done.stderr and len(lines(done.stderr)) == 1


# --- the real agent ------------------------------------------------------------------------------

PASSWORD = "s3cret-pw"


@pytest.fixture
def commanded(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path, command_keys
) -> Iterator[Device]:  # type: ignore[no-untyped-def]
    """The agent serving digits-cnn 1.0.0, trusting the command key, with a broker password."""
    install(compiled.package, tmp_path / "state")
    extra = f'{DEPLOY}\n[commands]\npublic_keys = ["{command_keys[1].resolve()}"]\n'
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip
    text = config.read_text().replace(
        "[mqtt]\n", f'[mqtt]\nusername = "u"\npassword = "{PASSWORD}"\n'
    )
    config.write_text(text)
    dev = Device(
        AgentProcess(config), DeviceFeed(cloud, TOPICS, DEVICE), config, tmp_path / "state"
    )
    assert dev.serving() == {"1.0.0"}, dev.agent.output()[-3000:]
    yield dev
    running = dev.agent.proc.poll() is None
    code = dev.agent.stop()
    assert not running or code == 0, dev.agent.output()[-3000:]
    assert "Traceback" not in dev.agent.output()


def ran(broker: MosquittoBroker, key: Path, *args: str, code: int = 0) -> list[str]:
    done = edgewise(broker, key, *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return lines(done.stdout)


def done_at(broker: MosquittoBroker, key: Path, *args: str) -> float:
    """Runs a command to ``done`` (JSON lines); when the device said it was done."""
    replies = [json.loads(line) for line in ran(broker, key, *args, "--json")]
    assert [r["state"] for r in replies] == ["accepted", "done"], replies
    return float(replies[-1]["at"])


def results_after(dev: Device, at: float, count: int) -> list[dict]:
    found = [
        dev.feed.wait_for("results", 20, lambda r: r["captured_at"] > at) for _ in range(count)
    ]
    assert all(r is not None for r in found), dev.agent.output()[-3000:]
    return found  # type: ignore[return-value]


def test_ping_status_config_and_shadow_status(mosquitto, command_keys, commanded) -> None:  # type: ignore[no-untyped-def]
    key = command_keys[0]
    accepted, done = ran(mosquitto, key, "device:cam-1", "ping")
    assert accepted == "cam-1  accepted" and done.startswith("cam-1  done  {")
    assert "pong" in json.loads(done.split("  ", 2)[2])
    [_, pong] = ran(mosquitto, key, "all", "ping", "--expect", "1", "--json")
    assert json.loads(pong)["device"] == "cam-1" and json.loads(pong)["state"] == "done"
    [_, status] = ran(mosquitto, key, "device:cam-1", "status")
    assert status.startswith("cam-1  done  {")
    assert json.loads(status.split("  ", 2)[2])["serving"]["version"] == "1.0.0"
    [_, config] = ran(mosquitto, key, "device:cam-1", "config")
    assert config.startswith("cam-1  done  {") and PASSWORD not in config
    assert json.loads(config.split("  ", 2)[2])["config"]["mqtt"]["password"] != PASSWORD
    [_, shadow] = ran(mosquitto, key, "device:cam-1", "shadow", "status")
    assert shadow.startswith("cam-1  done")


def test_results_mode_change_shows_in_the_results(mosquitto, command_keys, commanded) -> None:  # type: ignore[no-untyped-def]
    # Every frame first: each digit stays on screen for 3 frames, so labels repeat.
    before = results_after(commanded, 0, 12)
    assert any(a["label"] == b["label"] for a, b in pairwise(before))
    at = done_at(mosquitto, command_keys[0], "device:cam-1", "results", "mode=on_change")
    after = results_after(commanded, at, 12)
    assert all(a["label"] != b["label"] for a, b in pairwise(after)), after


def test_rate_caps_the_frames_inferred(mosquitto, command_keys, commanded) -> None:  # type: ignore[no-untyped-def]
    at = done_at(mosquitto, command_keys[0], "device:cam-1", "rate", "max_fps=2")
    after = results_after(commanded, at, 6)
    # 2 fps: five periods of 0.5 s, less the one frame a pause may catch up.
    assert after[-1]["captured_at"] - after[0]["captured_at"] >= 1.5, after
    done_at(mosquitto, command_keys[0], "device:cam-1", "rate", "max_fps=null")


def test_snapshot_is_written_and_decodes(mosquitto, command_keys, commanded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "shots"
    [_, done] = ran(mosquitto, command_keys[0], "device:cam-1", "snapshot", "--out", str(out))
    [path] = out.glob("cam-1-*.jpg")
    assert done.startswith(f"cam-1  done  saved {path} ({FRAME_SIZE}x{FRAME_SIZE}, ")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[:2] == (FRAME_SIZE, FRAME_SIZE)


def test_rollback_returns_to_the_previous_install(
    mosquitto, cloud, command_keys, commanded, v2
) -> None:  # type: ignore[no-untyped-def]
    publish(cloud, v2)
    commanded.deployment("active")
    assert commanded.feed.wait_for("results", 30, lambda r: r["model"]["version"] == "1.1.0")
    at = done_at(mosquitto, command_keys[0], "device:cam-1", "rollback")
    back = commanded.feed.wait_for(
        "results", 30, lambda r: r["captured_at"] > at and r["model"]["version"] == "1.0.0"
    )
    assert back is not None, commanded.agent.output()[-3000:]


def test_restart_answers_done_then_the_agent_exits_75(mosquitto, command_keys, commanded) -> None:  # type: ignore[no-untyped-def]
    lines_ = ran(mosquitto, command_keys[0], "device:cam-1", "restart")
    assert lines_[0] == "cam-1  accepted" and lines_[1].startswith("cam-1  done")
    assert commanded.agent.proc.wait(30) == 75, commanded.agent.output()[-3000:]


def test_an_untrusted_key_is_rejected_and_exit_1(mosquitto, commanded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    [rejected] = ran(mosquitto, tmp_path / "other.key", "device:cam-1", "ping", code=1)
    assert rejected.startswith("cam-1  rejected  ") and "trusted" in rejected, rejected
    assert commanded.serving() == {"1.0.0"}
