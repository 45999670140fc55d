"""Issue 12 on a real agent and a real Mosquitto: nothing a broker delivers on a deploy topic
silences the deployer, echoes itself back, or leaves files behind."""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, Device, install, publish, send
from forge import package_from, resign, sign_raw
from helpers import AgentProcess

from agent.contract import ClassificationSpec, canonical_json, iter_chunks
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.push import push_package
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config

GROUP = "g1"
FILLER = b"Zq"  # a payload's filler, never to be seen again in a reason


def start(mosquitto, cloud, signing_keys, video, tmp_path, *, extra=DEPLOY, home=None,  # type: ignore[no-untyped-def]
          prelude=None, environ=None) -> Device:  # fmt: skip
    """The real agent, in group g1, with HOME where the test says (to see what is written)."""
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]], video=video,
        state=tmp_path / "state", device=DEVICE, extra=extra,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    env["EDGEWISE_DEVICE__GROUPS"] = f'["{GROUP}"]'
    if home is not None:
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    env.update(environ or {})
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    return Device(AgentProcess(config, env=env, prelude=prelude), feed, config, tmp_path / "state")


def next_rejection(device: Device, timeout: float = 60) -> dict[str, Any]:
    event = device.deployment("rejected", timeout)
    assert device.agent.proc.poll() is None, device.agent.output()[-3000:]
    return event


def retained_status(mosquitto, until, timeout: float = 20, kind: str = "status") -> bytes:  # type: ignore[no-untyped-def]
    """The device's retained status (or telemetry) once ``until(message)`` holds."""
    got: queue.Queue[bytes] = queue.Queue()
    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    client.on_message = lambda _c, _u, msg: got.put(msg.payload)
    client.subscribe(getattr(TOPICS, kind)(DEVICE), 1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            payload = got.get(timeout=max(0.0, deadline - time.monotonic()))
            if until(json.loads(payload)):
                return payload
    finally:
        disconnect(client)


def stop(device: Device) -> str:
    code = device.agent.stop()
    output = device.agent.output()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


# --- the issue's eight messages --------------------------------------------------------------


def eight_rows(compiled, signing_keys, tmp_path: Path) -> list[tuple[str, Any, str]]:  # type: ignore[no-untyped-def]
    """(what, payload bytes or a package to publish with its chunks, what the reason says)."""
    key = signing_keys[0]
    base = package_from(compiled.package, tmp_path / "p0", key, version="2.0.0")
    envelope = json.loads(base.envelope)

    def with_sig(value: object) -> bytes:
        envelope["signatures"][0]["sig"] = value
        return canonical_json(envelope)

    labels = resign(base, key, postprocess=ClassificationSpec(labels=("a", "b")))
    uint8 = package_from(compiled.package, tmp_path / "p1", key, version="2.0.1")
    uint8 = resign(uint8, key, input=uint8.manifest.input.model_copy(update={"dtype": "uint8"}))
    objects = tmp_path / "objects.npz"
    np.savez(objects, inputs=np.array([{"pickled": True}], dtype=object), outputs=np.zeros(10))
    pickled = package_from(compiled.package, tmp_path / "p2", key, version="2.0.2", golden=objects)
    return [
        ('"sig": null', with_sig(None), "as strings"),
        ('"sig": 5', with_sig(5), "as strings"),
        ("NaN", b'{"manifest": {"golden_atol": NaN}, "signatures": []}', "NaN is not JSON"),
        ("lone surrogate", b'{"manifest": {"name": "\\ud800"}, "signatures": []}', "surrogate"),
        ("1,000-deep nesting", b"[" * 1000 + b"]" * 1000, "nested deeper"),
        ("2 labels for 10 scores", labels, "10 scores for 2 labels"),
        ("uint8 input for a float model", uint8, "input dtype uint8"),
        ("golden file of pickled objects", pickled, "not an npz of plain arrays"),
    ]


def test_the_deployer_survives_each_row_of_the_issue_then_installs(
    mosquitto, cloud, compiled, v2, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    home = tmp_path / "home"
    home.mkdir()
    telemetry = DEPLOY + "\n[telemetry]\ninterval_s = 0.5\n"
    device = start(mosquitto, cloud, signing_keys, video, tmp_path, home=home, extra=telemetry)
    try:
        assert device.serving() == {"1.0.0"}
        for what, payload, says in eight_rows(compiled, signing_keys, tmp_path):
            if isinstance(payload, bytes):  # unsigned: on the group topic, as anyone there could
                cloud.publish(TOPICS.deploy_group(GROUP), payload, qos=1, retain=True)
            else:
                publish(cloud, payload)
            reason = next_rejection(device)["reason"]
            assert says in reason and len(reason) <= 256, (what, reason)
        counted = lambda m: m.get("messages_rejected_total", 0) >= 8  # noqa: E731
        retained_status(mosquitto, counted, kind="telemetry")  # every rejection is counted
        assert device.serving() == {"1.0.0"}
        push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
        assert device.deployment("active")["model"]["version"] == "1.1.0"
    finally:
        output = stop(device)
    assert output.count("rejected deployment") == 8
    assert not list(home.rglob("*")), "something wrote under HOME (ONNX Runtime's telemetry?)"


# --- reasons never echo a payload --------------------------------------------------------------


def test_a_megabyte_of_bad_payload_comes_back_as_a_short_reason(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY + "max_manifest_bytes = 2097152\n"  # let 1 MB payloads through to the parser
    device = start(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    megabyte = FILLER * 500_000
    body = compiled.package.manifest.to_dict() | {"version": "2.0.0"}
    payloads = [
        FILLER * 1_500_000,  # over the limit: dropped in paho's callback
        canonical_json({"manifest": {}, "signatures": [
            {"key_id": megabyte.decode(), "alg": "ed25519", "sig": "AAAA"}]}),
        b'{"manifest": "' + megabyte + b'", "signatures": []}',
        sign_raw(body | {"postprocess": {"labels": [megabyte.decode()]}}, signing_keys[0]),
        sign_raw(body | {megabyte.decode(): 1}, signing_keys[0]),
    ]  # fmt: skip
    try:
        assert device.serving() == {"1.0.0"}
        reasons = []
        for payload in payloads:
            assert len(payload) >= 1_000_000
            send(cloud, payload)
            event = next_rejection(device)
            reasons.append(event["reason"])
            assert len(event["reason"]) <= 256 and "ZqZqZqZqZqZq" not in event["reason"], event
            assert len(json.dumps(event)) <= 2048
        assert "message of 3000000 bytes, sha256 " in reasons[0]
        assert "max_manifest_bytes" in reasons[0]
        status = retained_status(
            mosquitto, lambda s: (s.get("deployment") or {}).get("reason") == event["reason"]
        )
        assert len(status) <= 2048 and b"ZqZqZqZqZqZq" not in status
    finally:
        stop(device)


# --- incoming/ holds the current download and nothing else ------------------------------------


def stalled(cloud, compiled, signing_keys, tmp_path: Path, version: str, published: int = 5):  # type: ignore[no-untyped-def]
    """A package of a 3 MB model in 64 KiB chunks, only the first ``published`` of them on the
    broker: its download starts, then stalls."""
    model = tmp_path / f"big-{version}.onnx"
    model.write_bytes(os.urandom(3_000_000))
    package = package_from(
        compiled.package, tmp_path / f"p-{version}", signing_keys[0], version=version,
        model=model, golden=None, chunk_size=64 * 1024,
    )  # fmt: skip
    blob = package.manifest.model
    for index, chunk in enumerate(iter_chunks(package.model_path, blob.chunk_size)):
        if index == published:
            break
        topic = TOPICS.blob_chunk(blob.sha256, index)
        cloud.publish(topic, chunk, qos=1, retain=True).wait_for_publish(5)
    return package


def wait_until(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll a file-system condition (no event marks it) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def incoming(device: Device) -> list[str]:
    return sorted(p.name for p in (device.state / "incoming").iterdir())


def test_incoming_is_emptied_when_a_download_is_superseded_or_withdrawn(
    mosquitto, cloud, compiled, v2, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY.replace("fetch_timeout = 4", "fetch_timeout = 120")
    device = start(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    try:
        assert device.serving() == {"1.0.0"}
        first = stalled(cloud, compiled, signing_keys, tmp_path, "2.0.0")
        send(cloud, first.envelope)
        device.deployment("downloading")
        partial = device.state / "incoming" / f"{first.manifest.model.sha256}.part"
        wait_until(lambda: partial.exists() and partial.stat().st_size >= 5 * 65536, "5 chunks")
        # The manifest claims 3,000,000 bytes; the file holds what arrived, nothing preallocated.
        assert partial.stat().st_size == 5 * 65536
        assert partial.stat().st_blocks * 512 <= 6 * 65536
        push_package(cloud, TOPICS, v2, f"device:{DEVICE}")  # supersedes the stalled download
        assert device.deployment("active")["model"]["version"] == "1.1.0"
        assert incoming(device) == []
        second = stalled(cloud, compiled, signing_keys, tmp_path, "3.0.0")
        send(cloud, second.envelope)
        partial = device.state / "incoming" / f"{second.manifest.model.sha256}.part"
        wait_until(lambda: partial.exists() and partial.stat().st_size >= 5 * 65536, "5 chunks")
        send(cloud, b"")  # withdrawn
        wait_until(lambda: not incoming(device), "incoming/ emptied after the withdrawal")
        assert device.serving() == {"1.1.0"}
    finally:
        stop(device)


def test_incoming_is_emptied_when_a_download_is_refused_or_times_out(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    device = start(mosquitto, cloud, signing_keys, video, tmp_path)  # fetch_timeout = 4
    try:
        assert device.serving() == {"1.0.0"}
        refused = package_from(compiled.package, tmp_path / "r", signing_keys[0], version="2.0.0")
        blob = refused.manifest.model
        for index, chunk in enumerate(iter_chunks(refused.model_path, blob.chunk_size)):
            chunk = bytes([chunk[0] ^ 1]) + chunk[1:] if index == 1 else chunk
            cloud.publish(TOPICS.blob_chunk(blob.sha256, index), chunk, qos=1, retain=True)
        send(cloud, refused.envelope)
        assert "chunk 1 failed its sha256 check twice" in next_rejection(device)["reason"]
        assert incoming(device) == []
        timed_out = stalled(cloud, compiled, signing_keys, tmp_path, "2.0.1")
        send(cloud, timed_out.envelope)
        assert "chunks missing" in next_rejection(device)["reason"]
        assert incoming(device) == []
        assert not list((device.state / "models").glob("*/*.staging"))
    finally:
        stop(device)


# --- the quarantine holds a manifest, not a version -------------------------------------------


def test_a_corrected_manifest_with_the_same_version_installs(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    device = start(mosquitto, cloud, signing_keys, video, tmp_path)
    golden = np.load(compiled.package.root / "golden.npz")
    bad = package_from(
        compiled.package, tmp_path / "bad", signing_keys[0], version="2.0.0",
        golden=(golden["inputs"], golden["outputs"] + 1.0),
    )  # fmt: skip
    fixed = package_from(compiled.package, tmp_path / "fixed", signing_keys[0], version="2.0.0")
    assert bad.manifest.model == fixed.manifest.model  # same name, version and model file
    try:
        assert device.serving() == {"1.0.0"}
        publish(cloud, bad)
        assert "golden" in next_rejection(device)["reason"]
        publish(cloud, fixed)
        assert device.deployment("active")["model"]["version"] == "2.0.0"
    finally:
        stop(device)


# --- a deployer that dies anyway is noticed ----------------------------------------------------


@pytest.mark.parametrize(("mode", "says"), [("crash", "crashed: Fatal"), ("vanish", "ended")])
def test_a_deployer_that_dies_anyway_stops_the_agent_with_exit_1(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path, mode: str, says: str
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    runner = Path(__file__).with_name("agent_with_broken_deployer.py")
    device = start(
        mosquitto, cloud, signing_keys, video, tmp_path, prelude=[sys.executable, str(runner)],
        environ={"BROKEN_DEPLOYER": mode},
    )  # fmt: skip
    try:
        assert device.serving() == {"1.0.0"}
        send(cloud, b"{}")
        code = device.agent.proc.wait(30)
    finally:
        device.agent.stop()
    output = device.agent.output()
    assert code == 1, output[-3000:]
    lines = [line for line in output.splitlines() if "thread deployer" in line]
    assert len(lines) == 1 and says in lines[0], output[-3000:]
    assert "Traceback" not in output


# --- memory under a flood ------------------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def test_a_flood_of_big_deploy_messages_leaves_memory_flat(
    mosquitto, cloud, compiled, v2, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    # One backend: with "auto" a busy machine's probe may pick OpenVINO for 1.1.0, whose runtime
    # then loads into the agent (~100 MB) and would be counted as the flood's.
    pinned = {"EDGEWISE_RUNTIME__BACKEND": "onnxruntime"}
    device = start(mosquitto, cloud, signing_keys, video, tmp_path, environ=pinned)
    big = os.urandom(8 * 2**20)
    try:
        assert device.serving() == {"1.0.0"}
        before = memory_mb(device.agent.proc.pid)
        for i in range(40):  # the issue's flood: 40 x 8 MiB on subscribed topics
            topic = TOPICS.deploy_device(DEVICE) if i % 2 else TOPICS.deploy_group(GROUP)
            cloud.publish(topic, big, qos=1).wait_for_publish(30)
        assert "message of 8388608 bytes" in next_rejection(device)["reason"]  # it got there
        # In order behind the flood on the same connection: once it is active, all was read.
        push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
        assert device.deployment("installed", timeout=120)["backend"] == "onnxruntime"
        assert device.deployment("active", timeout=120)["model"]["version"] == "1.1.0"
        after = memory_mb(device.agent.proc.pid)
    finally:
        stop(device)
    print(f"agent memory before {before}, after {after} (MB)")
    # The flood and the install of 1.1.0 may add at most 60 MB to the peak: the agent's own
    # baseline varies with the machine's load (113-166 MB seen), the flood's cost must not.
    assert after["VmHWM"] - before["VmHWM"] <= 60, (before, after)
    assert after["VmRSS"] - before["VmRSS"] <= 40, (before, after)
