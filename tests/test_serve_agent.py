"""Delivery "request" end to end, every part real: ``edgewise serve`` and ``edgewise push
--chunks request`` as processes, the agent on a private Mosquitto. No chunk is ever retained."""

from __future__ import annotations

import os
import signal
import subprocess

from device_harness import DEVICE, TOPICS
from helpers import BIN

from compiler.fleet.gc import collect
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect


def test_a_request_push_is_fetched_from_serve_and_made_active(  # type: ignore[no-untyped-def]
    device, mosquitto, v2, signing_keys, tmp_path
) -> None:
    broker = ["--host", mosquitto.host, "--port", str(mosquitto.port)]
    store = tmp_path / "blobs"
    serve = subprocess.Popen(
        [str(BIN / "edgewise"), "serve", "--blobs", str(store), *broker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None and serve.stdout.readline().startswith("serving 0 blobs")
        push = subprocess.run(
            [str(BIN / "edgewise"), "push", str(v2.root), "--to", f"device:{DEVICE}",
             "--chunks", "request", "--key", str(signing_keys[0]), "--blobs", str(store),
             "--wait", "90", *broker],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert push.returncode == 0, push.stdout + push.stderr + device.agent.output()[-3000:]
        assert f"{DEVICE}: active" in push.stdout.splitlines()
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    chunks = sum(len(blob.chunks) for blob in v2.manifest.blobs)
    served = int(err.split("served ")[1].split(" chunks")[0])
    assert served >= chunks, err  # every chunk (one asked again after a lost answer: more)
    assert os.readlink(device.state / "current").endswith("1.1.0")
    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    try:
        assert collect(client, TOPICS).chunks == {}  # nothing went through blobs/
    finally:
        disconnect(client)
