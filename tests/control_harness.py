"""An operator at the wire: signed commands published by hand, replies gathered by id. The
CLI's own tests go through `edgewise command`; these craft what no honest tool would send."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path
from typing import Any

from device_harness import DEVICE, TOPICS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.contract.commands import Command, sign_command
from agent.contract.envelope import COMMAND_TYPE, canonical_json, dsse_envelope, pae
from agent.contract.signing import generate_keypair, key_id, load_private_key
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect

FINAL = ("rejected", "done", "failed")


def command_keys(root: Path) -> tuple[Path, Path]:
    """A keypair for commands, apart from the packages' signing key."""
    root.mkdir(parents=True, exist_ok=True)
    generate_keypair(root / "command.key", root / "command.pub")
    return root / "command.key", root / "command.pub"


def commands_section(public_key: Path) -> str:
    return f'[commands]\npublic_keys = ["{public_key.resolve()}"]\n'


def command(cmd: str, args: dict[str, Any] | None = None, **fields: Any) -> Command:
    now = time.time()
    base = {
        "id": uuid.uuid4().hex,
        "cmd": cmd,
        "args": args or {},
        "target": f"device:{DEVICE}",
        "issued_at": now,
        "expires_at": now + 60,
    }
    return Command.model_validate({**base, **fields})


class Operator:
    """Publishes on the device's command topic and reads its replies topic."""

    def __init__(self, port: int, key: Path):
        self._key = load_private_key(key)
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.correlations: dict[str, bytes] = {}  # reply id -> MQTT 5 Correlation Data
        self.client = connect(BrokerAddress("127.0.0.1", port), f"operator-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe(
            [(TOPICS.replies(DEVICE), 1), (TOPICS.device(DEVICE, "snapshots/#"), 1)]
        )

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/replies"):
            reply = json.loads(msg.payload)
            correlation = getattr(msg.properties, "CorrelationData", None)
            if correlation:
                self.correlations[reply["id"]] = bytes(correlation)
            self._replies.put(reply)
        else:
            *_, command_id, index = msg.topic.split("/")
            self.chunks.setdefault(command_id, {})[int(index)] = bytes(msg.payload)

    def sign(self, cmd: Command) -> bytes:
        return sign_command(cmd, self._key)

    def sign_raw(self, body: dict[str, Any]) -> bytes:
        """Any JSON body, signed properly: what only a buggy tool with the right key sends."""
        payload = canonical_json(body)
        signature = self._key.sign(pae(COMMAND_TYPE, payload))
        kid = key_id(self._key.public_key())
        return dsse_envelope(payload, [(kid, signature)], COMMAND_TYPE)

    def send(self, cmd: Command, topic: str | None = None) -> str:
        self.publish(self.sign(cmd), topic, correlation=cmd.id.encode())
        return cmd.id

    def publish(
        self, payload: bytes, topic: str | None = None, correlation: bytes | None = None
    ) -> None:
        """Over MQTT 5 with a Response Topic and Correlation Data, as `edgewise command` does."""
        topic = topic or TOPICS.commands_device(DEVICE)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = TOPICS.replies(DEVICE)
        if correlation:
            properties.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        info.wait_for_publish(5)

    def final(self, command_id: str | None = None, timeout: float = 15) -> dict[str, Any]:
        """The final reply (rejected, done, failed) to ``command_id`` (or to anything)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                break
            if reply["state"] in FINAL and command_id in (None, reply["id"]):
                return reply
        raise AssertionError(f"no final reply to {command_id} within {timeout} s")

    def run(self, cmd: str, args: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        return self.final(self.send(command(cmd, args, **fields)))

    def close(self) -> None:
        disconnect(self.client)
