"""Model delivery on a real Mosquitto: every bad push is refused with a reason while the old
model keeps serving; transfers resume; kill -9 never leaves a partial model; swaps drop no frame."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import bad_models
import numpy as np
import pytest
from device_harness import DEPLOY, DEVICE, TOPICS, install, publish, send, start_device
from forge import edited, package_from, resign, sign_raw
from onnx_models import flaky_model

from agent.contract import generate_keypair, iter_chunks
from agent.delivery.store import ModelStore
from agent.inference.backends import installed as installed_backends
from compiler.fleet.push import push_package

# --- a good push -------------------------------------------------------------------------------


def test_push_swaps_in_a_newer_version(device, cloud, v2) -> None:  # type: ignore[no-untyped-def]
    push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
    events = [device.deployment(s) for s in ("downloading", "verifying", "installed", "active")]
    assert [e["state"] for e in events] == ["downloading", "verifying", "installed", "active"]
    installed = events[2]  # the backend the probe chose, and every installed one's figures
    assert list(installed["backends"]) == installed_backends()
    chosen = installed["backends"][installed["backend"]]
    assert chosen["p50_ms"] == pytest.approx(installed["latency_p50_ms"], abs=1e-3)
    deadline = time.monotonic() + 20
    while "1.1.0" not in device.serving(1) and time.monotonic() < deadline:
        pass
    assert device.serving() == {"1.1.0"}
    assert os.readlink(device.state / "current").endswith("1.1.0")
    assert os.readlink(device.state / "previous").endswith("1.0.0")


# --- bad pushes: refused, reported, old model keeps serving, agent stays up ---------------------


def test_bad_signature(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    data = json.loads(package.envelope)
    sig = bytearray(__import__("base64").b64decode(data["signatures"][0]["sig"]))
    sig[5] ^= 0xFF
    data["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
    publish(cloud, package, json.dumps(data).encode())
    assert "does not verify" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_unknown_key(device, cloud, compiled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    package = package_from(
        compiled.package, tmp_path / "p", tmp_path / "rogue.key", version="2.0.0"
    )
    publish(cloud, package)
    assert "untrusted key" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_manifest_edited_after_signing(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    publish(cloud, package, edited(package.envelope, max_latency_ms=1e9))
    assert "does not verify" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_chunk_hash_mismatch(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    model = package.manifest.model
    for index, chunk in enumerate(iter_chunks(package.model_path, model.chunk_size)):
        if index == 1:
            chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
        cloud.publish(TOPICS.blob_chunk(model.sha256, index), chunk, qos=1, retain=True)
    send(cloud, package.envelope)
    assert "chunk 1 failed its sha256 check" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_whole_file_hash_mismatch(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    forged = resign(
        package,
        signing_keys[0],
        model=package.manifest.model.model_copy(update={"sha256": "ab" * 32}),
    )
    publish(cloud, forged)
    assert "sha256" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_truncated_model(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", chunk_size=32 * 1024
    )
    model = package.manifest.model
    chunks = list(iter_chunks(package.model_path, model.chunk_size))
    for index, chunk in enumerate(chunks[: len(chunks) // 2]):  # the upload stopped half way
        cloud.publish(TOPICS.blob_chunk(model.sha256, index), chunk, qos=1, retain=True)
    send(cloud, package.envelope)
    reason = device.rejected()
    assert "chunks missing" in reason and f"of {len(chunks)}" in reason
    assert device.serving() == {"1.0.0"}


def test_extra_chunks(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    body = package.manifest.to_dict()
    body["model"]["chunks"] = [*body["model"]["chunks"], "cd" * 32]
    send(cloud, sign_raw(body, signing_keys[0]))
    assert "chunk" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_size_over_the_configured_limit(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(9_000_000))
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=big
    )
    send(cloud, package.envelope)  # refused before a single chunk is asked for
    assert "max_model_bytes" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_replayed_older_version(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="0.9.0")
    publish(cloud, old)
    assert "replay" in device.rejected()
    assert device.serving() == {"1.0.0"}
    assert ModelStore(device.state).quarantined(old.manifest) is not None


def test_not_an_onnx_model(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = bad_models.not_onnx(tmp_path / "junk.onnx")
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=junk
    )
    publish(cloud, package)
    assert "not a loadable ONNX model" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_input_that_does_not_fit_the_source(
    device, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    model = bad_models.wrong_input_model(tmp_path / "rgb32.onnx")
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=model,
        golden=None,
    )  # fmt: skip
    publish(cloud, package)
    assert "does not fit" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_golden_health_check_fails(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    golden = np.load(compiled.package.root / "golden.npz")
    wrong = (golden["inputs"], golden["outputs"] + 1.0)
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", golden=wrong
    )
    publish(cloud, package)
    assert "golden" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_model_that_crashes_the_loader(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = bad_models.memory_hog_model(tmp_path / "hog.onnx")
    package = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=model,
        golden=None,
    )  # fmt: skip
    publish(cloud, package)
    reason = device.rejected(timeout=60)
    assert "memory" in reason or "crashed" in reason
    assert device.serving() == {"1.0.0"}


def hanging_package(compiled, signing_keys, tmp_path):  # type: ignore[no-untyped-def]
    model = bad_models.hanging_model(tmp_path / "hang.onnx")
    return package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=model,
        golden=None,
    )  # fmt: skip


def test_model_that_hangs_the_loader(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    publish(cloud, hanging_package(compiled, signing_keys, tmp_path))
    assert "hung" in device.rejected(timeout=60)
    assert device.serving() == {"1.0.0"}


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe\x00garbage", b'{"manifest": 1}'])
def test_malformed_payloads(device, cloud, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    send(cloud, payload)
    assert "not a signed manifest envelope" in device.rejected()
    assert device.serving() == {"1.0.0"}


@pytest.mark.parametrize(
    ("field", "value"), [("name", "../../etc"), ("name", "a/b"), ("name", "x..y")]
)
def test_names_that_could_escape_the_state_dir(
    device, cloud, compiled, signing_keys, field, value
) -> None:  # type: ignore[no-untyped-def]
    body = compiled.package.manifest.to_dict() | {field: value, "version": "2.0.0"}
    send(cloud, sign_raw(body, signing_keys[0]))
    assert field in device.rejected()
    assert device.serving() == {"1.0.0"}
    assert not (device.state.parent / "etc").exists()


def test_model_path_with_separators(device, cloud, compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    body = compiled.package.manifest.to_dict() | {"version": "2.0.0"}
    body["model"] = body["model"] | {"path": "../../model.onnx"}
    send(cloud, sign_raw(body, signing_keys[0]))
    assert "path" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_manifest_for_another_device(device, cloud, compiled, signing_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0")
    for_other = resign(package, signing_keys[0], target="device:cam-2")
    publish(cloud, for_other)
    assert "signed for device:cam-2" in device.rejected()
    assert device.serving() == {"1.0.0"}


# --- targets, quarantine, rollback ------------------------------------------------------------


def test_device_deployment_beats_group_and_fleet(device, cloud, compiled, v2, signing_keys) -> None:  # type: ignore[no-untyped-def]
    push_package(cloud, TOPICS, v2, "all", signing_key=signing_keys[0])
    device.deployment("active")
    assert "1.1.0" in device.serving(10)
    # A signed rollback on the device's own topic outranks the fleet-wide 1.1.0.
    push_package(
        cloud,
        TOPICS,
        compiled.package,
        f"device:{DEVICE}",
        signing_key=signing_keys[0],
        rollback=True,
    )
    assert device.deployment("active")["model"]["version"] == "1.0.0"
    deadline = time.monotonic() + 10
    while device.serving(1) != {"1.0.0"} and time.monotonic() < deadline:
        pass
    assert device.serving() == {"1.0.0"}
    assert device.feed.wait_for("events", 2, lambda e: e.get("state") == "downloading") is None


def test_failed_version_is_quarantined_across_restarts(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    golden = np.load(compiled.package.root / "golden.npz")
    bad = package_from(
        compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0",
        golden=(golden["inputs"], golden["outputs"] + 1.0),
    )  # fmt: skip
    publish(cloud, bad)
    dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path)
    assert "golden" in dev.rejected()
    dev.agent.stop()
    again = start_device(mosquitto, cloud, signing_keys, video, tmp_path)
    try:
        assert again.serving() == {"1.0.0"}
        assert again.feed.wait_for("events", 3, lambda e: e.get("type") == "deployment") is None
    finally:
        again.agent.stop()
    assert "is quarantined" in again.agent.output()


def test_model_too_slow_for_the_device_never_goes_live(device, cloud, v2, signing_keys) -> None:  # type: ignore[no-untyped-def]
    slow = resign(v2, signing_keys[0], max_latency_ms=1e-4)  # a budget no board meets
    publish(cloud, slow)
    reason = device.rejected()
    assert "too slow for this device" in reason and "p99" in reason and "RSS" in reason
    assert device.serving() == {"1.0.0"}


def test_model_too_big_for_the_device_memory_budget(
    mosquitto, cloud, compiled, v2, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    extra = DEPLOY + "max_memory_mb = 10\n"  # no ONNX Runtime process fits in 10 MB
    dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path, extra=extra)
    try:
        assert dev.serving() == {"1.0.0"}
        publish(cloud, v2)
        reason = dev.rejected()
        assert "too big for this device" in reason and "10 MB" in reason
        assert dev.serving() == {"1.0.0"}
    finally:
        dev.agent.stop()


def test_needs_a_newer_agent(device, cloud, v2, signing_keys) -> None:  # type: ignore[no-untyped-def]
    publish(cloud, resign(v2, signing_keys[0], min_agent_version="99.0.0"))
    assert "needs agent >= 99.0.0" in device.rejected()
    assert device.serving() == {"1.0.0"}


def test_probation_rolls_back_a_model_that_fails_on_live_frames(
    mosquitto, cloud, compiled, signing_keys, video, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    dev = start_device(
        mosquitto, cloud, signing_keys, video, tmp_path,
        extra=DEPLOY.replace("probation_s = 0", "probation_s = 10"),
    )  # fmt: skip
    try:
        assert dev.serving() == {"1.0.0"}
        model = flaky_model(tmp_path / "flaky.onnx")
        package = package_from(
            compiled.package, tmp_path / "p", signing_keys[0], version="2.0.0", model=model,
            golden=None,
        )  # fmt: skip
        publish(cloud, package)
        dev.deployment("active")
        event = dev.deployment("rolled_back")
        assert "error rate" in event["reason"] and event["restored"] == "1.0.0"
        assert dev.serving() == {"1.0.0"}
        assert os.readlink(dev.state / "current").endswith("1.0.0")
        assert ModelStore(dev.state).quarantined(package.manifest) is not None
    finally:
        dev.agent.stop()


def test_sigterm_during_a_probe_kills_it_and_quarantines_nothing(
    device, cloud, compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    publish(cloud, hanging_package(compiled, signing_keys, tmp_path))
    device.deployment("verifying")
    deadline = time.monotonic() + 10
    while not (probes := probe_children(device.agent.proc.pid)):  # no event marks a fork
        assert time.monotonic() < deadline, "no probe child started"
        time.sleep(0.05)
    began = time.monotonic()
    device.agent.proc.send_signal(signal.SIGTERM)
    assert device.agent.proc.wait(10) == 0
    assert time.monotonic() - began < 5
    assert not any(Path(f"/proc/{pid}").exists() for pid in probes), (
        "probe child outlived the agent"
    )
    quarantine = device.state / "quarantine.json"
    assert not quarantine.exists() or "2.0.0" not in quarantine.read_text()


def probe_children(parent: int) -> list[int]:
    """Pids of ``python -m agent.delivery.probe`` processes whose parent is ``parent``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(parent) and b"agent.delivery.probe" in cmdline:
            found.append(int(status.parent.name))
    return found
