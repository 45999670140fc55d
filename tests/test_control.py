"""Signed commands on the real agent over a real Mosquitto: each command end to end, and ten
bad ones each rejected with its reason while the device serves on and runs none of them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from control_harness import Operator, command, command_keys, commands_section
from device_harness import DEPLOY, DEVICE, Device, install, start_device
from helpers import AgentProcess

from agent.contract.commands import sign_command
from agent.contract.signing import generate_keypair, load_private_key
from agent.contract.snapshot import Snapshot, assemble


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return command_keys(tmp_path / "command-keys")


@pytest.fixture
def commanded(  # type: ignore[no-untyped-def]
    mosquitto, cloud, compiled, signing_keys, video, tmp_path, keys
) -> Iterator[tuple[Device, Operator]]:
    """An agent serving digits-cnn 1.0.0 that trusts ``keys`` for commands, and its operator;
    it speaks MQTT 5, so replies carry the command's Correlation Data back."""
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY + commands_section(keys[1])
    env = {
        **os.environ,
        "EDGEWISE_MQTT__PASSWORD": "hunter2",
        "EDGEWISE_MQTT__USERNAME": "cam",
        "EDGEWISE_MQTT__PROTOCOL": "5",
    }
    device = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    device.agent.stop()  # started again with a password in its environment (redaction)
    device.agent = AgentProcess(device.config, env=env, log=tmp_path / "agent-5.log")
    assert device.serving() == {"1.0.0"}
    operator = Operator(mosquitto.port, keys[0])
    yield device, operator
    operator.close()
    device.agent.stop()


def test_ping_status_and_config(commanded) -> None:  # type: ignore[no-untyped-def]
    _device, operator = commanded
    pong = operator.run("ping")
    assert pong["state"] == "done" and pong["device"] == DEVICE and pong["result"]["pong"] > 0
    assert operator.correlations[pong["id"]] == pong["id"].encode()  # MQTT 5 request/response
    status = operator.run("status")["result"]
    assert status["serving"] == {"name": "digits-cnn", "version": "1.0.0"}
    assert status["results_published"] > 0
    config = operator.run("config")["result"]["config"]
    assert config["mqtt"]["password"] == "<redacted>" and config["mqtt"]["username"] == "cam"
    assert "hunter2" not in json.dumps(config)
    assert config["device"]["id"] == DEVICE


def test_results_and_rate_change_what_is_published(commanded) -> None:  # type: ignore[no-untyped-def]
    device, operator = commanded
    reply = operator.run("results", {"mode": "threshold", "thresholds": {"1": 1.01}})
    assert reply["state"] == "done", reply
    assert reply["result"]["results"]["thresholds"] == {"1": 1.01}
    # Once applied, no result labelled "1" passes its own threshold of 1.01; the others do.
    after = [
        device.feed.wait_for("results", 10, lambda r: r["published_at"] > reply["at"])
        for _ in range(40)
    ]
    labels = {r["label"] for r in after if r is not None}
    assert None not in after and "1" not in labels and len(labels) >= 3, labels
    assert operator.run("rate", {"max_fps": 2})["result"] == {"max_fps": 2}
    assert operator.run("config")["result"]["config"]["runtime"]["max_fps"] == 2
    assert operator.run("rate", {"max_fps": None})["state"] == "done"


def test_snapshot_arrives_whole(commanded, video: Path) -> None:  # type: ignore[no-untyped-def]
    _device, operator = commanded
    reply = operator.run("snapshot", {"quality": 90})
    assert reply["state"] == "done", reply
    snapshot = Snapshot.model_validate(reply["result"]["snapshot"])
    jpeg = assemble(snapshot, operator.chunks[reply["id"]])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    height, width = cv2.VideoCapture(str(video)).read()[1].shape[:2]
    assert image.shape[:2] == (height, width) == (snapshot.height, snapshot.width)


def test_restart_exits_75_after_replying(commanded) -> None:  # type: ignore[no-untyped-def]
    device, operator = commanded
    assert operator.run("restart")["state"] == "done"
    assert device.agent.proc.wait(15) == 75


def test_rollback_without_a_previous_version_fails_and_serving_goes_on(commanded) -> None:  # type: ignore[no-untyped-def]
    device, operator = commanded
    reply = operator.run("rollback")
    assert reply["state"] == "failed" and "no previous version" in reply["reason"]
    assert device.serving() == {"1.0.0"}


def test_ten_bad_commands_are_each_rejected_with_their_reason(commanded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device, operator = commanded
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    stranger = load_private_key(tmp_path / "other.key")
    replayed = command("restart", {})
    now = replayed.issued_at
    incomplete = command("restart").model_dump(mode="json")
    del incomplete["expires_at"]
    cases = {
        "bad signature": (sign_command(command("restart"), stranger), "not signed by a key"),
        "expired": (command("restart", issued_at=now - 120, expires_at=now - 60), "expired"),
        "replayed id": (replayed, "replay"),
        "unknown command": (command("selfdestruct"), "unknown command 'selfdestruct'"),
        "wrong args": (command("rate", {"max_fps": "fast"}), "bad args"),
        "oversized": (command("restart", {"pad": "x" * 20_000}), "bytes (at most"),
        "for another device": (command("restart", target="device:cam-2"), "not this device"),
        "garbage bytes": (b"}{" + os.urandom(150).hex().encode(), "not a signed command"),
        "non-UTF-8": (b'{"payload": "\xff\xfe"}', "utf-8"),
        "missing fields": (operator.sign_raw(incomplete), "expires_at"),
    }
    # The replayed command runs once, before: a restart that must not happen a second time.
    replayed_ping = command("ping", id=replayed.id)
    operator.send(replayed_ping)
    assert operator.final(replayed.id)["state"] == "done"
    cases["replayed id"] = (replayed_ping, "replay")
    for name, (what, reason) in cases.items():
        operator.publish(what if isinstance(what, bytes) else operator.sign(what))
        reply = operator.final()
        assert reply["state"] == "rejected", (name, reply)
        assert reason.lower() in reply["reason"].lower(), (name, reply["reason"])
    assert device.agent.proc.poll() is None, "a bad command stopped the agent"
    assert device.serving() == {"1.0.0"}
    assert operator.run("ping")["state"] == "done"
