"""The shipped Mosquitto config (deploy/mosquitto/mosquitto.conf) with certificates and the ACL
from ``edgewise certs``: who may connect, and who may read and write which topics.

What a client may not do is checked by observing the topic: the forbidden message is sent first,
then an allowed one on the same connection; when the allowed one arrives, the forbidden one would
have arrived before it."""

from __future__ import annotations

import os
import pwd
import queue
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_harness import DEPLOY, Device
from forge import package_from
from helpers import BIN, AgentProcess

from agent.contract import Topics, generate_keypair
from compiler.errors import BrokerUnavailable
from compiler.fleet.broker import MosquittoBroker, free_port
from compiler.fleet.certs import create_ca, issue
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.fleet.push import push_package
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config

TOPICS = Topics()
SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    # Not under pytest's 0700 tmp root: mosquitto, started as root, reads these as its own user.
    folder = tempfile.TemporaryDirectory(prefix="edgewise-pki-")
    out = Path(folder.name)
    out.chmod(0o755)
    run = subprocess.run(
        [str(BIN / "edgewise"), "certs", "--out", str(out), "--broker-name", "127.0.0.1",
         "--device", "cam-a", "--device", "cam-b:lobby"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    yield out
    folder.cleanup()


def shipped_config(pki: Path, port: int, workdir: Path) -> str:
    """The shipped config with its port, file paths and log destination pointed at this test."""
    text = SHIPPED.read_text()
    for old, new in {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/certs/ca.crt": str(pki / "ca.crt"),
        "/etc/mosquitto/certs/broker.crt": str(pki / "broker.crt"),
        "/etc/mosquitto/certs/broker.key": str(pki / "broker.key"),
        "/etc/mosquitto/certs/crl.pem": str(pki / "crl.pem"),
        "/etc/mosquitto/edgewise.acl": str(pki / "edgewise.acl"),
        "/var/lib/mosquitto/": f"{workdir}/",
        "log_dest syslog": "log_dest stderr",
    }.items():
        assert old in text, f"the shipped config no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def secure_broker(pki: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() == 0:
        # Started as root, mosquitto reads its key after dropping to its own user, as in
        # production (deploy/README: chown mosquitto broker.key).
        os.chown(pki / "broker.key", pwd.getpwnam("mosquitto").pw_uid, -1)
    port = free_port()
    workdir = pki / "mosquitto"
    workdir.mkdir()
    workdir.chmod(0o1777)
    broker = MosquittoBroker(port=port, config=shipped_config(pki, port, workdir)).start()
    yield broker
    broker.close()


def address(
    broker: MosquittoBroker, pki: Path, name: str | None, ca: Path | None = None
) -> BrokerAddress:
    if name is None:
        return BrokerAddress(broker.host, broker.port, ca=ca or pki / "ca.crt")
    folder = pki if name == "edgewise-cloud" else pki / "devices"
    return BrokerAddress(
        broker.host, broker.port, ca=ca or pki / "ca.crt",
        cert=folder / f"{name}.crt", key=folder / f"{name}.key",
    )  # fmt: skip


class Listener:
    """A connected client that records what it receives."""

    def __init__(self, addr: BrokerAddress, filters: list[str], client_id: str | None = None):
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = connect(addr, client_id=client_id)
        self.client.on_message = lambda _c, _u, m: self.inbox.put((m.topic, bytes(m.payload)))
        if filters:
            granted: queue.Queue[object] = queue.Queue()
            self.client.on_subscribe = lambda *args: granted.put(args)
            self.client.subscribe([(f, 1) for f in filters])
            granted.get(timeout=10)

    def until(self, topic: str, payload: bytes, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Everything received up to and including (topic, payload)."""
        seen = []
        while True:
            item = self.inbox.get(timeout=timeout)
            seen.append(item)
            if item == (topic, payload):
                return seen

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        disconnect(self.client)


def test_a_device_connects_with_its_certificate(secure_broker, pki: Path) -> None:  # type: ignore[no-untyped-def]
    cloud = Listener(address(secure_broker, pki, "edgewise-cloud"), [TOPICS.all_devices("results")])
    cam_a = Listener(address(secure_broker, pki, "cam-a"), [])
    cam_a.publish(TOPICS.results("cam-a"), b"[1]")
    assert cloud.until(TOPICS.results("cam-a"), b"[1]") == [(TOPICS.results("cam-a"), b"[1]")]
    cam_a.close()
    cloud.close()


def test_anonymous_no_certificate_and_wrong_ca_are_refused(
    secure_broker, pki: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BrokerUnavailable):
        connect(BrokerAddress(secure_broker.host, secure_broker.port), timeout=5)  # no TLS at all
    with pytest.raises(BrokerUnavailable):
        connect(address(secure_broker, pki, None), timeout=5)  # TLS without a certificate
    rogue_ca = create_ca(tmp_path / "rogue")
    rogue = issue(rogue_ca, "cam-a", tmp_path / "rogue")  # same CN, another CA
    rogue_address = BrokerAddress(
        secure_broker.host, secure_broker.port, ca=pki / "ca.crt", cert=rogue.cert, key=rogue.key
    )
    with pytest.raises(BrokerUnavailable):
        connect(rogue_address, timeout=5)


@pytest.mark.parametrize("client_id", [None, "edgewise-agent-cam-b"])
def test_a_device_cannot_write_another_devices_topics(secure_broker, pki: Path, client_id) -> None:  # type: ignore[no-untyped-def]
    """Also with B's client id: the ACL keys on the certificate, not on what the client claims."""
    cloud = Listener(address(secure_broker, pki, "edgewise-cloud"), [TOPICS.all_devices("#")])
    cam_a = Listener(address(secure_broker, pki, "cam-a"), [], client_id=client_id)
    for leaf in ("results", "status", "telemetry", "events"):
        cam_a.publish(TOPICS.device("cam-b", leaf), b"spoofed")
    cam_a.publish(TOPICS.results("cam-a"), b"mine")
    seen = cloud.until(TOPICS.results("cam-a"), b"mine")
    assert seen == [(TOPICS.results("cam-a"), b"mine")], seen
    cam_a.close()
    cloud.close()


def test_a_device_cannot_read_another_devices_commands_or_groups(secure_broker, pki: Path) -> None:  # type: ignore[no-untyped-def]
    mine = [TOPICS.commands_device("cam-a"), TOPICS.deploy_device("cam-a")]
    theirs = [TOPICS.commands_device("cam-b"), TOPICS.deploy_device("cam-b")]
    lobby = TOPICS.deploy_group("lobby")
    cam_a = Listener(address(secure_broker, pki, "cam-a"), [*mine, *theirs, lobby])
    cam_b = Listener(address(secure_broker, pki, "cam-b"), [*theirs, TOPICS.deploy_group("lobby")])
    cloud = Listener(address(secure_broker, pki, "edgewise-cloud"), [])
    for topic in [*theirs, TOPICS.deploy_group("lobby")]:
        cloud.publish(topic, b"for B")
    cloud.publish(TOPICS.commands_device("cam-a"), b"for A")
    assert cam_a.until(TOPICS.commands_device("cam-a"), b"for A") == [
        (TOPICS.commands_device("cam-a"), b"for A")
    ]
    got_b = cam_b.until(TOPICS.deploy_group("lobby"), b"for B")
    assert [t for t, _ in got_b] == [*theirs, TOPICS.deploy_group("lobby")]
    for client in (cam_a, cam_b, cloud):
        client.close()


def test_the_cloud_can_push_and_devices_read_chunks(secure_broker, pki: Path) -> None:  # type: ignore[no-untyped-def]
    cam_a = Listener(address(secure_broker, pki, "cam-a"), [TOPICS.deploy_device("cam-a"),
                                                            TOPICS.all_blobs()])  # fmt: skip
    cloud = Listener(address(secure_broker, pki, "edgewise-cloud"), [])
    chunk = TOPICS.blob_chunk("ab" * 32, 0)
    cloud.publish(chunk, b"chunk")
    cloud.publish(TOPICS.deploy_device("cam-a"), b"manifest")
    assert cam_a.until(TOPICS.deploy_device("cam-a"), b"manifest") == [
        (chunk, b"chunk"), (TOPICS.deploy_device("cam-a"), b"manifest")
    ]  # fmt: skip
    cloud.publish(TOPICS.deploy_device("cam-a"), b"", retain=True)
    cam_a.close()
    cloud.close()


def test_keys_are_private_and_the_acl_lists_the_groups(pki: Path) -> None:
    for key in [pki / "ca.key", pki / "edgewise-cloud.key", *(pki / "devices").glob("*.key")]:
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    acl = (pki / "edgewise.acl").read_text()
    assert re.search(
        r"user cam-b\n(topic read .*\n)*topic read edgewise/v1/deploy/group/lobby", acl
    )
    assert "pattern write edgewise/v1/devices/%u/results" in acl
    assert "lobby" not in acl.split("user cam-a")[1].split("user ")[0]


def test_certs_never_print_a_private_key(pki: Path) -> None:
    run = subprocess.run(
        [str(BIN / "edgewise"), "certs", "--out", str(pki), "--device", "cam-c"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "PRIVATE KEY" not in run.stdout + run.stderr
    assert "cam-c" in run.stdout and (pki / "devices" / "cam-c.crt").exists()
    # Re-running kept the CA and the devices issued before.
    assert "user cam-b" in (pki / "edgewise.acl").read_text()


def test_agent_over_tls_takes_a_push_and_refuses_an_untrusted_one(
    secure_broker, pki: Path, compiled, signing_keys, video, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    devices = pki / "devices"
    tls = (
        f'[mqtt.tls]\nca_file = "{pki / "ca.crt"}"\ncert_file = "{devices / "cam-a.crt"}"\n'
        f'key_file = "{devices / "cam-a.key"}"\n'
    )
    config = write_agent_config(
        tmp_path / "agent.toml", port=secure_broker.port, public_keys=[signing_keys[1]],
        video=video, state=tmp_path / "state", device="cam-a", extra=DEPLOY + tls,
    )  # fmt: skip
    cloud = connect(address(secure_broker, pki, "edgewise-cloud"))
    device = Device(AgentProcess(config), DeviceFeed(cloud, TOPICS, "cam-a"), config, tmp_path)
    try:
        push_package(cloud, TOPICS, compiled.package, "device:cam-a")
        device.deployment("active")
        assert device.serving() == {"1.0.0"}
        # The broker lets the cloud identity publish anything; the device still checks signatures.
        generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
        rogue = package_from(
            compiled.package, tmp_path / "rogue", tmp_path / "rogue.key", version="2.0.0"
        )
        push_package(cloud, TOPICS, rogue, "device:cam-a")
        assert "untrusted key" in device.rejected()
        assert device.serving() == {"1.0.0"}
    finally:
        assert device.agent.stop() == 0, device.agent.output()[-3000:]
        cloud.publish(TOPICS.deploy_device("cam-a"), b"", qos=1, retain=True).wait_for_publish(5)
        disconnect(cloud)


def test_cloud_tools_connect_with_their_certificate(secure_broker, pki: Path) -> None:  # type: ignore[no-untyped-def]
    cam_a = Listener(address(secure_broker, pki, "cam-a"), [])
    cam_a.publish(TOPICS.status("cam-a"), b'{"state": "online"}', retain=True)
    tls = ["--tls-ca", str(pki / "ca.crt"), "--tls-cert", str(pki / "edgewise-cloud.crt"),
           "--tls-key", str(pki / "edgewise-cloud.key")]  # fmt: skip
    broker = ["--host", secure_broker.host, "--port", str(secure_broker.port)]
    fleet = subprocess.run(
        [str(BIN / "edgewise"), "fleet", "--once", "--interval", "1", *broker, *tls],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    refused = subprocess.run(
        [str(BIN / "edgewise"), "fleet", "--once", "--interval", "1", *broker],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    cam_a.publish(TOPICS.status("cam-a"), b"", retain=True)
    cam_a.close()
    assert fleet.returncode == 0, fleet.stderr
    assert any(line.startswith("cam-a") and "online" in line for line in fleet.stdout.splitlines())
    assert refused.returncode == 1 and "broker" in refused.stderr
