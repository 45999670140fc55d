"""A private NATS server with its MQTT listener: a real broker that speaks only MQTT 3.1.1.

NATS 2.9 answers an MQTT 5 CONNECT with a CONNACK "unacceptable protocol version" (return code
1, which paho reads as "Unsupported protocol version"); it grants ``$share/...`` subscriptions
and then delivers nothing to them. Its MQTT listener needs a server name and JetStream.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from compiler.fleet.mqtt import BrokerAddress

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def nats_mqtt(folder: Path) -> Iterator[BrokerAddress]:
    """A NATS server in ``folder``; yields the address of its MQTT listener."""
    if not Path(NATS).exists():
        pytest.skip("nats-server is not installed")
    port, mqtt_port = _free_port(), _free_port()
    config = folder / "nats.conf"
    config.write_text(
        f'server_name: "edgewise-test"\nlisten: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{folder / "js"}" }}\n'
        f'mqtt {{ host: "127.0.0.1", port: {mqtt_port} }}\n'
    )
    with open(folder / "nats.log", "wb") as log:
        proc = subprocess.Popen([NATS, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _accepts(mqtt_port):
            assert proc.poll() is None, (folder / "nats.log").read_text()
            assert time.monotonic() < deadline, "NATS did not open its MQTT port in 30 s"
            time.sleep(0.05)  # polling another process's port: there is no event to wait on
        yield BrokerAddress("127.0.0.1", mqtt_port)
    finally:
        proc.terminate()
        proc.wait(10)
