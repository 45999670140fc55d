"""``edgewise gc`` and ``edgewise withdraw`` on a private Mosquitto, and ``push --wait``'s own
clean-up against the real agent: chunks no retained manifest references are cleared, those in
use are kept, ``--dry-run`` changes nothing, and a withdrawn deployment leaves devices serving."""

from __future__ import annotations

import os
import subprocess

from device_harness import DEVICE, TOPICS
from helpers import run_edgewise

from agent.contract import Package
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.gc import Inventory, collect
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.push import push_package


def edgewise(
    broker: MosquittoBroker, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_edgewise(broker.host, broker.port, *args, timeout=timeout)


def inventory(broker: MosquittoBroker) -> Inventory:
    client = connect(BrokerAddress(broker.host, broker.port))
    try:
        return collect(client, TOPICS)
    finally:
        disconnect(client)


def shas(package: Package) -> set[str]:
    return {blob.sha256 for blob in package.manifest.blobs}


def chunk_topics(package: Package, only: set[str]) -> int:
    return sum(len(blob.chunks) for blob in package.manifest.blobs if blob.sha256 in only)


def test_gc_clears_a_superseded_version_and_keeps_the_current(
    mosquitto, cloud, compiled, v2
) -> None:  # type: ignore[no-untyped-def]
    v1 = compiled.package
    push_package(cloud, TOPICS, v1, f"device:{DEVICE}")
    push_package(cloud, TOPICS, v2, f"device:{DEVICE}")  # replaces v1's retained manifest
    old = shas(v1) - shas(v2)
    assert old and set(inventory(mosquitto).chunks) == shas(v1) | shas(v2)

    run = edgewise(mosquitto, "gc")
    assert run.returncode == 0, run.stderr
    assert run.stdout == (
        f"removed {chunk_topics(v1, old)} chunk topics of {len(old)} blobs; "
        f"kept {len(shas(v2))} blobs in use\n"
    )
    left = inventory(mosquitto)
    assert set(left.chunks) == shas(v2)  # 0 chunk topics of the superseded version
    assert all(len(left.chunks[b.sha256]) == len(b.chunks) for b in v2.manifest.blobs)
    # Again: nothing more to do.
    again = edgewise(mosquitto, "gc")
    assert again.stdout == f"removed 0 chunk topics of 0 blobs; kept {len(shas(v2))} blobs in use\n"


def test_gc_dry_run_changes_nothing(mosquitto, cloud, compiled, v2) -> None:  # type: ignore[no-untyped-def]
    v1 = compiled.package
    push_package(cloud, TOPICS, v1, f"device:{DEVICE}")
    push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
    before = inventory(mosquitto)
    old = shas(v1) - shas(v2)
    run = edgewise(mosquitto, "gc", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(
        f"would remove {chunk_topics(v1, old)} chunk topics of {len(old)} blobs"
    )
    assert inventory(mosquitto).chunks == before.chunks


def test_gc_keeps_a_version_another_target_still_uses(mosquitto, cloud, compiled, v2) -> None:  # type: ignore[no-untyped-def]
    push_package(cloud, TOPICS, compiled.package, "group:lobby")
    push_package(cloud, TOPICS, v2, f"device:{DEVICE}")
    run = edgewise(mosquitto, "gc")
    kept = len(shas(compiled.package) | shas(v2))
    assert run.stdout == f"removed 0 chunk topics of 0 blobs; kept {kept} blobs in use\n"
    assert set(inventory(mosquitto).chunks) == shas(compiled.package) | shas(v2)


def test_withdraw_clears_the_deploy_topic_and_the_chunks_only_it_used(  # type: ignore[no-untyped-def]
    mosquitto, cloud, compiled, v2
) -> None:
    push_package(cloud, TOPICS, compiled.package, f"device:{DEVICE}")
    push_package(cloud, TOPICS, v2, "all")
    old = shas(compiled.package) - shas(v2)
    run = edgewise(mosquitto, "withdraw", f"device:{DEVICE}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"withdrew the deployment of device:{DEVICE} ({TOPICS.deploy_device(DEVICE)})",
        f"removed {chunk_topics(compiled.package, old)} chunk topics of {len(old)} blobs; "
        f"kept {len(shas(v2))} blobs in use",
    ]
    left = inventory(mosquitto)
    assert set(left.manifests) == {TOPICS.deploy_all()}
    assert set(left.chunks) == shas(v2)

    again = edgewise(mosquitto, "withdraw", f"device:{DEVICE}")
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == (
        f"device:{DEVICE}: no deployment was retained on {TOPICS.deploy_device(DEVICE)}; "
        "nothing withdrawn"
    )


def test_withdraw_of_a_bad_target_is_one_line_exit_2(mosquitto) -> None:  # type: ignore[no-untyped-def]
    run = edgewise(mosquitto, "withdraw", "device:a.b")
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and "rename the device" in run.stderr
    assert "Traceback" not in run.stderr


def test_push_wait_cleans_up_once_active_and_withdraw_leaves_the_device_serving(  # type: ignore[no-untyped-def]
    device, mosquitto, cloud, compiled, v2
) -> None:
    # v1's chunks are on the broker (the device already serves it, so it ignores them).
    push_package(cloud, TOPICS, compiled.package, f"device:{DEVICE}")
    old = shas(compiled.package) - shas(v2)
    run = edgewise(mosquitto, "push", str(v2.root), "--to", f"device:{DEVICE}", "--wait", "90")
    assert run.returncode == 0, run.stdout + run.stderr + device.agent.output()[-3000:]
    assert run.stdout.splitlines()[1:] == [
        f"{DEVICE}: active",
        f"gc after digits-cnn 1.1.0 went active: "
        f"removed {chunk_topics(compiled.package, old)} chunk topics of {len(old)} blobs; "
        f"kept {len(shas(v2))} blobs in use",
    ]
    assert set(inventory(mosquitto).chunks) == shas(v2)

    withdrawn = edgewise(mosquitto, "withdraw", f"device:{DEVICE}")
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert inventory(mosquitto).chunks == {}
    assert os.readlink(device.state / "current").endswith("1.1.0")  # it keeps what it runs
    assert device.agent.proc.poll() is None
    assert "WARNING" not in device.agent.output() and "ERROR" not in device.agent.output()
